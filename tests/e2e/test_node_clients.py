"""pnpm, Yarn Berry and Yarn classic through the forward proxy (an HTTPS proxy and the proxy's CA in their
configuration): each installs cold, then again into a fresh project and cache with the registry stopped,
from the cache. Through the proxy the lockfile names the registry itself, so it is portable as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, report
from .fakeregistry import FakeRegistry
from .nodeclients import client_command, configure, install, new_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPENDENCIES = {"papa": "^1.0.0", "kilo": "^1.0.0", "@fake/quebec": "^1.0.0"}
INSTALLED = {"papa": "1.0.0", "kilo": "1.1.0", "@fake/quebec": "1.0.0"}


@pytest.mark.parametrize("client", ["pnpm", "yarn", "yarn1"])
def test_installs_through_the_proxy_then_from_the_cache_with_the_registry_stopped(
    tmp_path: Path, npm_registry: FakeRegistry, proxy_factory: ProxyFactory, client: str
) -> None:
    if client_command(client) is None:
        pytest.skip(f"{client} is not installed (scripts/test installs it)")
    registry = npm_registry
    proxy = proxy_factory()
    env = client_env(proxy)

    cold = new_project(tmp_path, client, DEPENDENCIES)
    configure(cold, registry.npm_url, endpoint=False, proxy=proxy.url, ca=proxy.bundle)
    first = install(cold, env)
    assert first.returncode == 0, report(first, proxy)
    assert cold.installed(list(INSTALLED)) == INSTALLED
    tarballs = {registry.tarball_url(name, version) for name, version in INSTALLED.items()}
    # Yarn Berry asks for a scoped tarball as @scope%2fname/-/..., the others as @scope/name/-/...
    misses = {url.replace("%2f", "/") for outcome, url in proxy.cache_log() if outcome == "MISS"}
    assert tarballs <= misses, proxy.log_tail()
    assert str(proxy.port) not in cold.lockfile.read_text()

    registry.stop()
    mark = proxy.log_size()
    warm = new_project(tmp_path, client, DEPENDENCIES)
    configure(warm, registry.npm_url, endpoint=False, proxy=proxy.url, ca=proxy.bundle)
    second = install(warm, env)
    assert second.returncode == 0, report(second, proxy)
    assert warm.installed(list(INSTALLED)) == INSTALLED
    outcomes = {url.replace("%2f", "/"): outcome for outcome, url in proxy.cache_log(mark)}
    found = {url: outcomes.get(url) for url in tarballs}
    assert found == dict.fromkeys(tarballs, "HIT"), proxy.log_text(mark)
