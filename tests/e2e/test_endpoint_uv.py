"""uv through a registry endpoint (no proxy): it installs, then installs again from the cache with the
registry stopped, with and without PEP 658 metadata (without it, uv reads wheel metadata with HEAD and
Range requests, which the cache answers)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, installed_version, report, uv_binary, uv_install
from .fakeregistry import FakeRegistry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(uv_binary() is None, reason="uv is not installed"),
]

PACKAGES = ["alpha", "bravo", "foxtrot"]
INSTALLED = {"alpha": "1.1.0", "bravo": "2.0.0", "foxtrot": "1.0.0", "echo": "3.1.0"}


def installed(result_dir: Path | None) -> dict[str, str | None]:
    assert result_dir is not None
    return {name: installed_version(result_dir, name) for name in INSTALLED}


@pytest.mark.parametrize("core_metadata", [True, False], ids=["pep658", "range-requests"])
def test_uv_installs_through_the_endpoint_then_from_the_cache_with_the_registry_stopped(
    tmp_path: Path,
    registry_factory: Callable[..., FakeRegistry],
    proxy_factory: ProxyFactory,
    core_metadata: bool,
) -> None:
    registry = registry_factory(core_metadata=core_metadata)
    proxy = proxy_factory(endpoints=[registry.index.url])
    index_url = proxy.endpoint() + "/simple/"
    env = client_env(bundle=proxy.bundle)  # no proxy variables: uv talks to the endpoint only

    first = uv_install(tmp_path, PACKAGES, index_url, env)
    assert first.returncode == 0, report(first, proxy)
    assert installed(first.dir) == INSTALLED
    wheels = {registry.wheel(name).filename for name in INSTALLED}
    files_paths = {r.path for host, r in registry.requests if host == "files"}
    assert {f"/packages/{w}" for w in wheels} <= files_paths
    if core_metadata:
        assert {f"/packages/{w}.metadata" for w in wheels} <= files_paths

    registry.stop()
    registry.clear_requests()
    mark = proxy.log_size()
    second = uv_install(tmp_path, PACKAGES, index_url, env, timeout=60)
    assert second.returncode == 0, report(second, proxy)
    assert installed(second.dir) == INSTALLED
    wheel_urls = {registry.file_url(w) for w in wheels}
    outcomes = [(outcome, url) for outcome, url in proxy.cache_log(mark)]
    assert {url for _, url in outcomes} >= wheel_urls, proxy.log_text(mark)
    assert {outcome for outcome, _ in outcomes} == {"HIT"}, proxy.log_text(mark)
    if not core_metadata:
        # uv read each wheel's metadata from its tail: HEAD (Accept-Ranges: bytes), then a Range, both HITs
        log = proxy.log_text(mark)
        partial = {url for url in wheel_urls if re.search(rf"HIT 206 \d+ {re.escape(url)}\b", log)}
        assert partial == wheel_urls, log
