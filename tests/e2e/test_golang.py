"""Go modules with the real go command: GOPROXY pointed at a golang registry endpoint, and GOPROXY at the
(fake) module proxy reached through HTTPS_PROXY. Each loads a module that needs two others cold, then again
with an empty module cache and the fake proxy stopped, from the cache."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from .clients import DEFAULT_CACHE_HOSTS, ClientResult, Proxy, ProxyFactory, report, run_client
from .fakegoproxy import GOLF, HOTEL, FakeGoProxy, go_available, loopback_name
from .fakeregistry import CertPaths

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not go_available(), reason="go is not installed (scripts/test installs golang-go)"),
]


@pytest.fixture
def goproxy(certs: CertPaths) -> Iterator[FakeGoProxy]:
    server = FakeGoProxy(certs).start()
    yield server
    server.stop()


def go_build(
    tmp_path: Path, goproxy_url: str, extra_env: Mapping[str, str], timeout: float = 240
) -> ClientResult:
    """`go list -deps` of a project requiring HOTEL, with a new GOPATH, module and build cache; no checksum
    database (the modules are the test's own)."""
    work = Path(tempfile.mkdtemp(prefix="go-", dir=tmp_path))
    project = work / "project"
    project.mkdir()
    (project / "go.mod").write_text(
        f"module e2e/project\n\ngo 1.19\n\nrequire {HOTEL.path} {HOTEL.version}\n"
    )
    (project / "main.go").write_text(f'package main\n\nimport _ "{HOTEL.path}"\n\nfunc main() {{}}\n')
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("GO")}
    env |= {
        "HOME": str(work),
        "GOPATH": str(work / "gopath"),
        "GOMODCACHE": str(work / "gopath" / "pkg" / "mod"),
        "GOCACHE": str(work / "gocache"),
        "GOPROXY": goproxy_url,
        "GOSUMDB": "off",
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
        "GOTELEMETRY": "off",
        "CGO_ENABLED": "0",
        **extra_env,
    }
    # `go list -deps` needs every package's source (the module zips) but compiles nothing
    result = run_client(["go", "list", "-deps", "."], env, project, timeout)
    result.dir = work
    return result


def check_both_builds(
    tmp_path: Path,
    proxy: Proxy,
    goproxy: FakeGoProxy,
    goproxy_url: str,
    upstream: str,
    env: Mapping[str, str],
) -> None:
    """Builds cold, then with the fake stopped; `upstream`: the fake's origin as the proxy logs it."""
    first = go_build(tmp_path, goproxy_url, env)
    assert first.returncode == 0, report(first, proxy)
    files = {upstream + path for path in goproxy.file_paths()}
    misses = {url for outcome, url in proxy.cache_log() if outcome == "MISS"}
    assert files <= misses, proxy.log_tail()
    assert {p.split("?")[0] for p in goproxy.origin.paths()} >= goproxy.file_paths()

    goproxy.stop()
    mark = proxy.log_size()
    second = go_build(tmp_path, goproxy_url, env)
    assert second.returncode == 0, report(second, proxy)
    assert {HOTEL.path, GOLF.path} <= set(second.stdout.split()), report(second, proxy)
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in files} == dict.fromkeys(files, "HIT"), proxy.log_text(mark)


def test_go_builds_through_the_golang_endpoint_then_from_the_cache_with_the_fake_stopped(
    tmp_path: Path, goproxy: FakeGoProxy, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[goproxy.url])
    check_both_builds(tmp_path, proxy, goproxy, proxy.endpoint(), goproxy.url, {})


def test_go_builds_through_https_proxy_then_from_the_cache_with_the_fake_stopped(
    tmp_path: Path, goproxy: FakeGoProxy, proxy_factory: ProxyFactory
) -> None:
    name = loopback_name()
    if name is None:
        pytest.skip(
            "no host name of this machine resolves to a loopback address (go never proxies localhost)"
        )
    proxy = proxy_factory(cache_hosts=[*DEFAULT_CACHE_HOSTS, name])
    env = {"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(proxy.bundle)}
    named = goproxy.url_named(name)
    check_both_builds(tmp_path, proxy, goproxy, named, named, env)
