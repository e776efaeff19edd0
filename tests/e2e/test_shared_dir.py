"""Two mitmdump processes on one cache_dir, and a client's own conditional request answered from the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from .clients import ProxyFactory, fetch
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e


def test_two_proxies_share_one_cache_dir(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    shared = tmp_path / "shared-cache"
    first = proxy_factory(cache_dir=shared)
    second = proxy_factory(cache_dir=shared)
    wheel = registry.wheel("alpha")
    url = registry.file_url(wheel.filename)

    status, headers, body = fetch(first, url)
    assert (status, headers["x-cache"]) == (200, "MISS")
    registry.clear_requests()

    status, headers, again = fetch(second, url)
    assert (status, headers["x-cache"]) == (200, "HIT"), "the second process did not see the first's entry"
    assert hashlib.sha256(again).digest() == hashlib.sha256(body).digest()
    assert registry.requests == []

    # And the other way round, for an index page written by the second process.
    page = f"{registry.pypi_url}bravo/"
    status, headers, _ = fetch(second, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"]) == (200, "MISS")
    status, headers, _ = fetch(first, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"]) == (200, "HIT")


def test_a_matching_conditional_request_gets_304_from_the_cache(
    registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    page = f"{registry.pypi_url}charlie/"
    status, headers, body = fetch(proxy, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"]) == (200, "MISS")
    etag = headers["etag"]
    registry.clear_requests()

    status, headers, body = fetch(proxy, page, {"Accept": "text/html", "If-None-Match": etag})
    assert (status, headers["x-cache"], body) == (304, "HIT", b"")
    assert headers["etag"] == etag

    status, headers, body = fetch(proxy, page, {"Accept": "text/html", "If-None-Match": '"something-else"'})
    assert (status, headers["x-cache"]) == (200, "HIT") and body
    assert registry.requests == [], "conditional requests on a fresh entry must not reach the registry"
