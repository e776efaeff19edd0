"""pip through the caching proxy: a second install comes from the cache, and an install still works while the
registry is down, hanging, failing with 503 or cutting bodies short."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, installed_version, pip_install, report
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

PACKAGES = ["alpha", "bravo", "charlie", "foxtrot"]
INSTALLED = {"alpha": "1.1.0", "bravo": "2.0.0", "charlie": "0.3.0", "foxtrot": "1.0.0", "echo": "3.1.0"}
UPSTREAM_TIMEOUT = 2


def index_urls(registry: FakeRegistry) -> set[str]:
    return {f"{registry.pypi_url}{name}/" for name in INSTALLED}


def wheel_urls(registry: FakeRegistry) -> set[str]:
    return {registry.file_url(registry.wheel(name).filename) for name in INSTALLED}


def test_second_install_is_served_from_the_cache(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    env = client_env(proxy)

    first = pip_install(tmp_path, PACKAGES, registry.pypi_url, env)
    assert first.returncode == 0, report(first, proxy)
    assert {f"/simple/{name}/" for name in INSTALLED} <= set(registry.paths())
    assert {f"/packages/{registry.wheel(name).filename}" for name in INSTALLED} <= set(registry.paths())
    misses = {url for outcome, url in proxy.cache_log() if outcome == "MISS"}
    assert index_urls(registry) | wheel_urls(registry) <= misses, proxy.log_tail()

    registry.clear_requests()
    mark = proxy.log_size()
    second = pip_install(tmp_path, PACKAGES, registry.pypi_url, env)
    assert second.returncode == 0, report(second, proxy)
    assert second.dir is not None
    assert {name: installed_version(second.dir, name) for name in INSTALLED} == INSTALLED
    assert registry.requests == [], "the registry was asked again although everything was cached and fresh"
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in index_urls(registry) | wheel_urls(registry)} == {
        url: "HIT" for url in index_urls(registry) | wheel_urls(registry)
    }


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["stopped", "hang", "503", "truncate"])
def test_install_survives_an_outage_from_stale_entries(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory, failure: str
) -> None:
    proxy = proxy_factory(cache_ttl=1, cache_upstream_timeout=UPSTREAM_TIMEOUT)
    env = client_env(proxy)
    warm = pip_install(tmp_path, PACKAGES, registry.pypi_url, env)
    assert warm.returncode == 0, report(warm, proxy)
    time.sleep(1.5)  # index entries are now stale (cache_ttl=1); wheels are immutable

    if failure == "stopped":
        registry.stop()
    else:
        registry.mode = failure
    registry.clear_requests()
    mark = proxy.log_size()

    result = pip_install(tmp_path, PACKAGES, registry.pypi_url, env, timeout=60)
    assert result.returncode == 0, report(result, proxy)
    assert result.elapsed < UPSTREAM_TIMEOUT + 10, report(result, proxy)
    assert result.dir is not None
    assert {name: installed_version(result.dir, name) for name in INSTALLED} == INSTALLED

    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in index_urls(registry)} == {
        url: "STALE" for url in index_urls(registry)
    }, proxy.log_text(mark)
    assert {url: outcomes.get(url) for url in wheel_urls(registry)} == {
        url: "HIT" for url in wheel_urls(registry)
    }, proxy.log_text(mark)
    assert not [p for p in registry.paths() if p.startswith("/packages/")], "immutable wheels were re-fetched"
