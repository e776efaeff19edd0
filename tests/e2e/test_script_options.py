"""Under plain `mitmdump -s cacheaddon/addon.py`, a value of one of our options that cannot be used stops the
proxy with one line naming the option and exit status 1, as `cacheaddon run` does; it never leaves a plain
proxy running without the cache (which, for cache_offline, would contact the network against the user's
wish). Values mitmproxy cannot parse (deferred until the script loads) and values our configure refuses,
from --set and from the confdir's config.yaml."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .clients import MitmConf, Proxy
from .fakeregistry import CertPaths

pytestmark = pytest.mark.e2e

EXIT_WITHIN = 60.0  # a bound on a hang, not a timing


def run_until_exit(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=EXIT_WITHIN
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"still running after {EXIT_WITHIN}s: {exc.stdout!r} {exc.stderr!r}") from None


def proxy_argv(tmp_path: Path, mitm: MitmConf, certs: CertPaths, runner: str) -> list[str]:
    return Proxy(mitm, certs.ca_cert, tmp_path / "cache", tmp_path / "log", {}, runner=runner).argv()


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        ("cache_offline=yes", "cache_offline"),  # mitmproxy's bool parser refuses it
        ("cache_ttl=abc", "cache_ttl"),  # mitmproxy's int parser refuses it
        ("cache_stale_on_error=1", "cache_stale_on_error"),
        ("cache_ttl=-1", "cache_ttl"),  # parsed, then refused by our configure
        ("cache_size_limit=abc", "cache_size_limit"),
        ("cache_hosts=not a host!", "cache_hosts"),
    ],
)
@pytest.mark.parametrize("runner", ["mitmdump", "cli"])
def test_a_bad_option_value_stops_the_proxy_with_one_line(
    tmp_path: Path, mitm_conf: MitmConf, certs: CertPaths, runner: str, spec: str, option: str
) -> None:
    argv = proxy_argv(tmp_path, mitm_conf, certs, runner) + ["--set", spec]
    result = run_until_exit(argv, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    naming = [line for line in result.stderr.splitlines() if option in line]
    assert len(naming) == 1, output
    assert "Traceback" not in output, output


def test_a_bad_value_in_config_yaml_stops_the_proxy(tmp_path: Path, certs: CertPaths) -> None:
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    (confdir / "config.yaml").write_text("cache_ttl: abc\n")
    argv = proxy_argv(tmp_path, MitmConf(confdir), certs, "mitmdump")
    result = run_until_exit(argv, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert [line for line in result.stderr.splitlines() if "cache_ttl" in line], result.stderr
    assert "Traceback" not in result.stdout + result.stderr

