"""cache_offline: the cache is served without asking the registry; a miss is a 504 naming the URL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, fetch, installed_version, pip_install, report
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

    missing = pip_install(tmp_path, ["delta"], registry.pypi_url, env)
    assert missing.returncode != 0, report(missing, proxy)
    assert registry.requests == [], "an offline proxy contacted the registry"
