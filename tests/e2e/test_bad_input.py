"""Garbage from a client or from an upstream gets an error or a closed connection, quickly, and breaks
nothing: afterwards the proxy still serves what it had cached, with the right bytes."""

from __future__ import annotations

import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .clients import Proxy, ProxyFactory, fetch
from .fakeorigin import (
    FakeOrigin,
    OriginReply,
    OriginRequest,
    RawServer,
    alive,
    raw_exchange,
    read_request_head,
    sha256,
)
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

ORIGIN_IP, GARBAGE_IP = "127.0.0.4", "127.0.0.5"  # both in cache_hosts
UPSTREAM_TIMEOUT = 2
QUICK = 15.0  # seconds within which every bad exchange must be over
MIB = 1024 * 1024


def doc(request: OriginRequest) -> OriginReply:
    return OriginReply(body=b"a plain document\n", headers={"Content-Type": "text/plain"})


@pytest.fixture
def origin() -> Iterator[FakeOrigin]:
    """A plain-HTTP origin on a cached host, for bad requests that need a real destination."""
    server = FakeOrigin(ORIGIN_IP)
    server.routes["/doc"] = doc
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Warm:
    """Entries cached before the bad input, and their sha256: each must still be a HIT afterwards."""

    def __init__(self, proxy: Proxy, registry: FakeRegistry) -> None:
        self.proxy = proxy
        registry.add_blob("/blobs/keep.bin", 3 * MIB)  # a body file, served through the relay
        self.expected = {
            f"{registry.pypi_url}alpha/": "",
            registry.file_url(registry.wheel("alpha").filename): sha256(registry.wheel("alpha").data),
            registry.blob_url("/blobs/keep.bin"): registry.blob_sha256("/blobs/keep.bin"),
        }
        for url in self.expected:
            status, headers, body = fetch(proxy, url)
            assert (status, headers.get("x-cache")) == (200, "MISS"), url
            self.expected[url] = self.expected[url] or sha256(body)

    def check(self) -> None:
        assert alive(self.proxy.port), f"the proxy stopped listening\n{self.proxy.log_tail()}"
        assert self.proxy.proc is not None and self.proxy.proc.poll() is None, self.proxy.log_tail()
        for url, digest in self.expected.items():
            status, headers, body = fetch(self.proxy, url)
            assert (status, headers.get("x-cache"), sha256(body)) == (200, "HIT", digest), url


def start_proxy(proxy_factory: ProxyFactory, registry: FakeRegistry) -> Proxy:
    return proxy_factory(
        cache_hosts=[registry.index.ip, registry.files.ip, ORIGIN_IP, GARBAGE_IP],
        cache_upstream_timeout=UPSTREAM_TIMEOUT,
    )


# --- bad requests from a client -----------------------------------------------------------------------------


