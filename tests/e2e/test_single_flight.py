"""Concurrent misses (and revalidations) of one URL make one upstream request, in one mitmdump and across
two sharing a cache_dir; a download that breaks off fails every waiter the same way (a cut connection, or
the stale entry), and one whose process is killed is taken over by the other process; clients that leave do
not disturb the others."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .clients import Proxy, ProxyFactory, fetch
from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, Stall, pattern_bytes, sha256, wait_for

pytestmark = pytest.mark.e2e

ORIGIN_IP = "127.0.0.4"
SIZE = 5 * 1024 * 1024
LATENCY = 0.2  # seconds the origin waits before it answers
WAIT = 30.0  # seconds any step of these tests may take
CLIENTS = 8
# What every client here sends: one cache key (another Accept-Encoding would be another key, another flight).
HEADERS = {"Accept": "*/*", "Accept-Encoding": "identity"}


@dataclass
class Result:
    status: int | None = None
    x_cache: str = ""
    detail: str = ""
    length: int | None = None  # Content-Length as announced
    body: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None

    @property
    def complete_looking(self) -> bool:
        """The client got a whole answer, as far as it can tell (no error, and the announced length)."""
        return self.error is None and (self.length is None or len(self.body) == self.length)


class Client(threading.Thread):
    """One GET through a proxy in the background; leaves after `leave_after` bytes when given."""

    def __init__(
        self, proxy: Proxy, url: str, start: threading.Barrier | None = None, leave_after: int | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.proxy, self.url, self.start_line, self.leave_after = proxy, url, start, leave_after
        self.headers: dict[str, str] = {}
        self.result = Result()

    @property
    def received(self) -> int:
        return len(self.result.body)

    def run(self) -> None:
        result = self.result
        try:
            if self.start_line is not None:
                self.start_line.wait(WAIT)
            with httpx.Client(proxy=self.proxy.url, trust_env=False, timeout=WAIT) as client:
                with client.stream("GET", self.url, headers=HEADERS | self.headers) as response:
                    result.status, result.x_cache = response.status_code, response.headers.get("x-cache", "")
                    result.detail = response.headers.get("x-cache-detail", "")
                    length = response.headers.get("content-length")
                    result.length = int(length) if length is not None else None
                    for chunk in response.iter_raw():
                        result.body += chunk
                        if self.leave_after is not None and len(result.body) >= self.leave_after:
                            return
        except BaseException as exc:  # noqa: BLE001 - a cut connection is an expected outcome here
            result.error = exc


class RawClient(threading.Thread):
    """A GET on a bare socket, which leave() shuts at any moment (even while it waits for bytes)."""

    def __init__(self, proxy: Proxy, url: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
        self.url = url
        self.received = 0

    def run(self) -> None:
        try:
            host = urlsplit(self.url).netloc
            fields = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
            self.sock.sendall(f"GET {self.url} HTTP/1.1\r\nHost: {host}\r\n{fields}\r\n".encode())
            while chunk := self.sock.recv(65536):
                self.received += len(chunk)
        except OSError:
            pass
        finally:
            self.sock.close()

    def leave(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def run_together(proxies: list[Proxy], url: str) -> list[Result]:
    """CLIENTS concurrent GETs of `url`, spread over `proxies`, started at the same moment."""
    start = threading.Barrier(CLIENTS)
    clients = [Client(proxies[i % len(proxies)], url, start) for i in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(WAIT)
        assert not client.is_alive(), "a client is still waiting"
    return [client.result for client in clients]


class Slow:
    """An origin route: LATENCY before the answer, then `data` in 64 KiB chunks, or only its first `cut`
    bytes before the connection drops; answers 304 to a matching If-None-Match."""

    def __init__(self, data: bytes, etag: str = '"v1"') -> None:
        self.data, self.etag = data, etag
        self.cut: int | None = None

    def __call__(self, request: OriginRequest) -> OriginReply:
        time.sleep(LATENCY)
        headers = {"ETag": self.etag}
        if request.headers.get("if-none-match") == self.etag:
            return OriginReply(304, headers=headers)
        return OriginReply(200, headers=headers, chunks=self.chunks, length=len(self.data))

    def chunks(self) -> Iterator[bytes]:
        end = len(self.data) if self.cut is None else self.cut
        for offset in range(0, end, 64 * 1024):
            yield self.data[offset : min(offset + 64 * 1024, end)]
        if self.cut is not None:
            raise ConnectionAbortedError("cut on purpose")  # the handler closes the connection


@pytest.fixture
def origin() -> Iterator[FakeOrigin]:
    server = FakeOrigin(ORIGIN_IP).start()
    try:
        yield server
    finally:
        server.stop()


def asked(origin: FakeOrigin, path: str) -> int:
    return origin.paths().count(path)


def test_concurrent_misses_make_one_upstream_request(origin: FakeOrigin, proxy_factory: ProxyFactory) -> None:
    data = pattern_bytes(SIZE, 1)
    origin.routes["/files/one-5m.tar.gz"] = Slow(data)
    proxy = proxy_factory(cache_hosts=[ORIGIN_IP])
    url = f"{origin.url}/files/one-5m.tar.gz"

    results = run_together([proxy], url)
    assert asked(origin, "/files/one-5m.tar.gz") == 1, proxy.log_tail()
    for result in results:
        assert result.error is None, f"{result.error!r}\n{proxy.log_tail()}"
        # A client the machine's load delays until the download has landed gets the stored entry.
        assert (result.status, result.x_cache) in ((200, "MISS"), (200, "HIT"))
        assert sha256(bytes(result.body)) == sha256(data)
    assert any(result.x_cache == "MISS" for result in results)
    status, headers, body = fetch(proxy, url)
    assert (status, headers["x-cache"], sha256(body)) == (200, "HIT", sha256(data))
    assert asked(origin, "/files/one-5m.tar.gz") == 1


def test_two_processes_on_one_cache_dir_make_one_upstream_request(
    tmp_path: Path, origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    data = pattern_bytes(SIZE, 2)
    origin.routes["/files/two-5m.tar.gz"] = Slow(data)
    shared = tmp_path / "shared-cache"
    first = proxy_factory(cache_hosts=[ORIGIN_IP], cache_dir=shared)
    second = proxy_factory(cache_hosts=[ORIGIN_IP], cache_dir=shared)
    url = f"{origin.url}/files/two-5m.tar.gz"

    results = run_together([first, second], url)
    logs = f"{first.log_tail()}\n---\n{second.log_tail()}"
    assert asked(origin, "/files/two-5m.tar.gz") == 1, logs
    for result in results:
        assert result.error is None, f"{result.error!r}\n{logs}"
        assert result.status == 200 and sha256(bytes(result.body)) == sha256(data)
    for proxy in (first, second):
        status, headers, body = fetch(proxy, url)
        assert (status, headers["x-cache"], sha256(body)) == (200, "HIT", sha256(data))


def test_a_body_cut_midway_cuts_every_waiter_and_stores_nothing(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    data = pattern_bytes(SIZE, 3)
    route = origin.routes["/files/cut-5m.tar.gz"] = Slow(data)
    route.cut = SIZE // 2
    proxy = proxy_factory(cache_hosts=[ORIGIN_IP], cache_upstream_backoff=0)
    url = f"{origin.url}/files/cut-5m.tar.gz"

    results = run_together([proxy], url)
    # A client the machine's load delays until the broken flight is gone fetches again (no back-off here),
    # as the owner of a flight of its own: one upstream request per owner, and the others joined.
    owners = sum(result.detail == "miss" for result in results)
    assert asked(origin, "/files/cut-5m.tar.gz") == owners, proxy.log_tail()
    assert any("joined a download in progress" in result.detail for result in results), proxy.log_tail()
    for result in results:
        assert not result.complete_looking, f"a client got {len(result.body)} bytes that looked complete"
        assert result.error is not None or result.status != 200

    route.cut = None
    status, headers, body = fetch(proxy, url)
    assert (status, headers["x-cache"], sha256(body)) == (200, "MISS", sha256(data)), "a cut body was stored"
    assert asked(origin, "/files/cut-5m.tar.gz") == owners + 1


def test_a_revalidation_cut_midway_serves_every_waiter_the_stale_entry(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    old = pattern_bytes(SIZE, 4)
    route = origin.routes["/simple/stale-5m/"] = Slow(old)
    proxy = proxy_factory(cache_hosts=[ORIGIN_IP], cache_ttl=1)
    url = f"{origin.url}/simple/stale-5m/"
    status, headers, body = fetch(proxy, url)
    assert (status, headers["x-cache"], body) == (200, "MISS", old)
    time.sleep(1.5)  # stale

    route.data, route.etag, route.cut = pattern_bytes(SIZE, 5), '"v2"', SIZE // 2
    results = run_together([proxy], url)
    # A client the machine's load delays until the flight has failed is served stale at once from the
    # back-off, which probes the origin once in the background: one more request, not one per client.
    late = sum("upstream failing recently" in result.detail for result in results)
    expected = 2 + min(late, 1)
    assert wait_for(lambda: asked(origin, "/simple/stale-5m/") >= expected, WAIT), proxy.log_tail()
    assert asked(origin, "/simple/stale-5m/") == expected, proxy.log_tail()
    assert late < len(results), "no client joined the revalidation"
    for result in results:
        assert result.error is None, f"{result.error!r}\n{proxy.log_tail()}"
        assert (result.status, result.x_cache) == (200, "STALE")
        assert bytes(result.body) == old


def test_concurrent_revalidations_make_one_conditional_request(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    data = pattern_bytes(SIZE, 6)
    origin.routes["/simple/fresh-again/"] = Slow(data)
    proxy = proxy_factory(cache_hosts=[ORIGIN_IP], cache_ttl=1)
    url = f"{origin.url}/simple/fresh-again/"
    status, headers, _ = fetch(proxy, url)
    assert (status, headers["x-cache"]) == (200, "MISS")
    time.sleep(1.5)  # stale

    results = run_together([proxy], url)
    conditional = [r for r in origin.requests if r.path == "/simple/fresh-again/"][1:]
    assert len(conditional) == 1, proxy.log_tail()
    assert conditional[0].headers.get("if-none-match") == '"v1"'
    for result in results:
        assert result.error is None, f"{result.error!r}\n{proxy.log_tail()}"
        # A client the machine's load delays until the revalidation has landed gets the refreshed entry.
        assert (result.status, result.x_cache) in ((200, "REVALIDATED"), (200, "HIT"))
        assert bytes(result.body) == data
    assert any(result.x_cache == "REVALIDATED" for result in results)


def test_clients_that_leave_do_not_stop_the_others(origin: FakeOrigin, proxy_factory: ProxyFactory) -> None:
    stall = Stall(pattern_bytes(SIZE, 7), 2 * 1024 * 1024, origin)
    origin.routes["/files/leave-5m.tar.gz"] = stall.reply
    proxy = proxy_factory(cache_hosts=[ORIGIN_IP])
    url = f"{origin.url}/files/leave-5m.tar.gz"
    try:
        owner = RawClient(proxy, url)
        owner.start()
        assert wait_for(lambda: owner.received > 0, WAIT), proxy.log_tail()
        stays = Client(proxy, url)
        leaves = Client(proxy, url, leave_after=64 * 1024)
        stays.start()
        leaves.start()
        assert wait_for(lambda: stays.received > 0 and not leaves.is_alive(), WAIT), proxy.log_tail()
        owner.leave()  # the owner's client goes too, while the origin still holds the rest back
        owner.join(WAIT)
        time.sleep(0.5)
    finally:
        stall.release()
    for client in (stays, leaves):
        client.join(WAIT)
    assert stays.result.error is None, f"{stays.result.error!r}\n{proxy.log_tail()}"
    assert sha256(bytes(stays.result.body)) == sha256(stall.data)
    assert owner.received < SIZE, "the owner's client was meant to leave before the end"
    status, headers, body = fetch(proxy, url)
    assert (status, headers["x-cache"], sha256(body)) == (200, "HIT", sha256(stall.data))
    assert asked(origin, "/files/leave-5m.tar.gz") == 1, (stays.result.detail, leaves.result.detail)


def test_a_killed_downloader_is_taken_over_by_the_other_process(
    tmp_path: Path, origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    stall = Stall(pattern_bytes(SIZE, 8), 2 * 1024 * 1024, origin)
    origin.routes["/files/killed-5m.tar.gz"] = stall.reply
    shared = tmp_path / "shared-cache"
    doomed = proxy_factory(cache_hosts=[ORIGIN_IP], cache_dir=shared)
    survivor = proxy_factory(cache_hosts=[ORIGIN_IP], cache_dir=shared)
    url = f"{origin.url}/files/killed-5m.tar.gz"
    try:
        owner = Client(doomed, url)
        owner.start()
        assert wait_for(lambda: owner.received > 0, WAIT), doomed.log_tail()
        followers = [Client(survivor, url) for _ in range(3)]
        for follower in followers:
            follower.start()
        assert wait_for(lambda: all(f.received > 0 for f in followers), WAIT), survivor.log_tail()
        assert asked(origin, "/files/killed-5m.tar.gz") == 1, "the other process did not follow the download"

        assert doomed.proc is not None
        os.kill(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(WAIT)
        for follower in followers:
            follower.join(WAIT)
        stall.stalling = False
    finally:
        stall.release()
    for follower in followers:
        result = follower.result
        assert not result.complete_looking or sha256(bytes(result.body)) == sha256(stall.data), (
            f"a follower got {len(result.body)} bytes that looked complete"
        )
    status, headers, body = fetch(survivor, url)
    assert (status, sha256(body)) == (200, sha256(stall.data)), survivor.log_tail()
    assert asked(origin, "/files/killed-5m.tar.gz") == 2


def test_clients_with_other_credentials_or_vary_fields_never_share(
    origin: FakeOrigin, proxy_factory: ProxyFactory
) -> None:
    def personal(request: OriginRequest) -> OriginReply:
        time.sleep(LATENCY)
        who = f"{request.headers.get('authorization')}/{request.headers.get('x-flavour')}"
        data = pattern_bytes(2 * 1024 * 1024, 9) + who.encode()
        return OriginReply(200, headers={"Vary": "X-Flavour"}, chunks=lambda: iter([data]), length=len(data))

    origin.routes["/files/personal.tar.gz"] = personal
    proxy = proxy_factory(cache_hosts=[ORIGIN_IP])
    url = f"{origin.url}/files/personal.tar.gz"
    askers = [("Bearer a", "x"), ("Bearer a", "y"), ("Bearer b", "x"), ("Bearer b", "x")] * 2
    start = threading.Barrier(len(askers))
    clients = []
    for token, flavour in askers:
        client = Client(proxy, url, start)
        client.headers = {"Authorization": token, "X-Flavour": flavour}
        clients.append(client)
    for client in clients:
        client.start()
    for client in clients:
        client.join(WAIT)
    for client, (token, flavour) in zip(clients, askers, strict=True):
        result = client.result
        assert result.error is None, f"{result.error!r}\n{proxy.log_tail()}"
        assert bytes(result.body).endswith(f"{token}/{flavour}".encode()), "another client's answer"
    # Credentials a and b are two keys: one request each. Under a, the clients whose X-Flavour differs from
    # the first answer's fetch on their own (together, if they meet in a flight of their own): one or two
    # more.
    assert 3 <= asked(origin, "/files/personal.tar.gz") <= 4
