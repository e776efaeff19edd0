"""The forward proxy and the registry endpoints share one cache entry per URL: a wheel fetched one way is a
HIT the other way, in either order, and an index page cached by one is served (rewritten or not) to the
other."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable

import pytest

from .clients import Proxy, ProxyFactory, fetch, fetch_direct, free_port
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
# How a client reaches the files host's wheel: through the forward proxy (HTTPS_PROXY style), through the
# index host's endpoint by a rewritten link (/_cacheaddon/https/host:port/...), or at the root of an endpoint
# whose upstream is the files host itself.
WAYS = ("forward", "routed", "root")
Get = Callable[[str], tuple[int, dict[str, str], bytes]]


def getter(way: str, proxy: Proxy, registry: FakeRegistry) -> Get:
    files = registry.files

    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        if way == "forward":
            status, headers, body = fetch(proxy, files.url + path)
        elif way == "routed":
            routed = f"/_cacheaddon/https/{files.ip}:{files.port}"
            status, headers, body = fetch_direct(proxy.endpoint(registry.index.url) + routed + path)
        else:
            status, headers, body = fetch_direct(proxy.endpoint(files.url) + path)
        return status, dict(headers), body

    return get


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(WAYS, 2)))
def test_a_wheel_is_one_cache_entry_for_the_proxy_and_the_endpoints(
    registry: FakeRegistry, proxy_factory: ProxyFactory, first: str, second: str
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url, registry.files.url])
    wheel = registry.wheel("delta")
    path = f"/packages/{wheel.filename}"

    status, headers, body = getter(first, proxy, registry)(path)
    assert (status, headers.get("x-cache"), body) == (200, "MISS", wheel.data), proxy.log_tail()
    registry.clear_requests()
    status, headers, body = getter(second, proxy, registry)(path)
    assert (status, headers.get("x-cache"), body) == (200, "HIT", wheel.data), proxy.log_tail()
    assert registry.requests == []
    assert [url for _, url in proxy.cache_log()] == [registry.file_url(wheel.filename)] * 2


@pytest.mark.parametrize("endpoint_first", [True, False], ids=["endpoint-first", "forward-first"])
def test_an_index_page_is_one_cache_entry_served_rewritten_only_through_the_endpoint(
    registry: FakeRegistry, proxy_factory: ProxyFactory, endpoint_first: bool
) -> None:
    # Spelled as mitmproxy modes this time: the forward proxy plus one reverse listener.
    proxy = proxy_factory(modes=["regular", f"reverse:{registry.index.url}@{free_port()}"])
    headers = {"Accept": PIP_ACCEPT}
    endpoint_page = proxy.endpoint() + "/simple/golf/"
    forward_page = registry.pypi_url + "golf/"
    routed = f"{proxy.endpoint()}/_cacheaddon/https/{registry.files.ip}:{registry.files.port}"

    def through_endpoint() -> tuple[int, str | None, bytes]:
        status, h, body = fetch_direct(endpoint_page, headers)
        return status, h.get("x-cache"), body

    def through_proxy() -> tuple[int, str | None, bytes]:
        status, h, body = fetch(proxy, forward_page, headers)
        return status, h.get("x-cache"), body

    order = [through_endpoint, through_proxy] if endpoint_first else [through_proxy, through_endpoint]
    results = {fn.__name__: fn() for fn in order}
    assert [results[fn.__name__][:2] for fn in order] == [(200, "MISS"), (200, "HIT")]
    original = results["through_proxy"][2]
    assert registry.files.url.encode() in original  # the forward proxy gets the document as published
    assert results["through_endpoint"][2] == original.replace(registry.files.url.encode(), routed.encode())
    assert [p for p in registry.paths() if p.startswith("/simple/")] == ["/simple/golf/"]


def _read_head(sock: socket.socket, buffered: bytes) -> tuple[bytes, bytes]:
    """One response head (status line and fields) from the connection, and the bytes that followed it."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffered += chunk
    head, _, rest = buffered.partition(b"\r\n\r\n")
    return head, rest


def test_an_error_answer_to_head_has_no_body(registry: FakeRegistry, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    registry.stop()
    port = int(proxy.endpoint().rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"HEAD /simple/alpha/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, rest = _read_head(sock, b"")
        assert head.split(b" ", 2)[1] in (b"502", b"504"), head
        sock.sendall(b"GET /simple/bravo/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        second, _ = _read_head(sock, rest)
    assert second.startswith(b"HTTP/1.1 "), f"bytes after the HEAD response: {second[:120]!r}"
