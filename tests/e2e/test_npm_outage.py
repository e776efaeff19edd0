"""npm through the caching proxy: a second install comes from the cache, and an install still works while the
registry is down, hanging, failing with 503 or cutting bodies short."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, npm_install, npm_installed_version, report
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

PACKAGES = ["papa", "kilo", "lima", "@fake/quebec"]
INSTALLED = {"papa": "1.0.0", "oscar": "3.1.0", "kilo": "1.1.0", "lima": "2.0.0", "@fake/quebec": "1.0.0"}
UPSTREAM_TIMEOUT = 2


def packument_urls(registry: FakeRegistry) -> set[str]:
    return {registry.npm_url + name.replace("/", "%2f") for name in INSTALLED}


def tarball_urls(registry: FakeRegistry) -> set[str]:
    return {registry.tarball_url(name, version) for name, version in INSTALLED.items()}


def installed(result_dir: Path | None) -> dict[str, str | None]:
    assert result_dir is not None
    return {name: npm_installed_version(result_dir, name) for name in INSTALLED}


def test_second_install_is_served_from_the_cache(
    tmp_path: Path, npm_registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    registry = npm_registry
    proxy = proxy_factory()
    env = client_env(proxy)

    first = npm_install(tmp_path, PACKAGES, registry.npm_url, env)
    assert first.returncode == 0, report(first, proxy)
    paths = set(registry.paths())
    assert {"/papa", "/oscar", "/@fake%2fquebec", "/oscar/-/oscar-3.1.0.tgz"} <= paths
    misses = {url for outcome, url in proxy.cache_log() if outcome == "MISS"}
    assert packument_urls(registry) | tarball_urls(registry) <= misses, proxy.log_tail()

    registry.clear_requests()
    mark = proxy.log_size()
    second = npm_install(tmp_path, PACKAGES, registry.npm_url, env)
    assert second.returncode == 0, report(second, proxy)
    assert installed(second.dir) == INSTALLED
    assert registry.requests == [], "the registry was asked again although everything was cached and fresh"
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    wanted = packument_urls(registry) | tarball_urls(registry)
    assert {url: outcomes.get(url) for url in wanted} == {url: "HIT" for url in wanted}


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["stopped", "hang", "503", "truncate"])
def test_install_survives_an_outage_from_stale_entries(
    tmp_path: Path, npm_registry: FakeRegistry, proxy_factory: ProxyFactory, failure: str
) -> None:
    registry = npm_registry
    proxy = proxy_factory(cache_ttl=1, cache_upstream_timeout=UPSTREAM_TIMEOUT)
    env = client_env(proxy)
    warm = npm_install(tmp_path, PACKAGES, registry.npm_url, env)
    assert warm.returncode == 0, report(warm, proxy)
    time.sleep(1.5)  # packuments are now stale (cache_ttl=1); tarballs are immutable

    if failure == "stopped":
        registry.stop()
    else:
        registry.mode = failure
    registry.clear_requests()
    mark = proxy.log_size()

    result = npm_install(tmp_path, PACKAGES, registry.npm_url, env, timeout=60)
    assert result.returncode == 0, report(result, proxy)
    assert result.elapsed < UPSTREAM_TIMEOUT + 10, report(result, proxy)
    assert installed(result.dir) == INSTALLED

    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in packument_urls(registry)} == {
        url: "STALE" for url in packument_urls(registry)
    }, proxy.log_text(mark)
    assert {url: outcomes.get(url) for url in tarball_urls(registry)} == {
        url: "HIT" for url in tarball_urls(registry)
    }, proxy.log_text(mark)
    assert not [p for p in registry.paths() if p.endswith(".tgz")], "immutable tarballs were re-fetched"
