"""The `cacheaddon` console script. `run` is started as a subprocess, with a stand-in addon where the cache
addon itself is not the point, and torn down by PID with bounded waits."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mitmproxy import certs

from cacheaddon import cli, mitmca
from cacheaddon.clientconfig import CA_VARIABLES, pem_certificates, snippet

REPO = Path(__file__).resolve().parents[2]

STANDIN = '''
import logging

from mitmproxy import ctx, exceptions

logger = logging.getLogger("standin")


class StandIn:
    """Declares one option, validates it in configure, and reports what it saw when running."""

    def __init__(self):
        self.configured_all = False

    def load(self, loader):
        loader.add_option("standin_ttl", int, 60, "Seconds.")

    def configure(self, updated):
        if ctx.options.standin_ttl < 0:
            raise exceptions.OptionsError("standin_ttl: must not be negative")
        if {"standin_ttl", "listen_host", "connection_strategy"} <= updated:
            self.configured_all = True

    def running(self):
        logger.warning(
            f"standin running: configured_all={self.configured_all} "
            f"connection_strategy={ctx.options.connection_strategy} listen_host={ctx.options.listen_host} "
            f"modes={','.join(ctx.options.mode)}"
        )
'''


# --- helpers ---


_HANDED_OUT: set[tuple[str, int]] = set()


def _free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now that this process has not handed out before: the kernel may give a port
    that was just closed to the next bind at once, so two calls in a row could otherwise get the same one."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError(f"no free port on {host} that was not handed out already")


def _script() -> list[str]:
    """The installed console script, or the module when the package is not installed."""
    script = Path(sys.executable).parent / "cacheaddon"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cacheaddon.cli"]


@pytest.fixture
def child_env(tmp_path: Path) -> dict[str, str]:
    standin_dir = tmp_path / "standin"
    standin_dir.mkdir()
    (standin_dir / "standin.py").write_text(STANDIN)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["HOME"] = str(tmp_path / "home")  # nothing of ours ends up in the real ~/.mitmproxy or ~/.cache
    env["PYTHONPATH"] = os.pathsep.join([str(standin_dir), str(REPO)])
    return env


@pytest.fixture
def standin() -> list[str]:
    """Command that runs `cacheaddon` with the stand-in addon in place of the cache addon."""
    code = (
        "import sys, standin; from cacheaddon.cli import main; "
        "sys.exit(main(sys.argv[1:], addon_factory=standin.StandIn))"
    )
    return [sys.executable, "-c", code]


def _run(command: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def _listeners(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port`, from /proc (sends no traffic)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(table).exists():  # no IPv6 on this host
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                found.add(socket.inet_ntop(family, words))
    return found


def _wait_listening(host: str, port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "cacheaddon run exited early"
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listening on {host}:{port} after {timeout}s")


@pytest.fixture
def started(tmp_path: Path, child_env: dict[str, str]) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _start(
    command: list[str], env: dict[str, str], tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / f"run-{len(procs)}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    procs.append(proc)
    return proc, log


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    return proc.wait(timeout=15)


# --- run ---


def test_run_starts_on_loopback_with_lazy_and_configures_the_addon(
    tmp_path: Path, child_env: dict[str, str], standin: list[str], started: list[subprocess.Popen[str]]
) -> None:
    forward, reverse = _free_port(), _free_port()
    args = ["run", "-p", str(forward), "--registry", f"https://registry.invalid@{reverse}"]
    proc, log = _start(
        [*standin, *args, "--set", f"confdir={tmp_path / 'conf'}"], child_env, tmp_path, started
    )
    _wait_listening("127.0.0.1", forward, proc)
    _wait_listening("127.0.0.1", reverse, proc)
    assert _listeners(forward) == {"127.0.0.1"}
    assert _listeners(reverse) == {"127.0.0.1"}
    assert (tmp_path / "conf" / "mitmproxy-ca-cert.pem").exists()
    assert _stop(proc) == 0
    output = log.read_text()
    assert "standin running: configured_all=True connection_strategy=lazy listen_host=127.0.0.1" in output
    assert f"modes=regular,reverse:https://registry.invalid@{reverse}" in output


def test_run_listen_host_and_mode_override_the_defaults(
    tmp_path: Path, child_env: dict[str, str], standin: list[str], started: list[subprocess.Popen[str]]
) -> None:
    port, reverse = _free_port(), _free_port()
    args = ["run", "--listen-host", "127.0.0.2", "--mode", f"regular@{port}", "--registry", f"npm@{reverse}"]
    proc, log = _start(
        [*standin, *args, "--set", f"confdir={tmp_path / 'conf'}"], child_env, tmp_path, started
    )
    _wait_listening("127.0.0.2", port, proc)
    _wait_listening("127.0.0.2", reverse, proc)
    assert _listeners(port) == {"127.0.0.2"}
    assert _stop(proc) == 0
    assert f"modes=regular@{port},reverse:https://registry.npmjs.org@{reverse}" in log.read_text()


@pytest.mark.parametrize("value", ["abc", "-1"])
def test_run_bad_option_value_exits_naming_the_option(
    tmp_path: Path, child_env: dict[str, str], standin: list[str], value: str
) -> None:
    args = ["run", "-p", str(_free_port()), "--set", f"confdir={tmp_path}", "--set", f"standin_ttl={value}"]
    result = _run([*standin, *args], child_env, tmp_path)
    assert result.returncode == 1
    assert "standin_ttl" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_run_with_the_cache_addon_rejects_a_bad_value(tmp_path: Path, child_env: dict[str, str]) -> None:
    pytest.importorskip("cacheaddon.addon")
    args = ["run", "-p", str(_free_port()), "--set", f"confdir={tmp_path}", "--set", "cache_ttl=abc"]
    result = _run([*_script(), *args], child_env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("cacheaddon run: ") and "cache_ttl" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("cache_size_limit", "ten gigs", "cache_size_limit: 'ten gigs' is not a size"),
        ("cache_hosts", "pypi.org:99999", "cache_hosts: 'pypi.org:99999' has an invalid port"),
        ("cache_allow_clients", "10.0.0.0/33", "cache_allow_clients: '10.0.0.0/33' is not an IP address"),
        ("cache_dir", "{file}/cache", "cache_dir: cannot open cache_dir"),
    ],
)
def test_run_with_the_cache_addon_rejects_values_its_own_validation_refuses(
    tmp_path: Path, child_env: dict[str, str], option: str, value: str, message: str
) -> None:
    """Values of the right type that only the addon's configure() can refuse: exit 1 with one clear line,
    promptly (an unusable cache_dir once sent configure into a loop of roll-backs)."""
    pytest.importorskip("cacheaddon.addon")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    value = value.format(file=blocker)
    args = ["run", "-p", str(_free_port()), "--set", f"confdir={tmp_path}", "--set", f"{option}={value}"]
    result = _run([*_script(), *args], child_env, tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"cacheaddon run: {message}" in result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "setting", [["--set", "connection_strategy=eager"], ["--set=connection_strategy=eager"]]
)
def test_run_refuses_eager(tmp_path: Path, child_env: dict[str, str], setting: list[str]) -> None:
    # The real entry point: the refusal comes before the cache addon is even imported.
    result = _run([*_script(), "run", "-p", str(_free_port()), *setting], child_env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("cacheaddon run: connection_strategy must be lazy")
    assert len(result.stderr.splitlines()) == 1


def test_run_refuses_eager_from_config_yaml(
    tmp_path: Path, child_env: dict[str, str], standin: list[str]
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text("connection_strategy: eager\n")
    result = _run([*standin, "run", "-p", str(_free_port()), "--set", f"confdir={conf}"], child_env, tmp_path)
    assert result.returncode == 2
    assert "connection_strategy must be lazy" in result.stderr


@pytest.mark.parametrize("taken", ["forward", "registry"])
def test_run_names_the_busy_port_and_its_mode(
    tmp_path: Path, child_env: dict[str, str], standin: list[str], taken: str
) -> None:
    """mitmproxy's own message for a busy forward port suggests `--mode regular@PORT+2`, with the presets
    the npm endpoint's port; ours names the port, the listener and the flag that moves it."""
    forward, registry = _free_port(), _free_port()
    busy = forward if taken == "forward" else registry
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        args = ["run", "-p", str(forward), "--registry", f"npm@{registry}", "--set", f"confdir={tmp_path}"]
        result = _run([*standin, *args], child_env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stderr.splitlines() if "in use" in line]
    assert line.startswith(f"cacheaddon run: port {busy} is already in use: ")
    if taken == "forward":
        assert "HTTP(S) proxy" in line and line.endswith("with -p PORT")
    else:
        assert "reverse proxy to https://registry.npmjs.org" in line and "--registry NAME@PORT" in line
    assert "Try specifying" not in result.stdout + result.stderr


