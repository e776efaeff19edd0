"""cache_offline: the cache is served without asking the registry; a miss is a 504 naming the URL, and no
other host is contacted either."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, fetch, installed_version, pip_install, report
from .fakeorigin import FakeOrigin
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

PACKAGES = ["alpha", "foxtrot"]


def test_offline_serves_the_cache_and_never_asks_the_registry(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_ttl=1)
    env = client_env(proxy)
    warm = pip_install(tmp_path, PACKAGES, registry.pypi_url, env)
    assert warm.returncode == 0, report(warm, proxy)
    time.sleep(1.5)  # stale entries too must be served offline, however old

    proxy.restart(cache_offline=True)
    registry.clear_requests()

    result = pip_install(tmp_path, PACKAGES, registry.pypi_url, env)
    assert result.returncode == 0, report(result, proxy)
    assert result.dir is not None
    assert installed_version(result.dir, "foxtrot") == "1.0.0"
    assert installed_version(result.dir, "echo") == "3.1.0"

    uncached = f"{registry.pypi_url}delta/"
    status, headers, body = fetch(proxy, uncached)
    assert status == 504
    assert uncached in body.decode(), body
    assert headers.get("x-cache") == "MISS"

    # Another client, asking with another Accept-Encoding, gets the unencoded files pip cached.
    wheel = registry.wheel("foxtrot")
    for coding in ("br, zstd", "identity", ""):
        status, headers, body = fetch(proxy, registry.file_url(wheel.filename), {"Accept-Encoding": coding})
        assert (status, headers.get("x-cache"), body) == (200, "HIT", wheel.data), coding

    missing = pip_install(tmp_path, ["delta"], registry.pypi_url, env)
    assert missing.returncode != 0, report(missing, proxy)
    assert registry.requests == [], "an offline proxy contacted the registry"


def test_offline_contacts_no_host_at_all(proxy_factory: ProxyFactory) -> None:
    """A build reproduced offline must not depend on anything outside the cache: hosts outside cache_hosts
    are not contacted either."""
    other = FakeOrigin("127.0.0.5").start()
    try:
        proxy = proxy_factory(cache_offline=True)
        status, headers, body = fetch(proxy, f"{other.url}/anything")
        assert status == 504 and b"offline" in body, (status, headers, body)
        assert other.accepted == 0 and other.requests == []
    finally:
        other.stop()
