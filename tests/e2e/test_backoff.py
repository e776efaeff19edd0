"""Back-off: with the registry hanging, one install of many stale packages costs about one upstream timeout,
not one timeout per package, and what the cache cannot answer (npm's audit POST) fails at once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from .clients import ProxyFactory, client_env, npm_install, npm_installed_version, pip_install, report
from .fakeorigin import Hang, RawServer
from .fakeregistry import FakeRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PACKAGES = ["alpha", "bravo", "charlie", "delta", "echo", "golf"]
UPSTREAM_TIMEOUT = 3
HANGING_IP = "127.0.0.4"


def test_hanging_registry_costs_one_timeout_per_install_not_per_package(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_ttl=1, cache_upstream_timeout=UPSTREAM_TIMEOUT)
    env = client_env(proxy)
    warm = pip_install(tmp_path, PACKAGES, registry.pypi_url, env)
    assert warm.returncode == 0, report(warm, proxy)
    time.sleep(1.5)  # every index entry is now stale

    registry.mode = "hang"
    registry.clear_requests()
    mark = proxy.log_size()
    result = pip_install(tmp_path, PACKAGES, registry.pypi_url, env, timeout=90)

    assert result.returncode == 0, report(result, proxy)
    # One timeout per package would be 6 * 3 = 18 s.
    assert result.elapsed < UPSTREAM_TIMEOUT + 8, report(result, proxy)
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    index = {f"{registry.pypi_url}{name}/" for name in PACKAGES}
    assert {url: outcomes.get(url) for url in index} == {url: "STALE" for url in index}, proxy.log_text(mark)
    asked = [p for p in registry.paths() if p.startswith("/simple/")]
    assert len(asked) < len(PACKAGES), f"the hanging registry was asked for every package: {asked}"


NPM_PACKAGES = ["papa", "kilo", "lima", "@fake/quebec"]  # five packuments with papa's dependency oscar
NPM_INSTALLED = {"papa": "1.0.0", "oscar": "3.1.0", "kilo": "1.1.0", "lima": "2.0.0", "@fake/quebec": "1.0.0"}


def test_hanging_registry_costs_npm_one_timeout_audit_included(
    tmp_path: Path, npm_registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    """npm audits by default: a POST the cache cannot answer, which mitmproxy would hold for ten minutes on a
    hanging registry. Through the cache it gets our timeout once, and during the back-off a 503 at once."""
    registry = npm_registry
    proxy = proxy_factory(cache_ttl=1, cache_upstream_timeout=UPSTREAM_TIMEOUT)
    env = client_env(proxy)
    warm = npm_install(tmp_path, NPM_PACKAGES, registry.npm_url, env, audit=True)
    assert warm.returncode == 0, report(warm, proxy)
    assert [r for r in registry.paths(None) if "advisories" in r or "audit" in r], "npm did not audit"
    time.sleep(1.5)  # every packument is now stale

    registry.mode = "hang"
    registry.clear_requests()
    mark = proxy.log_size()
    result = npm_install(tmp_path, NPM_PACKAGES, registry.npm_url, env, timeout=90, audit=True)

    assert result.returncode == 0, report(result, proxy)
    assert result.elapsed < UPSTREAM_TIMEOUT + 8, report(result, proxy)
    assert result.dir is not None
    assert {name: npm_installed_version(result.dir, name) for name in NPM_INSTALLED} == NPM_INSTALLED
    outcomes = proxy.cache_log(mark)
    packuments = {registry.npm_url + name.replace("/", "%2f") for name in NPM_INSTALLED}
    assert {url: o for o, url in outcomes if url in packuments} == dict.fromkeys(packuments, "STALE")


def test_during_back_off_what_is_not_cached_is_answered_at_once(proxy_factory: ProxyFactory) -> None:
    """An outage costs one timeout even for packages not cached yet: during the back-off they get a 503 at
    once that names the origin and the seconds left, and the hanging registry gets one probe, not one
    request per package."""
    hang = Hang()
    server = RawServer(hang, ip=HANGING_IP).start()
    try:
        proxy = proxy_factory(cache_hosts=[HANGING_IP], cache_upstream_timeout=UPSTREAM_TIMEOUT)
        origin = f"http://{HANGING_IP}:{server.port}"
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=30) as client:
            first = client.get(f"{origin}/simple/alpha/")
            assert (first.status_code, first.headers.get("x-cache-detail")) == (504, "upstream timed out")
            for name in ("bravo", "charlie", "delta", "echo"):
                started = time.monotonic()
                answer = client.get(f"{origin}/simple/{name}/")
                took = time.monotonic() - started
                assert (answer.status_code, answer.headers.get("x-cache")) == (503, "MISS"), proxy.log_tail()
                assert f"{origin} not tried for another" in answer.text, answer.text
                assert "s (cache_upstream_backoff)" in answer.text, answer.text
                assert took < UPSTREAM_TIMEOUT, took
        # The timed-out request and at most one background probe reached the registry.
        assert hang.requests <= 2, hang.requests
    finally:
        server.stop()
