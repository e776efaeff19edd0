"""Regression tests of the review fixes: refused uploads never leave, endpoint credentials stay with the
endpoint's host, documents are never sliced on an endpoint, upstream header bytes survive, HEAD reports the
real length, 429 is an outage, and an abandoned download releases its upstream connection."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from .clients import ProxyFactory, fetch, fetch_direct
from .fakeorigin import (
    FakeOrigin,
    OriginReply,
    OriginRequest,
    RawServer,
    pattern_bytes,
    raw_exchange,
    read_request_head,
)
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

CACHED_IP, OTHER_IP = "127.0.0.4", "127.0.0.5"  # plain-HTTP origins: in cache_hosts, and not
ALLOWED, REFUSED = "127.0.0.1", "127.0.0.2"  # client source addresses
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
UPLOAD_SIZE = 2 * 1024 * 1024  # over the addon's stream_large_bodies=1m: mitmproxy streams it


def get(target: str, host: str = "") -> bytes:
    """A GET request in absolute form; Host defaults to the target's authority."""
    host = host or target.split("/")[2]
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()


def header_block(head: bytes) -> dict[bytes, bytes]:
    """The response head's fields as raw bytes (lower-cased names), the status line left out."""
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return fields


# --- 1. a refused upload never leaves -----------------------------------------------------------------------


def uploaded(request: OriginRequest) -> OriginReply:
    return OriginReply(body=b"upload accepted\n", headers={"Content-Type": "text/plain"})


@pytest.fixture
def upload_origin() -> Iterator[FakeOrigin]:
    """A plain-HTTP origin outside cache_hosts that accepts uploads."""
    origin = FakeOrigin(OTHER_IP)
    origin.routes["/upload"] = uploaded
    origin.start()
    try:
        yield origin
    finally:
        origin.stop()