def test_run_bad_mitmdump_flag(tmp_path: Path, child_env: dict[str, str], standin: list[str]) -> None:
    result = _run([*standin, "run", "--no-such-flag"], child_env, tmp_path)
    assert result.returncode != 0
    assert "--no-such-flag" in result.stderr


@pytest.mark.parametrize(
    ("registries", "message"),
    [
        (["nope"], "cacheaddon run: --registry: unknown registry 'nope'"),
        (["https://repo1.maven.org/maven2@9000"], "cacheaddon run: --registry: "),
        (["pypi", "npm@8081"], "cacheaddon run: --registry: port 8081 given to more than one registry"),
    ],
)
def test_run_bad_registry(capsys: pytest.CaptureFixture[str], registries: list[str], message: str) -> None:
    # Refused before mitmproxy starts, so this can run in-process.
    argv = ["run", *(a for spec in registries for a in ("--registry", spec))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], []),
        (["-p", "9090"], ["--mode", "regular", "--mode", "reverse:R@1", "-p", "9090"]),
        (["--mode", "socks5@1080"], ["--mode", "socks5@1080", "--mode", "reverse:R@1"]),
        (["--mode=regular@9"], ["--mode=regular@9", "--mode", "reverse:R@1"]),
        (["-mregular@9"], ["-mregular@9", "--mode", "reverse:R@1"]),
        (["--set", "mode=regular@9"], ["--set", "mode=regular@9", "--set", "mode=reverse:R@1"]),
        (["--set=mode=regular@9"], ["--set=mode=regular@9", "--set", "mode=reverse:R@1"]),
        (["--set", "modes=x"], ["--mode", "regular", "--mode", "reverse:R@1", "--set", "modes=x"]),
    ],
)
def test_mode_arguments(args: list[str], expected: list[str]) -> None:
    modes = ["reverse:R@1"] if expected else []
    assert cli._mode_arguments(args, modes) == expected


