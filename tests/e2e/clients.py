"""The processes of the end-to-end tests: a mitmdump running the addon, and real pip and npm isolated from
this machine's own configuration (global pip.conf and npmrc, PIP_* variables, CA variables, NO_PROXY)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "cacheaddon" / "addon.py"
BIN = Path(sys.executable).parent
MITMDUMP = BIN / "mitmdump"
CACHEADDON = BIN / "cacheaddon"
RUNNERS = ("mitmdump", "cli")
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")
MITM_CA_NAME = "mitmproxy-ca-cert.pem"
DEFAULT_CACHE_HOSTS = ("127.0.0.2", "127.0.0.3", "localhost")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
X_CACHE = ("HIT", "MISS", "REVALIDATED", "STALE")
_URL = r"(https?://[^\s\"'<>]+)"
_OUTCOME = r"\b(HIT|MISS|REVALIDATED|STALE)\b"
_CACHE_LINE = re.compile(f"{_OUTCOME}.*?{_URL}|{_URL}.*?{_OUTCOME}")


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
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


def build_bundle(mitm_ca: Path, dest: Path) -> Path:
    """System CAs (or certifi's) followed by mitmproxy's CA: what a client behind the proxy must trust."""
    if SYSTEM_CAS.is_file():
        system = SYSTEM_CAS.read_text()
    else:
        import certifi

        system = Path(certifi.where()).read_text()
    dest.write_text(system.rstrip("\n") + "\n" + mitm_ca.read_text())
    return dest


class MitmConf:
    """The session's mitmproxy confdir: its CA is made by the first mitmdump and reused by every later one."""

    def __init__(self, confdir: Path) -> None:
        self.confdir = confdir
        self.ca_cert = confdir / MITM_CA_NAME
        self.bundle = confdir / "client-bundle.pem"

    def ensure_bundle(self) -> Path:
        if not self.bundle.exists():
            build_bundle(self.ca_cert, self.bundle)
        return self.bundle


def _option_args(name: str, value: object) -> list[str]:
    values = value if isinstance(value, list | tuple) else [value]
    args = []
    for v in values:
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        args += ["--set", f"{name}={text}"]
    return args


class Proxy:
    """A `mitmdump -s cacheaddon/addon.py` subprocess; restartable on the same port and cache_dir."""

    def __init__(
        self,
        mitm: MitmConf,
        registry_ca: Path,
        cache_dir: Path,
        log_path: Path,
        options: Mapping[str, object],
        port: int | None = None,
        *,
        endpoints: Iterable[str] = (),
        modes: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        runner: str = "mitmdump",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`endpoints`: upstream origins (https://127.0.0.2:PORT) each served as a registry endpoint on a port
        of its own, next to the forward proxy on `port`: `--mode reverse:URL@P` under mitmdump, `--registry
        URL@P` under `runner="cli"` (`cacheaddon run`). `modes`: mitmproxy mode specs given as they are
        (`--mode SPEC` each; name `regular` yourself to keep the forward proxy). `extra_args` go last. `env`:
        variables added to the process's environment (which has no proxy variables of this one's)."""
        if runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS}, not {runner!r}")
        self.mitm = mitm
        self.registry_ca = registry_ca
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.options = dict(options)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runner = runner
        self.modes = list(modes) if modes is not None else None
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        # upstream origin -> local port, fixed for the Proxy's life so restarts keep the endpoint URLs
        self.endpoint_ports = {url_origin(url): free_port() for url in endpoints}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def confdir(self) -> Path:
        return self.mitm.confdir

    @property
    def bundle(self) -> Path:
        return self.mitm.bundle

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def endpoints(self) -> dict[str, str]:
        """Upstream origin -> the registry endpoint's URL (http://127.0.0.1:PORT), from `endpoints` and from
        the reverse modes among `modes`."""
        found = {up: f"http://127.0.0.1:{port}" for up, port in self.endpoint_ports.items()}
        for spec in self.modes or ():
            parsed = _reverse_mode(spec)
            if parsed is not None:
                found.setdefault(parsed[0], f"http://127.0.0.1:{parsed[1]}")
        return found

    def endpoint(self, upstream: str | None = None) -> str:
        """The endpoint URL (no trailing slash) serving `upstream`; without it, the only endpoint."""
        endpoints = self.endpoints
        if upstream is None:
            if len(endpoints) != 1:
                raise ValueError(f"{len(endpoints)} endpoints: name the upstream ({sorted(endpoints)})")
            return next(iter(endpoints.values()))
        return endpoints[url_origin(upstream)]

    def listen_ports(self) -> list[int]:
        """Every port this proxy listens on once started."""
        if self.modes is None:
            return [self.port, *self.endpoint_ports.values()]
        from mitmproxy.proxy.mode_specs import ProxyMode

        ports = [ProxyMode.parse(spec).custom_listen_port or self.port for spec in self.modes]
        ports += self.endpoint_ports.values()
        return sorted(set(ports))

    def _mode_args(self) -> list[str]:
        """--mode flags; under `cacheaddon run` the endpoints are --registry flags and it adds the modes."""
        args = [a for spec in self.modes or () for a in ("--mode", spec)]
        if self.runner == "mitmdump" and self.endpoint_ports:
            if self.modes is None:
                args += ["--mode", "regular"]  # the first --mode replaces the default list; follows -p
            args += [a for up, p in self.endpoint_ports.items() for a in ("--mode", f"reverse:{up}@{p}")]
        return args

    def argv(self) -> list[str]:
        if self.runner == "cli":
            return self._cli_argv()
        options: dict[str, object] = {"cache_hosts": list(DEFAULT_CACHE_HOSTS), **self.options}
        args = [
            str(MITMDUMP),
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--set",
            f"confdir={self.confdir}",
            "-s",
            str(ADDON),
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"ssl_verify_upstream_trusted_ca={self.registry_ca}",
            "--set",
            f"cache_dir={self.cache_dir}",
        ]
        for name, value in options.items():
            args += _option_args(name, value)
        return [*args, *self._mode_args(), *self.extra_args]

    def _cli_argv(self) -> list[str]:
        """`cacheaddon run`: the console script sets connection_strategy=lazy and the modes itself."""
        options: dict[str, object] = {"cache_hosts": list(DEFAULT_CACHE_HOSTS), **self.options}
        args = [str(CACHEADDON), "run"]
        args += [a for up, p in self.endpoint_ports.items() for a in ("--registry", f"{up}@{p}")]
        args += [
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--set",
            f"confdir={self.confdir}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={self.registry_ca}",
            "--set",
            f"cache_dir={self.cache_dir}",
        ]
        for name, value in options.items():
            args += _option_args(name, value)
        return [*args, *self._mode_args(), *self.extra_args]

    def start(self) -> Proxy:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"proxy already running (pid {self.proc.pid})")
        env = {k: v for k, v in os.environ.items() if k.upper() not in _PROXY_VARS} | self.env
        env["PYTHONUNBUFFERED"] = "1"
        argv = self.argv()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== e2e: starting {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        self._wait_ready()
        self.mitm.ensure_bundle()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.mitm.ca_cert.exists() and all(_listening(p) for p in self.listen_ports()):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"mitmdump not ready on port {self.port} after {START_TIMEOUT}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self, **options: object) -> Proxy:
        """Stops, then starts again on the same port and cache_dir; `options` are merged into the old ones."""
        self.stop()
        self.options.update(options)
        return self.start()

    def log_size(self) -> int:
        """A mark for log_text(since=...): only what is logged after this call."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self, since: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def cache_log(self, since: int = 0) -> list[tuple[str, str]]:
        """(X-Cache value, URL) of every addon log line from `since` on."""
        return cache_outcomes(self.log_text(since))


ProxyFactory = Callable[..., "Proxy"]  # the proxy_factory fixture: start(**options) -> Proxy


def url_origin(url: str) -> str:
    """scheme://host:port of a URL, with the port spelled out (https://127.0.0.2:4443)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def _reverse_mode(spec: str) -> tuple[str, int] | None:
    """(upstream origin, listen port) of a `reverse:URL@PORT` mode spec, else None."""
    from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

    mode = ProxyMode.parse(spec)
    if not isinstance(mode, ReverseMode) or mode.custom_listen_port is None:
        return None
    host, port = mode.address
    return url_origin(f"{mode.scheme}://{host}:{port}"), mode.custom_listen_port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def report(result: ClientResult, proxy: Proxy | None = None) -> str:
    """An assertion message: the client's command and output, then the end of the proxy's log."""
    text = result.output + f"\n--- took {result.elapsed:.1f}s, exit {result.returncode}"
    if proxy is not None:
        text += f"\n--- mitmdump log (pid {proxy.pid}), last lines\n{proxy.log_tail()}"
    return text


def cache_outcomes(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        m = _CACHE_LINE.search(line)
        if m:
            outcome, url = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            out.append((outcome, url))
    return out


# --- clients ------------------------------------------------------------------------------------------------


class ClientResult(subprocess.CompletedProcess[str]):
    """A CompletedProcess that also knows how long it took, whether it timed out, and where it installed."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.elapsed = 0.0
        self.timed_out = False
        self.dir: Path | None = None

    @property
    def output(self) -> str:
        return f"$ {' '.join(map(str, self.args))}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def _run(cmd: list[str], env: Mapping[str, str], timeout: float, cwd: Path) -> ClientResult:
    """Runs cmd in its own process group, killed on timeout; never raises for the child's failure."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        err = (err or "") + f"\n[e2e: killed after {timeout}s]\n"
    result = ClientResult(cmd, proc.returncode if proc.returncode is not None else -9, out or "", err or "")
    result.elapsed = time.monotonic() - start
    result.timed_out = timed_out
    return result


def client_env(proxy: Proxy | None = None, *, bundle: Path | str | None = None) -> dict[str, str]:
    """This process's environment without PIP_*, npm_config_*, proxy and CA settings, then trusting `bundle`
    (default: the proxy's bundle) and, given a proxy, sending HTTP(S) through it."""
    if bundle is None:
        if proxy is None:
            raise ValueError("client_env needs a proxy or a bundle")
        bundle = proxy.bundle
    dropped = ("PIP_", "NPM_CONFIG_", "UV_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(dropped) and k.upper() not in _PROXY_VARS and k != "PYTHONPATH"
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    for name in ("REQUESTS_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        env[name] = str(bundle)
    if proxy is not None:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[name] = proxy.url
    return env


@cache
def pip_compat_args() -> tuple[str, ...]:
    """pip >= 24.2 verifies TLS with truststore, which fails on hosts given as IP addresses
    ("check_hostname requires server_hostname", pypa/pip#12906); the test hosts are IPs: take the old path."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--use-deprecated=?", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    return ("--use-deprecated=legacy-certs",) if "legacy-certs" in probe.stderr else ()


def pip_install(
    tmp_path: Path,
    packages: Iterable[str],
    index_url: str,
    env: Mapping[str, str],
    timeout: float = 120,
    *,
    retries: int = 0,
    extra_args: Iterable[str] = (),
) -> ClientResult:
    """Installs into a fresh, pip-less venv with this venv's pip (`pip --python`); result.dir is the venv."""
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir=tmp_path))
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, 60, tmp_path)
    made.dir = venv
    if made.returncode != 0:
        return made
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--retries",
        str(retries),
        *pip_compat_args(),
        "--index-url",
        index_url,
        *extra_args,
        *packages,
    ]
    result = _run(cmd, env, timeout, venv)
    result.dir = venv
    return result


def installed_version(venv: Path, module: str) -> str | None:
    """VERSION of an installed test package, read from the venv's site-packages, or None."""
    for init in venv.glob(f"lib/python*/site-packages/{module}/__init__.py"):
        m = re.search(r'VERSION = "([^"]+)"', init.read_text())
        return m.group(1) if m else None
    return None


def npm_install(
    tmp_path: Path,
    packages: Iterable[str],
    registry_url: str,
    env: Mapping[str, str],
    timeout: float = 120,
    *,
    fetch_retries: int = 0,
    extra_args: Iterable[str] = (),
    audit: bool = False,
) -> ClientResult:
    """`npm install` in a fresh project with an empty cache and empty user/global npmrc; the CA file is
    env's SSL_CERT_FILE and the proxy env's HTTPS_PROXY, both passed as flags. result.dir is the project."""
    project = Path(tempfile.mkdtemp(prefix="npm-", dir=tmp_path))
    cache = Path(tempfile.mkdtemp(prefix="npm-cache-", dir=tmp_path))
    # Two empty files: npm refuses one file as both user and global config.
    userconfig = project.parent / f"{project.name}.user.npmrc"
    globalconfig = project.parent / f"{project.name}.global.npmrc"
    userconfig.write_text("")
    globalconfig.write_text("")
    (project / "package.json").write_text(
        json.dumps({"name": "e2e-project", "version": "1.0.0", "private": True}, indent=2) + "\n"
    )
    npm = shutil.which("npm", path=env.get("PATH")) or "npm"
    cmd = [
        npm,
        "install",
        "--registry",
        registry_url,
        "--cache",
        str(cache),
        "--userconfig",
        str(userconfig),
        "--globalconfig",
        str(globalconfig),
        "--cafile",
        env["SSL_CERT_FILE"],
        "--audit" if audit else "--no-audit",  # npm's default is on: a POST after the install
        "--no-fund",
        "--no-update-notifier",
        f"--fetch-retries={fetch_retries}",
        "--fetch-timeout=60000",
        "--loglevel=http",
    ]
    if env.get("HTTPS_PROXY"):
        cmd += ["--https-proxy", env["HTTPS_PROXY"], "--proxy", env["HTTPS_PROXY"]]
    cmd += [*extra_args, *packages]
    result = _run(cmd, env, timeout, project)
    result.dir = project
    return result


def npm_installed_version(project: Path, name: str) -> str | None:
    manifest = project / "node_modules" / name / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.is_file() else None


def fetch(
    proxy: Proxy, url: str, headers: Mapping[str, str] | None = None, *, timeout: float = 30.0
) -> tuple[int, httpx.Headers, bytes]:
    """One GET through the proxy, trusting the proxy's bundle; no environment settings apply."""
    verify = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx.Client(proxy=proxy.url, verify=verify, trust_env=False, timeout=timeout) as client:
        response = client.get(url, headers=dict(headers or {}))
        return response.status_code, response.headers, response.content


def fetch_direct(
    url: str, headers: Mapping[str, str] | None = None, *, timeout: float = 30.0
) -> tuple[int, httpx.Headers, bytes]:
    """One GET straight to `url` (a registry endpoint), no proxy and no environment settings."""
    with httpx.Client(trust_env=False, timeout=timeout) as client:
        response = client.get(url, headers=dict(headers or {}))
        return response.status_code, response.headers, response.content


def uv_binary() -> Path | None:
    """The uv next to this venv's python, else one on PATH."""
    local = BIN / "uv"
    if local.is_file():
        return local
    found = shutil.which("uv")
    return Path(found) if found else None


def uv_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without any UV_* setting, and uv told to read no uv.toml/pyproject configuration and never to
    download a Python."""
    clean = {k: v for k, v in env.items() if not k.upper().startswith("UV_")}
    clean |= {"UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"}
    return clean


def uv_install(
    tmp_path: Path,
    packages: Iterable[str],
    index_url: str,
    env: Mapping[str, str],
    timeout: float = 120,
    *,
    extra_args: Iterable[str] = (),
    settings: Mapping[str, str] | None = None,
) -> ClientResult:
    """`uv pip install --no-cache` into a fresh, pip-less venv (env via uv_env, then the UV_* `settings`);
    result.dir is the venv."""
    uv = uv_binary()
    if uv is None:
        raise FileNotFoundError("uv is not installed")
    env = uv_env(env) | dict(settings or {})
    venv = Path(tempfile.mkdtemp(prefix="uv-venv-", dir=tmp_path))
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, 60, tmp_path)
    made.dir = venv
    if made.returncode != 0:
        return made
    cmd = [
        str(uv),
        "pip",
        "install",
        "--no-cache",
        "--no-progress",
        "--python",
        str(venv / "bin" / "python"),
        "--index-url",
        index_url,
        *extra_args,
        *packages,
    ]
    result = _run(cmd, env, timeout, venv)
    result.dir = venv
    return result


def run_client(cmd: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 120) -> ClientResult:
    """Any client command, in its own process group, killed after `timeout`; never raises for its failure."""
    return _run(cmd, env, timeout, cwd)


# pnpm and the Yarns, installed by scripts/test into the venv's own prefix: client name -> its JS entry point.
NODE_CLIENTS = BIN.parent / "node-clients" / "node_modules"
NODE_CLIENT_ENTRIES = {
    "pnpm": "pnpm/bin/pnpm.cjs",
    "yarn": "@yarnpkg/cli-dist/bin/yarn.js",  # Yarn Berry (2+)
    "yarn1": "yarn/bin/yarn.js",  # Yarn classic
}


def node_client(name: str) -> list[str] | None:
    """The command that runs `name` (pnpm, yarn, yarn1) with this machine's node, or None if not installed."""
    entry = NODE_CLIENTS / NODE_CLIENT_ENTRIES[name]
    node = shutil.which("node")
    return [node, str(entry)] if node and entry.is_file() else None


def node_home_env(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """`env` with a HOME of the test's own (no ~/.npmrc, ~/.yarnrc, ~/.yarnrc.yml, global store or cache of
    this machine) and no npm_config_* / YARN_* setting of this machine's."""
    clean = {k: v for k, v in env.items() if not k.upper().startswith(("NPM_CONFIG_", "YARN_", "PNPM_"))}
    home.mkdir(parents=True, exist_ok=True)
    (home / ".npmrc").write_text("")
    return clean | {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "npm_config_userconfig": str(home / ".npmrc"),
        "npm_config_globalconfig": str(home / ".npmrc-global"),
        "npm_config_update_notifier": "false",
        "COREPACK_ENABLE_STRICT": "0",
        "YARN_ENABLE_TELEMETRY": "0",
        "YARN_ENABLE_GLOBAL_CACHE": "0",
        "YARN_ENABLE_PROGRESS_BARS": "false",
    }


def pnpm_binary() -> Path | None:
    """pnpm as scripts/test installs it, into the venv's own prefix from the npm registry; else None."""
    local = NODE_CLIENTS / ".bin" / "pnpm"
    return local if local.is_file() else None


def pnpm_install(
    tmp_path: Path,
    packages: Iterable[str],
    registry_url: str,
    env: Mapping[str, str],
    timeout: float = 120,
) -> ClientResult:
    """`pnpm add` in a fresh project with its own store, cache and npmrc (registry, CA file and, given a
    proxy env, https-proxy); result.dir is the project."""
    pnpm = pnpm_binary()
    if pnpm is None:
        raise FileNotFoundError("pnpm is not installed (scripts/test installs it)")
    project = Path(tempfile.mkdtemp(prefix="pnpm-", dir=tmp_path))
    state = Path(tempfile.mkdtemp(prefix="pnpm-state-", dir=tmp_path))
    (project / "package.json").write_text(
        json.dumps({"name": "e2e-project", "version": "1.0.0", "private": True}, indent=2) + "\n"
    )
    npmrc = [
        f"registry={registry_url}",
        f"cafile={env['SSL_CERT_FILE']}",
        f"store-dir={state / 'store'}",
        f"cache-dir={state / 'cache'}",
        "update-notifier=false",
        "fetch-retries=0",
    ]
    if env.get("HTTPS_PROXY"):
        npmrc += [f"https-proxy={env['HTTPS_PROXY']}", f"proxy={env['HTTPS_PROXY']}"]
    (project / ".npmrc").write_text("\n".join(npmrc) + "\n")
    userconfig = state / "user.npmrc"
    userconfig.write_text("")
    run_env = {**env, "npm_config_userconfig": str(userconfig), "XDG_DATA_HOME": str(state / "data")}
    cmd = [str(pnpm), "add", "--reporter=append-only", *packages]
    result = _run(cmd, run_env, timeout, project)
    result.dir = project
    return result
