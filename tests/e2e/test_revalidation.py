"""A stale entry is revalidated with its validators: a 304 refreshes it without a new download."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .clients import ProxyFactory, fetch
from .fakeorigin import FakeOrigin, OriginReply, OriginRequest

pytestmark = pytest.mark.e2e

PAGE = b"<html><body><a href='/files/x-1.0.tar.gz'>x-1.0.tar.gz</a></body></html>\n" * 50
ETAG = '"v1"'
MODIFIED = "Tue, 03 Nov 2026 10:00:00 GMT"


def page(request: OriginRequest) -> OriginReply:
    if request.headers.get("if-none-match") == ETAG:
        return OriginReply(304, b"", {"ETag": ETAG, "X-Origin": "revalidated"})
    headers = {"Content-Type": "text/html", "ETag": ETAG, "Last-Modified": MODIFIED, "X-Origin": "first"}
    return OriginReply(body=PAGE, headers=headers)


@pytest.fixture
def origin() -> Iterator[FakeOrigin]:
    server = FakeOrigin("127.0.0.4")
    server.routes["/simple/x/"] = page
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_304_refreshes_a_stale_entry_without_a_new_download(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_hosts=["127.0.0.4"], cache_ttl=1)
    url = f"{origin.url}/simple/x/"
    status, headers, body = fetch(proxy, url)
    assert (status, headers.get("x-cache"), body) == (200, "MISS", PAGE)
    time.sleep(1.5)  # stale

    status, headers, body = fetch(proxy, url)
    assert (status, headers.get("x-cache"), body) == (200, "REVALIDATED", PAGE), proxy.log_tail()
    assert headers.get("x-cache-detail") == "revalidated: 304"
    assert headers.get("x-origin") == "revalidated"  # the 304's fields replace the stored ones...
    assert headers.get("content-type") == "text/html"  # ...but not those describing the body it keeps
    assert int(headers.get("age", "99")) <= 1
    # The proxy asked with the stored validators, and the origin sent no body the second time.
    [first, second] = origin.requests
    assert "if-none-match" not in first.headers
    assert (second.headers.get("if-none-match"), second.headers.get("if-modified-since")) == (ETAG, MODIFIED)

    status, headers, body = fetch(proxy, url)  # fresh again
    assert (status, headers.get("x-cache"), body) == (200, "HIT", PAGE)
    assert len(origin.requests) == 2
