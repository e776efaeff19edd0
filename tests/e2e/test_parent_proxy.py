"""Corporate egress: with mitmproxy's `--mode upstream:URL`, every request the addon makes itself goes through
that parent proxy (CONNECT for HTTPS, with upstream_auth's credentials), large answers are still relayed
locally (never through the parent), and when the parent refuses connections or hangs, stale entries are
served and misses fail after cache_upstream_timeout, as when a registry itself is down. With
cache_env_proxy, the proxy process's HTTPS_PROXY and NO_PROXY decide instead; without it they are ignored."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from .clients import ProxyFactory, fetch
from .fakeorigin import sha256
from .fakeparent import FakeParent
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
CREDENTIALS = "builder:s3cret"
BASIC = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()


@pytest.fixture
def parent() -> Iterator[FakeParent]:
    server = FakeParent().start()
    try:
        yield server
    finally:
        server.stop()


def test_the_cache_fetches_through_the_parent_and_survives_its_outages(
    registry: FakeRegistry, proxy_factory: ProxyFactory, parent: FakeParent
) -> None:
    proxy = proxy_factory(
        modes=[f"upstream:{parent.url}"],
        upstream_auth=CREDENTIALS,
        cache_ttl=1,
        cache_upstream_timeout=2,
        cache_upstream_backoff=0,  # every request tries the parent again
    )
    index = f"{registry.pypi_url}alpha/"
    registry.add_blob("/blobs/big.bin", 3 * MIB)  # over the inline limit: answered through the relay
    blob = registry.blob_url("/blobs/big.bin")

    status, headers, _ = fetch(proxy, index)
    assert (status, headers.get("x-cache")) == (200, "MISS")
    status, headers, body = fetch(proxy, blob)
    expected = registry.blob_sha256("/blobs/big.bin")
    assert (status, headers.get("x-cache"), sha256(body)) == (200, "MISS", expected)
    hosts = {f"{registry.index.ip}:{registry.index.port}", f"{registry.files.ip}:{registry.files.port}"}
    assert set(parent.targets()) == hosts, parent.seen  # both hosts through the parent, nothing else
    assert {s.proxy_authorization for s in parent.seen} == {BASIC}

    time.sleep(1.2)  # cache_ttl=1: the index entry is stale now
    parent.refuse()
    status, headers, _ = fetch(proxy, index)
    assert (status, headers.get("x-cache")) == (200, "STALE"), headers
    assert "refused" in headers.get("x-cache-detail", "")

    parent.start("hang")
    status, headers, _ = fetch(proxy, index)
    assert (status, headers.get("x-cache")) == (200, "STALE"), headers
    assert "timed out" in headers.get("x-cache-detail", "")
    status, headers, _ = fetch(proxy, f"{registry.pypi_url}echo/")  # not cached: fails, does not hang
    assert status == 504, headers


@pytest.mark.parametrize("opted_in", [True, False])
def test_the_environment_proxy_is_used_only_when_asked(
    registry: FakeRegistry, proxy_factory: ProxyFactory, parent: FakeParent, opted_in: bool
) -> None:
    env = {"HTTPS_PROXY": f"http://{CREDENTIALS}@{parent.ip}:{parent.port}", "NO_PROXY": registry.index.ip}
    proxy = proxy_factory(env=env, cache_env_proxy=opted_in)
    wheel = registry.wheel("alpha")
    for url in (f"{registry.pypi_url}alpha/", registry.file_url(wheel.filename)):
        status, headers, _ = fetch(proxy, url)
        assert (status, headers.get("x-cache")) == (200, "MISS"), url
    if opted_in:  # the index host is in NO_PROXY: only the files host goes through the parent
        assert parent.targets() == [f"{registry.files.ip}:{registry.files.port}"], parent.seen
        assert parent.seen[0].proxy_authorization == BASIC
    else:
        assert parent.seen == []
