"""Request targets the addon's HTTP client cannot send (a NUL byte in the query, a 70,000-byte path) are
answered by the addon itself, with X-Cache and one log line: never a traceback, and never mitmproxy
forwarding the request on its own (which would skip the cache's timeouts and an endpoint's link rewriting)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .clients import Proxy, ProxyFactory
from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, raw_exchange

pytestmark = pytest.mark.e2e

ORIGIN_IP = "127.0.0.4"
INDEX = b'<html><body><a href="http://127.0.0.4/files/six-1.0.tar.gz">six-1.0.tar.gz</a></body></html>\n'
TARGETS = {
    "nul-in-query": "/simple/six/?\x00",
    "70000-byte-path": "/simple/" + "p" * 70_000,
}


def index(request: OriginRequest) -> OriginReply:
    return OriginReply(body=INDEX, headers={"Content-Type": "text/html"})


@pytest.fixture
def origin() -> Iterator[FakeOrigin]:
    server = FakeOrigin(ORIGIN_IP)
    server.routes["/simple/six/"] = index
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start(proxy_factory: ProxyFactory, origin: FakeOrigin) -> Proxy:
    return proxy_factory(cache_hosts=[ORIGIN_IP], endpoints=[origin.url], cache_upstream_timeout=2)


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("door", ["forward-proxy", "endpoint"])
def test_a_url_no_client_can_mean_is_answered_by_the_addon(
    origin: FakeOrigin, proxy_factory: ProxyFactory, target: str, door: str
) -> None:
    proxy = start(proxy_factory, origin)
    path = TARGETS[target]
    if door == "forward-proxy":
        port, request_target, host = proxy.port, f"{origin.url}{path}", f"{origin.ip}:{origin.port}"
    else:
        port = int(proxy.endpoint().rsplit(":", 1)[1])
        request_target, host = path, f"127.0.0.1:{port}"
    mark = proxy.log_size()

    result = raw_exchange(port, f"GET {request_target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), timeout=15)

    assert result.status is not None and 400 <= result.status < 600, (result, proxy.log_tail())
    assert b"\r\nx-cache:" in result.head.lower(), result.head[:2000]
    assert b"six-1.0.tar.gz" not in result.body  # not the upstream's document
    assert origin.accepted == 0 and origin.requests == [], origin.requests
    log = proxy.log_text(mark)
    assert "Traceback" not in log and "Addon error" not in log, log[-5000:]
    # The same door serves the document when it is asked for properly: the origin was there to be reached.
    proper = f"{origin.url}/simple/six/" if door == "forward-proxy" else "/simple/six/"
    fine = raw_exchange(port, f"GET {proper} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert fine.status == 200 and b"\r\nx-cache: miss" in fine.head.lower(), (fine, proxy.log_tail())