def chunked(body: bytes, size: int = 64 * 1024) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("refused", ["client", "destination"])
def test_a_refused_large_upload_never_reaches_the_upstream(
    upload_origin: FakeOrigin, proxy_factory: ProxyFactory, refused: str, framing: str
) -> None:
    # A chunked body has no announced size: mitmproxy switches it to streaming midway, with no new hook.
    if refused == "client":
        proxy = proxy_factory(cache_allow_clients="127.0.0.1/32")
        source = REFUSED
    else:
        proxy = proxy_factory(cache_strict_hosts=True, cache_hosts=[CACHED_IP])
        source = ALLOWED
    url = f"{upload_origin.url}/upload"
    body = pattern_bytes(UPLOAD_SIZE)
    framing_field = (
        f"Content-Length: {UPLOAD_SIZE}" if framing == "content-length" else "Transfer-Encoding: chunked"
    )
    request = (
        f"POST {url} HTTP/1.1\r\nHost: {upload_origin.ip}:{upload_origin.port}\r\n"
        f"Content-Type: application/octet-stream\r\n{framing_field}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + (body if framing == "content-length" else chunked(body))

    result = raw_exchange(proxy.port, request, source=source)
    assert result.status == 403, (result, proxy.log_tail())
    assert b"upload accepted" not in result.body
    # Whatever the proxy might still be sending has had ample time to arrive.
    time.sleep(1.0)
    assert (upload_origin.accepted, upload_origin.requests) == (0, []), proxy.log_tail()


# --- 2. endpoint credentials stay with the endpoint's host --------------------------------------------------


def test_endpoint_credentials_are_not_forwarded_to_other_hosts(
    registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    endpoint = proxy.endpoint()
    credential = "Basic " + base64.b64encode(b"builder:s3cret-for-the-index").decode()
    wheel = registry.wheel("alpha")

    status, _, _ = fetch_direct(f"{endpoint}/simple/alpha/", {"Authorization": credential})
    assert status == 200, proxy.log_tail()
    routed = f"{endpoint}/_cacheaddon/https/{registry.files.ip}:{registry.files.port}"
    status, _, body = fetch_direct(f"{routed}/packages/{wheel.filename}", {"Authorization": credential})
    assert (status, body) == (200, wheel.data), proxy.log_tail()

    index_seen = [r.headers.get("authorization") for r in registry.index.requests]
    files_seen = [(r.path, r.headers.get("authorization")) for r in registry.files.requests]
    assert index_seen == [credential]
    assert files_seen == [(f"/packages/{wheel.filename}", None)]


# --- 3. Range on an endpoint: documents whole, files sliced -------------------------------------------------


def test_a_range_on_an_endpoint_document_gets_the_whole_rewritten_document(
    registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    endpoint = proxy.endpoint()
    routed = f"{endpoint}/_cacheaddon/https/{registry.files.ip}:{registry.files.port}"
    ranged = {"Accept": PIP_ACCEPT, "Range": "bytes=0-60"}

    def check_rewritten(status: int, headers: httpx.Headers, body: bytes, outcome: str) -> None:
        assert (status, headers.get("x-cache")) == (200, outcome), (status, headers, body[:200])
        assert "content-range" not in headers
        assert routed.encode() in body and registry.files.url.encode() not in body, body[:400]

    # Cached first, then asked with a Range: never a slice of the stored original.
    status, headers, whole = fetch_direct(f"{endpoint}/simple/golf/", {"Accept": PIP_ACCEPT})
    check_rewritten(status, headers, whole, "MISS")
    status, headers, body = fetch_direct(f"{endpoint}/simple/golf/", ranged)
    check_rewritten(status, headers, body, "HIT")
    assert body == whole
    # Not cached yet, asked with a Range: fetched whole, rewritten (not passed through as the original).
    status, headers, body = fetch_direct(f"{endpoint}/simple/alpha/", ranged)
    check_rewritten(status, headers, body, "MISS")

    wheel = registry.wheel("charlie")
    link = f"{routed}/packages/{wheel.filename}"
    status, headers, body = fetch_direct(link)
    assert (status, headers.get("x-cache"), body) == (200, "MISS", wheel.data)
    registry.clear_requests()
    status, headers, body = fetch_direct(link, {"Range": "bytes=0-60"})
    assert (status, headers.get("x-cache"), body) == (206, "HIT", wheel.data[:61])
    assert headers["content-range"] == f"bytes 0-60/{len(wheel.data)}"
    assert registry.requests == []


# --- 4. header bytes outside Latin-1 ------------------------------------------------------------------------

DISPOSITION = 'attachment; filename="文.tgz"'.encode()


class RawFileOrigin:
    """A RawServer behaviour: answers every request with one body and a UTF-8 Content-Disposition."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0

    def __call__(self, conn: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            head = read_request_head(conn)
            if b"\r\n\r\n" not in head:
                return
            self.requests += 1
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Disposition: " + DISPOSITION + b"\r\n"
                b"Content-Length: " + str(len(self.body)).encode() + b"\r\n\r\n"
            )
            if not head.startswith(b"HEAD "):
                conn.sendall(self.body)


@pytest.mark.parametrize("size", [1000, 2 * 1024 * 1024 + 1], ids=["inline", "relayed"])
def test_a_non_latin1_upstream_header_survives_miss_hit_and_stale(
    proxy_factory: ProxyFactory, size: int
) -> None:
    body = pattern_bytes(size, seed=4)
    behaviour = RawFileOrigin(body)
    server = RawServer(behaviour, ip=CACHED_IP).start()
    try:
        proxy = proxy_factory(cache_hosts=[CACHED_IP], cache_ttl=1, cache_upstream_timeout=2)
        request = get(f"http://{CACHED_IP}:{server.port}/files/archive.bin")

        for outcome in ("MISS", "HIT"):
            result = raw_exchange(proxy.port, request)
            fields = header_block(result.head)
            assert (result.status, fields.get(b"x-cache")) == (200, outcome.encode()), (
                result.head,
                proxy.log_tail(),
            )
            assert result.body == body
            assert fields.get(b"content-disposition") == DISPOSITION
        assert behaviour.requests == 1
    finally:
        server.stop()

    time.sleep(1.5)  # stale now, and the upstream is gone: the entry must still be servable
    result = raw_exchange(proxy.port, request)
    fields = header_block(result.head)
    assert (result.status, fields.get(b"x-cache")) == (200, b"STALE"), (result.head, proxy.log_tail())
    assert result.body == body
    assert fields.get(b"content-disposition") == DISPOSITION


# --- 5. HEAD on a miss --------------------------------------------------------------------------------------


def test_head_on_a_miss_reports_the_upstream_length(
    registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    wheel = registry.wheel("delta")
    url = registry.file_url(wheel.filename)
    verify = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx.Client(proxy=proxy.url, verify=verify, trust_env=False, timeout=30) as client:
        response = client.head(url)
    assert response.status_code == 200, proxy.log_tail()
    assert response.headers.get("x-cache") == "MISS"
    assert response.headers.get("content-length") == str(len(wheel.data))
    assert response.content == b""

    status, headers, body = fetch(proxy, url)
    assert (status, body) == (200, wheel.data)
    assert headers.get("content-length") == str(len(wheel.data))


# --- 6. 429 is an outage ------------------------------------------------------------------------------------


def test_429_is_answered_from_the_stale_entry(proxy_factory: ProxyFactory) -> None:
    page = b"<html><body><a href='/files/x-1.0.tar.gz'>x-1.0.tar.gz</a></body></html>\n"
    rate_limited = threading.Event()

    def index(request: OriginRequest) -> OriginReply:
        if rate_limited.is_set():
            return OriginReply(429, b"slow down\n", {"Content-Type": "text/plain", "Retry-After": "60"})
        return OriginReply(body=page, headers={"Content-Type": "text/html"})

    origin = FakeOrigin(CACHED_IP)
    origin.routes["/simple/x/"] = index
    origin.start()
    try:
        proxy = proxy_factory(cache_hosts=[CACHED_IP], cache_ttl=1)
        url = f"{origin.url}/simple/x/"
        status, headers, body = fetch(proxy, url)
        assert (status, headers.get("x-cache"), body) == (200, "MISS", page)
        time.sleep(1.5)
        rate_limited.set()
        status, headers, body = fetch(proxy, url)
        assert (status, headers.get("x-cache"), body) == (200, "STALE", page), proxy.log_tail()
        assert len(origin.paths()) == 2, "the stale entry was served without asking the origin"
    finally:
        origin.stop()


# --- 7. an abandoned download releases its upstream ---------------------------------------------------------

BIG = 20 * 1024 * 1024
TRICKLE_CHUNK = 64 * 1024
TRICKLE_INTERVAL = 0.05  # 20 MiB take ~16 s: an abandoned download cannot be mistaken for a finished one


class Trickle:
    """A RawServer behaviour: answers with BIG bytes sent slowly, and records how the sending ended."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.outcome = ""
        self.sent = 0
        self.started = threading.Event()

    def __call__(self, conn: socket.socket, stopping: threading.Event) -> None:
        try:
            read_request_head(conn)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: " + str(BIG).encode() + b"\r\n\r\n"
            )
            self.started.set()
            chunk = b"\0" * TRICKLE_CHUNK
            while self.sent < BIG and not stopping.is_set():
                conn.sendall(chunk)
                self.sent += len(chunk)
                time.sleep(TRICKLE_INTERVAL)
            self.outcome = "complete" if self.sent >= BIG else "stopped"
        except TimeoutError:
            self.outcome = "timed out: the proxy stopped reading but kept the connection"
        except OSError as exc:
            self.outcome = f"closed: {type(exc).__name__}"
        finally:
            self.ended.set()


def read_some(sock: socket.socket, enough: int, timeout: float) -> bytes:
    """Reads from sock until `enough` bytes of body follow the response head (or timeout / EOF)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and len(body) >= enough:
            break
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.slow
def test_an_abandoned_download_releases_its_upstream_connection(proxy_factory: ProxyFactory) -> None:
    trickle = Trickle()
    server = RawServer(trickle, ip=CACHED_IP).start()
    try:
        proxy = proxy_factory(cache_hosts=[CACHED_IP], cache_max_object_size="100m")
        url = f"http://{CACHED_IP}:{server.port}/files/big.bin"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(get(url))
            data = read_some(sock, 128 * 1024, timeout=10)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), (data[:300], proxy.log_tail())
            assert len(body) >= 128 * 1024, (len(body), proxy.log_tail())
        left_at = time.monotonic()
        assert trickle.ended.wait(10.0), (
            f"the origin was still sending {time.monotonic() - left_at:.1f}s after the client left "
            f"({trickle.sent} of {BIG} bytes)\n{proxy.log_tail()}"
        )
        assert trickle.outcome.startswith("closed"), (trickle.outcome, trickle.sent)
        assert trickle.sent < BIG
    finally:
        server.stop()


# --- 8. a large request head and the relay ------------------------------------------------------------------


def test_a_large_request_head_does_not_stop_a_relayed_answer(proxy_factory: ProxyFactory) -> None:
    """Large answers go through the relay; the client's own head (70 KB of fields here) must not go with
    them: the relay would refuse it, and the upstream connection the job holds would be kept waiting."""
    body = pattern_bytes(2 * 1024 * 1024 + 1, seed=9)
    origin = FakeOrigin(CACHED_IP)
    origin.routes["/files/big.bin"] = lambda request: OriginReply(body=body)
    origin.start()
    try:
        proxy = proxy_factory(cache_hosts=[CACHED_IP])
        padding = {f"X-Pad-{i}": "p" * 1000 for i in range(70)}
        for outcome in ("MISS", "HIT"):
            status, headers, got = fetch(proxy, f"{origin.url}/files/big.bin", padding)
            assert (status, headers.get("x-cache"), got == body) == (200, outcome, True), proxy.log_tail()
        assert origin.requests[0].headers.get("x-pad-69") == "p" * 1000  # the upstream got them all
    finally:
        origin.stop()