def bad_requests(origin: FakeOrigin) -> dict[str, bytes]:
    target = f"http://{origin.ip}:{origin.port}"
    host = f"Host: {origin.ip}:{origin.port}\r\n"
    post = f"POST {target}/nothing HTTP/1.1\r\n{host}"
    bad_port = f"{origin.ip}:99999"
    return {
        "not-http": b"THIS IS NOT HTTP AT ALL\r\n\r\n",
        "binary": random.Random(1).randbytes(8192) + b"\r\n\r\n",  # a complete head: nothing left to wait for
        "bad-version": f"GET {target}/doc HTTX/1.1\r\n{host}\r\n".encode(),
        "no-version": f"GET {target}/doc\r\n{host}\r\n".encode(),
        "origin-form-to-proxy": b"GET /doc HTTP/1.1\r\n\r\n",
        "no-host-in-url": b"GET http:///doc HTTP/1.1\r\n\r\n",
        "port-out-of-range": f"GET http://{bad_port}/doc HTTP/1.1\r\nHost: {bad_port}\r\n\r\n".encode(),
        "nul-in-path": f"GET {target}/do\x00c HTTP/1.1\r\n{host}\r\n".encode(),
        "space-in-path": f"GET {target}/a b/c HTTP/1.1\r\n{host}\r\n".encode(),
        "bad-escapes": f"GET {target}/%zz%/%%/../../etc/passwd HTTP/1.1\r\n{host}\r\n".encode(),
        "header-without-colon": f"GET {target}/nothing HTTP/1.1\r\n{host}this is no header\r\n\r\n".encode(),
        "1mib-header-value": f"GET {target}/nothing HTTP/1.1\r\n{host}X-Big: {'a' * MIB}\r\n\r\n".encode(),
        "1mib-path": f"GET {target}/{'p' * MIB} HTTP/1.1\r\n{host}\r\n".encode(),
        "10k-headers": (
            f"GET {target}/nothing HTTP/1.1\r\n{host}".encode()
            + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
            + b"\r\n"
        ),
        "negative-content-length": f"{post}Content-Length: -1\r\n\r\n".encode(),
        "double-content-length": f"{post}Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".encode(),
        "length-and-chunked": (
            f"{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n0\r\n\r\n".encode()
        ),
        "bad-chunk-size": f"{post}Transfer-Encoding: chunked\r\n\r\nxyz\r\n".encode(),
        "connect-without-port": b"CONNECT not-a-host HTTP/1.1\r\n\r\n",
        "connect-bad-port": b"CONNECT 127.0.0.2:0 HTTP/1.1\r\n\r\n",
    }