# --- config ---


def test_config_prints_the_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "maven", "--endpoint", "http://127.0.0.1:9084"]) == 0
    assert capsys.readouterr().out == snippet("maven", "http://127.0.0.1:9084") + "\n"


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["config", "pip", "--endpoint", "ftp://x"], 2, "cacheaddon config: --endpoint: "),
        (["config", "poetry"], 2, "cacheaddon config: argument CLIENT: invalid choice: 'poetry'"),
        (["config", "pip", "--bogus"], 2, "cacheaddon: unrecognized arguments: --bogus"),
        ([], 2, "cacheaddon: the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], status: int, message: str
) -> None:
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    assert captured.err.startswith(message)
    assert len(captured.err.splitlines()) == 1
    assert captured.out == ""


def test_run_help_lists_the_registry_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--registry SPEC" in out and "pypi (https://pypi.org) on 8081" in out and "mitmdump" in out


# --- env ---


def _make_ca(directory: Path) -> str:
    """A real mitmproxy CA, created the way mitmproxy does at first start; returns its certificate."""
    certs.CertStore.from_store(directory, "mitmproxy", 2048)
    [cert] = pem_certificates((directory / "mitmproxy-ca-cert.pem").read_text())
    return cert


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    # Spaces, quotes and $ in the path: the printed lines must still eval to this path.
    path = tmp_path / "conf dir 'q' $HOME"
    _make_ca(path)
    return path


def test_env_bundle_is_system_cas_plus_mitmproxy_ca(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    system = [_make_ca(tmp_path / "sys1"), _make_ca(tmp_path / "sys2")]
    (tmp_path / "system.pem").write_text("\n".join(system) + "\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "system.pem"))
    assert cli.main(["env", "--confdir", str(confdir)]) == 0
    bundle = confdir / "cacheaddon-ca-bundle.pem"
    mitm = pem_certificates((confdir / "mitmproxy-ca-cert.pem").read_text())
    assert pem_certificates(bundle.read_text()) == [*system, *mitm]
    out = capsys.readouterr().out
    assert out.startswith("# CA bundle ")
    assert "export HTTPS_PROXY=http://127.0.0.1:8080" in out

    # Evaluated again with SSL_CERT_FILE at the bundle itself (as after an eval): no certificate twice.
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert cli.main(["env", "--confdir", str(confdir)]) == 0
    again = pem_certificates(bundle.read_text())
    assert len(again) == len(set(again)) and mitm[0] in again and len(again) > 1


def test_env_never_takes_an_earlier_bundle_for_the_system_store(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After `eval` for one proxy, SSL_CERT_FILE names that proxy's bundle; a bundle for a second proxy must
    # not inherit the first proxy's CA from it.
    other = tmp_path / "other-conf"
    other_ca = _make_ca(other)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing-here.pem"))
    assert cli.main(["env", "--confdir", str(other)]) == 0
    first = other / "cacheaddon-ca-bundle.pem"
    assert other_ca in pem_certificates(first.read_text())

    monkeypatch.setenv("SSL_CERT_FILE", str(first))
    assert cli.main(["env", "--confdir", str(confdir)]) == 0
    second = pem_certificates((confdir / "cacheaddon-ca-bundle.pem").read_text())
    assert other_ca not in second
    assert second[-1] == pem_certificates((confdir / "mitmproxy-ca-cert.pem").read_text())[0]


def test_env_bundle_from_the_real_system_store(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    bundle = tmp_path / "out" / "bundle.pem"
    assert cli.main(["env", "--confdir", str(confdir), "--bundle", str(bundle)]) == 0
    contents = pem_certificates(bundle.read_text())
    system_file = ssl.get_default_verify_paths().cafile
    if system_file and os.path.isfile(system_file):
        assert set(pem_certificates(Path(system_file).read_text())) <= set(contents)
    assert contents[-1] == pem_certificates((confdir / "mitmproxy-ca-cert.pem").read_text())[0]
    # Python's own TLS accepts it as a CA file.
    context = ssl.create_default_context(cafile=str(bundle))
    assert len(context.get_ca_certs()) == len(contents)


def test_env_evals_in_bash(tmp_path: Path, confdir: Path, child_env: dict[str, str]) -> None:
    names = ["REQUESTS_CA_BUNDLE", *CA_VARIABLES, "HTTPS_PROXY", "https_proxy", "NO_PROXY"]
    script = 'eval "$("$@")" && ' + " && ".join(f'printf "%s\\n" "${n}"' for n in names)
    command = [*_script(), "env", "--confdir", str(confdir), "--proxy", "http://127.0.0.1:3128"]
    result = subprocess.run(
        ["bash", "-c", script, "bash", *command],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    bundle = str(confdir / "cacheaddon-ca-bundle.pem")
    values = result.stdout.splitlines()
    assert values[: 1 + len(CA_VARIABLES)] == [bundle] * (1 + len(CA_VARIABLES))
    assert values[-3:] == ["http://127.0.0.1:3128", "http://127.0.0.1:3128", "localhost,127.0.0.1,::1"]
    assert Path(bundle).is_file()


@pytest.mark.parametrize(
    "spelling", [["--confdir", "{dir}"], ["--set", "confdir={dir}"], ["--set=confdir={dir}"]]
)
def test_env_before_the_proxy_ever_ran_creates_the_ca_mitmproxy_will_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: list[str]
) -> None:
    confdir = tmp_path / "fresh" / "conf"
    assert cli.main(["env", *(arg.format(dir=confdir) for arg in spelling)]) == 0
    assert capsys.readouterr().out.startswith("# CA bundle ")
    # What mitmproxy loads from that confdir at its start (it creates nothing when the CA exists).
    store = certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    bundle = pem_certificates((confdir / "cacheaddon-ca-bundle.pem").read_text())
    assert bundle[-1] == store.default_ca.to_pem().decode().strip()


def test_env_and_run_starting_together_make_one_ca(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: mitmca.ensure_ca(confdir), range(4)))
    assert len(set(paths)) == 1
    store = certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    assert pem_certificates(paths[0].read_text()) == [store.default_ca.to_pem().decode().strip()]


def test_env_reads_where_run_listens_from_the_confdir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    confdir = tmp_path / "conf"
    confdir.mkdir()
    (confdir / "config.yaml").write_text("listen_port: 9123\ncache_ttl: 60\n")
    assert cli.main(["env", "--set", f"confdir={confdir}"]) == 0
    assert "export HTTPS_PROXY=http://127.0.0.1:9123" in capsys.readouterr().out


def test_env_refuses_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["env", "--set", "cache_ttl=5"]) == 2
    assert "--set: only confdir=DIR" in capsys.readouterr().err


def test_env_wait_fails_when_no_proxy_listens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proxy = f"http://127.0.0.1:{_free_port()}"
    assert cli.main(["env", "--confdir", str(tmp_path), "--proxy", proxy, "--wait", "0.5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "accepted no connection within 0.5 s" in captured.err


@pytest.mark.parametrize(
    "proxy", ["127.0.0.1:8080", "socks5://127.0.0.1:1080", "http://h:port", "http://h/x"]
)
def test_env_bad_proxy(confdir: Path, capsys: pytest.CaptureFixture[str], proxy: str) -> None:
    assert cli.main(["env", "--confdir", str(confdir), "--proxy", proxy]) == 2
    assert capsys.readouterr().err.startswith("cacheaddon env: --proxy: ")
