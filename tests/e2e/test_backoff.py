"""Back-off: with the registry hanging, one install of many stale packages costs about one upstream timeout,
not one timeout per package."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, pip_install, report
from .fakeregistry import FakeRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PACKAGES = ["alpha", "bravo", "charlie", "delta", "echo", "golf"]
UPSTREAM_TIMEOUT = 3


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