@pytest.mark.slow
def test_bad_requests_get_an_error_and_break_nothing(
    registry: FakeRegistry, origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    proxy = start_proxy(proxy_factory, registry)
    warm = Warm(proxy, registry)
    for case, data in bad_requests(origin).items():
        result = raw_exchange(proxy.port, data, timeout=QUICK)
        assert result.refused_or_error and result.elapsed < QUICK, (case, result)
        try:
            warm.check()
        except AssertionError as exc:
            raise AssertionError(f"after {case!r}: {exc}") from exc


@pytest.mark.parametrize(
    "case",
    ["not-http", "1mib-header-value", "nul-in-path", "length-and-chunked"],
)
def test_bad_request_inside_a_tunnel_to_a_cached_host(
    registry: FakeRegistry, proxy_factory: ProxyFactory, case: str
) -> None:
    proxy = start_proxy(proxy_factory, registry)
    warm = Warm(proxy, registry)
    host = f"Host: {registry.index.ip}:{registry.index.port}\r\n"
    data = {
        "not-http": b"THIS IS NOT HTTP AT ALL\r\n\r\n",
        "1mib-header-value": f"GET /simple/alpha/ HTTP/1.1\r\n{host}X-Big: {'a' * MIB}\r\n\r\n".encode(),
        "nul-in-path": f"GET /simple/al\x00pha/ HTTP/1.1\r\n{host}\r\n".encode(),
        "length-and-chunked": (
            f"POST /simple/alpha/ HTTP/1.1\r\n{host}Content-Length: 4\r\n"
            "Transfer-Encoding: chunked\r\n\r\nzzzz\r\n0\r\n\r\n".encode()
        ),
    }[case]
    result = raw_exchange(
        proxy.port, data, timeout=QUICK, tunnel=(registry.index.ip, registry.index.port), cafile=proxy.bundle
    )
    assert result.refused_or_error, result
    assert result.elapsed < QUICK
    warm.check()


@pytest.mark.parametrize(
    "shape",
    [
        "one-1mib-value",
        pytest.param(
            "80k-small-fields",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_absurd_header_block_does_not_stall_other_clients(
    registry: FakeRegistry, origin: FakeOrigin, proxy_factory: ProxyFactory, shape: str
) -> None:
    proxy = start_proxy(proxy_factory, registry)
    warm = Warm(proxy, registry)
    if shape == "one-1mib-value":
        fields = b"X-Big: " + b"a" * MIB + b"\r\n"
    else:
        fields = b"".join(b"X-H%05d: v\r\n" % i for i in range(80_000))
    request = f"GET {origin.url}/nothing HTTP/1.1\r\nHost: {origin.ip}:{origin.port}\r\n".encode()
    results = []
    absurd = threading.Thread(
        target=lambda: results.append(raw_exchange(proxy.port, request + fields + b"\r\n", timeout=QUICK)),
        daemon=True,
    )
    absurd.start()
    time.sleep(1.0)  # the absurd request is in the proxy's hands

    url = next(iter(warm.expected))
    started = time.monotonic()
    try:
        status, headers, body = fetch(proxy, url, timeout=5)
    except httpx.TimeoutException:
        status, headers, body = 0, httpx.Headers(), b""
    assert (status, headers.get("x-cache"), sha256(body)) == (200, "HIT", warm.expected[url]), (
        f"a cached request waited {time.monotonic() - started:.1f}s behind the absurd one"
    )
    absurd.join(QUICK + 5)
    assert results and results[0].refused_or_error, results
    warm.check()


# --- an upstream on a cached host that does not speak HTTP --------------------------------------------------


def junk_then_close(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n" + random.Random(2).randbytes(4096))


def close_at_once(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)


def partial_status_then_hang(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 2")
    stopping.wait(30)


def bad_status_line(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 abc Whatever\r\nContent-Length: 5\r\n\r\nhello")


def bad_content_length(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\nContent-Length: 7\r\n\r\nabcdefg")


def endless_headers(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    deadline = time.monotonic() + 30
    while not stopping.is_set() and time.monotonic() < deadline:
        conn.sendall(b"X-Junk: " + b"j" * 8000 + b"\r\n")


def short_body(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\nonly this")


BEHAVIOURS: dict[str, Callable[..., None]] = {
    "junk-then-close": junk_then_close,
    "close-at-once": close_at_once,
    "partial-status-then-hang": partial_status_then_hang,
    "bad-status-line": bad_status_line,
    "bad-content-length": bad_content_length,
    "endless-headers": endless_headers,
    "short-body": short_body,
}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_garbage_from_a_cached_upstream_is_an_error_and_never_cached(
    registry: FakeRegistry, proxy_factory: ProxyFactory, scheme: str
) -> None:
    proxy = start_proxy(proxy_factory, registry)
    warm = Warm(proxy, registry)
    for name, behaviour in BEHAVIOURS.items():
        server = RawServer(behaviour, GARBAGE_IP).start()
        try:
            url = f"{scheme}://{GARBAGE_IP}:{server.port}/simple/{name}/"
            for attempt in (1, 2):
                started = time.monotonic()
                try:
                    status, headers, body = fetch(proxy, url, timeout=QUICK)
                except httpx.TransportError:
                    status, headers, body = 0, httpx.Headers(), b""  # closed: acceptable
                assert time.monotonic() - started < QUICK, name
                assert status == 0 or status >= 500, (name, attempt, status, body[:200])
                assert headers.get("x-cache") != "HIT", f"{name}: garbage was cached"
            assert server.accepted >= 1, name
        finally:
            server.stop()
        try:
            warm.check()
        except AssertionError as exc:
            raise AssertionError(f"after {name!r}: {exc}") from exc


# --- many distinct URLs -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_many_distinct_misses_break_nothing(registry: FakeRegistry, proxy_factory: ProxyFactory) -> None:
    proxy = start_proxy(proxy_factory, registry)
    warm = Warm(proxy, registry)
    names = [f"zz-{random.Random(i).getrandbits(64):016x}" for i in range(300)]
    verify = ssl.create_default_context(cafile=str(proxy.bundle))
    local = threading.local()
    clients: list[httpx.Client] = []

    def get(name: str) -> tuple[int, str | None]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(proxy=proxy.url, verify=verify, trust_env=False, timeout=QUICK)
            clients.append(local.client)
        response = local.client.get(f"{registry.pypi_url}{name}/")
        return response.status_code, response.headers.get("x-cache")

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(get, names))
            again = list(pool.map(get, names[:20]))
    finally:
        for client in clients:
            client.close()
    assert time.monotonic() - started < 120, "300 small misses took over two minutes"
    assert first == [(404, "MISS")] * len(names)
    assert again == [(404, "HIT")] * 20  # 404s are cached for cache_negative_ttl
    warm.check()
