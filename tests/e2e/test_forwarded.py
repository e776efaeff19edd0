"""Requests to a cached host that the cache does not answer (other methods, a Range of something not cached)
are sent upstream by the addon itself: with its timeouts and back-off, never mitmproxy's ten-minute wait.
Live answers keep what is the client's own (Set-Cookie); the cache keeps none of it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from .clients import Proxy, ProxyFactory, fetch
from .fakeorigin import FakeOrigin, Hang, OriginReply, OriginRequest, RawServer, pattern_bytes, wait_for

pytestmark = pytest.mark.e2e

CACHED_IP = "127.0.0.4"
TIMEOUT = 2
FILE = pattern_bytes(2 * 1024 * 1024 + 5, seed=3)  # over 1 MiB: answered through the relay


def client(proxy: Proxy) -> httpx.Client:
    return httpx.Client(proxy=proxy.url, trust_env=False, timeout=30)


def accepted(request: OriginRequest) -> OriginReply:
    return OriginReply(body=b"got " + request.body, headers={"Content-Type": "text/plain", "X-Seen": "yes"})


def with_cookie(request: OriginRequest) -> OriginReply:
    return OriginReply(body=b"{}", headers={"Content-Type": "application/json", "Set-Cookie": "s=1; Path=/"})


@pytest.fixture
def origin() -> Iterator[FakeOrigin]:
    server = FakeOrigin(CACHED_IP)
    server.routes["/upload"] = accepted
    server.routes["/pkg.json"] = with_cookie
    server.routes["/files/pkg-1.0.tar.gz"] = lambda r: OriginReply(body=FILE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_other_methods_reach_the_upstream_with_their_body(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_hosts=[CACHED_IP])
    with client(proxy) as http:
        response = http.post(f"{origin.url}/upload", content=b"payload", headers={"X-Client": "c"})
        assert (response.status_code, response.content) == (200, b"got payload"), proxy.log_tail()
        assert response.headers.get("x-seen") == "yes"
        assert response.headers.get("x-cache") == "MISS"
        assert response.headers.get("x-cache-detail") == "not cacheable: method POST"
        assert http.post(f"{origin.url}/upload", content=b"again").content == b"got again"  # never cached
    [first, second] = [r for r in origin.requests if r.method == "POST"]
    assert (first.body, first.headers.get("x-client"), second.body) == (b"payload", "c", b"again")


def test_forwarded_bodies_and_relayed_answers_share_a_keep_alive_connection(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    """A forwarded PUT's answer and a large hit both come through the relay, on one connection from
    mitmproxy: the PUT's body, already sent upstream, must not reach the relay as the next request."""
    proxy = proxy_factory(cache_hosts=[CACHED_IP])
    big = f"{origin.url}/files/pkg-1.0.tar.gz"
    with client(proxy) as http:
        assert http.get(big).content == FILE  # cached now
        for body in (b'{"name": "x", "versions": {}}', b"second upload " * 100):
            response = http.put(f"{origin.url}/upload", content=body)
            assert (response.status_code, response.content) == (200, b"got " + body), proxy.log_tail()
            hit = http.get(big)
            assert (hit.status_code, hit.headers.get("x-cache"), hit.content) == (200, "HIT", FILE)


def test_a_range_of_something_not_cached_is_forwarded_and_not_stored(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_hosts=[CACHED_IP])
    url = f"{origin.url}/files/pkg-1.0.tar.gz"
    status, headers, body = fetch(proxy, url, {"Range": "bytes=0-99"})
    # The fake origin ignores Range: whatever the upstream answered is passed on, and not stored.
    assert (status, body) == (200, FILE)
    assert headers.get("x-cache-detail") == "range request: passed to the upstream, not stored"
    status, headers, body = fetch(proxy, url)
    assert (status, headers.get("x-cache"), body) == (200, "MISS", FILE)
    status, headers, body = fetch(proxy, url, {"Range": "bytes=0-99"})
    assert (status, headers.get("x-cache"), body) == (206, "HIT", FILE[:100])


def test_set_cookie_reaches_the_client_that_asked_and_is_never_stored(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_hosts=[CACHED_IP])
    status, headers, _ = fetch(proxy, f"{origin.url}/pkg.json")
    assert (status, headers.get("x-cache"), headers.get("set-cookie")) == (200, "MISS", "s=1; Path=/")
    status, headers, _ = fetch(proxy, f"{origin.url}/pkg.json")
    assert (status, headers.get("x-cache"), headers.get("set-cookie")) == (200, "HIT", None)


def test_a_hanging_upstream_costs_one_timeout_then_fails_fast(proxy_factory: ProxyFactory) -> None:
    hang = Hang()
    server = RawServer(hang, ip=CACHED_IP).start()
    try:
        proxy = proxy_factory(cache_hosts=[CACHED_IP], cache_upstream_timeout=TIMEOUT)
        url = f"http://{CACHED_IP}:{server.port}/-/npm/v1/security/advisories/bulk"
        with client(proxy) as http:
            start = time.monotonic()
            response = http.post(url, content=b"{}")
            took = time.monotonic() - start
            assert response.status_code == 504, (response, proxy.log_tail())
            assert response.headers.get("x-cache-detail") == "upstream timed out"
            assert TIMEOUT - 0.5 < took < TIMEOUT + 5, took
            # The origin is in back-off now: not tried at all, answered at once.
            start = time.monotonic()
            again = http.post(url, content=b"{}")
            assert again.status_code == 503 and time.monotonic() - start < TIMEOUT
            ranged = http.get(url.replace("-/npm", "files"), headers={"Range": "bytes=0-9"})
            assert ranged.status_code == 503 and time.monotonic() - start < TIMEOUT
        # The clients were answered at once; the GET (a cacheable URL, the POST is not) set off the one
        # background probe of the origin that back-off allows, which reaches it when its task runs.
        assert wait_for(lambda: hang.requests >= 2, TIMEOUT), hang.requests
        time.sleep(0.5)
        assert hang.requests == 2
    finally:
        server.stop()
