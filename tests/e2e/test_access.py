"""Not an open proxy: clients outside cache_allow_clients get 403 on a plain request and on a CONNECT, and
with cache_strict_hosts=true every host outside cache_hosts is refused; raw tunnels (SOCKS5) too."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from .clients import ProxyFactory, fetch
from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, RawServer, raw_exchange
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

CACHED_IP, OTHER_IP = "127.0.0.4", "127.0.0.5"  # plain-HTTP origins: in cache_hosts, and not
ALLOWED, REFUSED = "127.0.0.1", "127.0.0.2"  # client source addresses


def hello(request: OriginRequest) -> OriginReply:
    return OriginReply(body=b"hello from the origin\n", headers={"Content-Type": "text/plain"})


@pytest.fixture
def origins() -> Iterator[tuple[FakeOrigin, FakeOrigin]]:
    cached, other = FakeOrigin(CACHED_IP), FakeOrigin(OTHER_IP)
    for origin in (cached, other):
        origin.routes["/doc"] = hello
        origin.start()
    try:
        yield cached, other
    finally:
        cached.stop()
        other.stop()


def get(target: str, host: str = "") -> bytes:
    """A GET request; Host defaults to the authority of an absolute-form target."""
    host = host or target.split("/")[2]
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()


def hosts(registry: FakeRegistry) -> list[str]:
    return [registry.index.ip, CACHED_IP]


@pytest.mark.parametrize("destination", ["cached", "not-cached"])
def test_client_outside_allow_list_gets_403_on_request_and_connect(
    registry: FakeRegistry,
    origins: tuple[FakeOrigin, FakeOrigin],
    proxy_factory: ProxyFactory,
    destination: str,
) -> None:
    cached, other = origins
    origin = cached if destination == "cached" else other
    https_host = registry.index if destination == "cached" else registry.files
    proxy = proxy_factory(cache_hosts=hosts(registry), cache_allow_clients="127.0.0.1/32")
    mark = proxy.log_size()

    plain = raw_exchange(proxy.port, get(f"{origin.url}/doc"), source=REFUSED)
    assert plain.status == 403, plain
    assert b"hello from the origin" not in plain.body
    tunnel = raw_exchange(
        proxy.port, get("/", https_host.ip), source=REFUSED, tunnel=(https_host.ip, https_host.port)
    )
    assert tunnel.status == 403, tunnel
    assert origin.requests == [] and registry.requests == [], "a refused client's request reached an upstream"
    log = proxy.log_text(mark)
    refusals = [line for line in log.splitlines() if "refused" in line.lower() and REFUSED in line]
    assert len(refusals) >= 2, log

    # The same requests from an allowed address are served: the refusal is about the client, not the request.
    served = raw_exchange(proxy.port, get(f"{origin.url}/doc"), source=ALLOWED)
    assert served.status == 200, served
    assert served.body == b"hello from the origin\n"
    connected = raw_exchange(
        proxy.port,
        get("/simple/alpha/" if destination == "cached" else "/nothing", https_host.ip),
        source=ALLOWED,
        tunnel=(https_host.ip, https_host.port),
        cafile=proxy.bundle,
    )
    assert connected.status in (200, 404), connected  # the registry's own answer, through the tunnel


def test_default_allow_list_serves_other_loopback_addresses(
    registry: FakeRegistry, origins: tuple[FakeOrigin, FakeOrigin], proxy_factory: ProxyFactory
) -> None:
    """The default (127.0.0.0/8, ::1) lets 127.0.0.2 in: binding the source address alone causes no 403."""
    cached, _ = origins
    proxy = proxy_factory(cache_hosts=hosts(registry))
    plain = raw_exchange(proxy.port, get(f"{cached.url}/doc"), source=REFUSED)
    assert plain.status == 200, plain
    assert plain.body == b"hello from the origin\n"
    tunnel = raw_exchange(
        proxy.port,
        get("/simple/alpha/", registry.index.ip),
        source=REFUSED,
        tunnel=(registry.index.ip, registry.index.port),
        cafile=proxy.bundle,
    )
    assert tunnel.status == 200, tunnel


def test_strict_hosts_refuses_hosts_outside_cache_hosts(
    registry: FakeRegistry, origins: tuple[FakeOrigin, FakeOrigin], proxy_factory: ProxyFactory
) -> None:
    cached, other = origins
    # Under strict, a pattern without a port admits only 80 and 443: these servers' ports must be named.
    strict_hosts = [f"{registry.index.ip}:{registry.index.port}", f"{cached.ip}:{cached.port}"]
    proxy = proxy_factory(cache_hosts=strict_hosts, cache_strict_hosts=True)
    mark = proxy.log_size()

    plain = raw_exchange(proxy.port, get(f"{other.url}/doc"), source=ALLOWED)
    assert plain.status == 403, plain
    assert b"hello from the origin" not in plain.body
    tunnel = raw_exchange(
        proxy.port, get("/", registry.files.ip), tunnel=(registry.files.ip, registry.files.port)
    )
    assert tunnel.status == 403, tunnel
    assert other.requests == [] and registry.files.requests == [], "a refused host was contacted"
    # A cached host on a port it was not named with is no registry either (a tunnel to pypi.org:22).
    other_port = raw_exchange(proxy.port, get(f"http://{cached.ip}:{other.port}/doc"), source=ALLOWED)
    assert other_port.status == 403, other_port
    log = proxy.log_text(mark)
    assert "cache_strict_hosts" in log and "refused" in log.lower(), log

    # Cached hosts still work, plain and through a tunnel.
    served = raw_exchange(proxy.port, get(f"{cached.url}/doc"), source=ALLOWED)
    assert served.status == 200, served
    assert served.body == b"hello from the origin\n"
    status, headers, body = fetch(proxy, f"{registry.pypi_url}alpha/")
    assert status == 200 and b"alpha-1.1.0" in body
    assert headers.get("x-cache") == "MISS"


def test_without_strict_hosts_other_hosts_pass_through(
    registry: FakeRegistry, origins: tuple[FakeOrigin, FakeOrigin], proxy_factory: ProxyFactory
) -> None:
    """The control case of the test above: the same requests succeed when cache_strict_hosts is off."""
    _, other = origins
    proxy = proxy_factory(cache_hosts=hosts(registry))
    plain = raw_exchange(proxy.port, get(f"{other.url}/doc"))
    assert plain.status == 200, plain
    assert plain.body == b"hello from the origin\n"
    status, _, body = fetch(proxy, registry.file_url(registry.wheel("alpha").filename))
    assert status == 200 and body == registry.wheel("alpha").data


# --- raw TCP (SOCKS5 and other non-HTTP modes) ----------------------------------------------------------


class Echo:
    """A RawServer behaviour: echoes what it gets, and counts connections."""

    def __init__(self) -> None:
        self.connections = 0

    def __call__(self, conn: socket.socket, stopping: threading.Event) -> None:
        self.connections += 1
        conn.settimeout(5)
        try:
            while data := conn.recv(4096):
                conn.sendall(b"ECHO:" + data)
        except OSError:
            pass


def socks5_exchange(proxy_port: int, target: tuple[str, int], source: str, data: bytes) -> bytes:
    """A SOCKS5 CONNECT to target through the proxy, then `data` sent raw; what comes back (b"" if closed)."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", proxy_port))
        sock.sendall(b"\x05\x01\x00")
        if sock.recv(2) != b"\x05\x00":
            return b""
        ip, port = target
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(ip) + port.to_bytes(2, "big"))
        try:
            reply = sock.recv(10)
            if not reply.startswith(b"\x05\x00"):
                return b""
            sock.sendall(data)
            return sock.recv(4096)
        except OSError:
            return b""


@pytest.mark.parametrize(
    ("case", "expected"),
    [("cached", b"ECHO:SSH-2.0-x\r\n"), ("strict", b""), ("client", b"")],
    ids=["control", "strict-hosts", "client-not-allowed"],
)
def test_raw_tunnels_obey_the_allow_list_and_strict_hosts(
    proxy_factory: ProxyFactory, case: str, expected: bytes
) -> None:
    """SOCKS5 (like transparent and tcp: modes) relays raw TCP that no HTTP hook sees: the same rules hold."""
    echo = Echo()
    server = RawServer(echo, ip=OTHER_IP).start()
    try:
        hosts = [f"{OTHER_IP}:{server.port}"] if case != "strict" else [CACHED_IP]
        allowed = "127.0.0.1/32" if case == "client" else "127.0.0.0/8"
        proxy = proxy_factory(
            modes=["socks5"], cache_hosts=hosts, cache_strict_hosts=True, cache_allow_clients=allowed
        )
        source = REFUSED if case == "client" else ALLOWED
        got = socks5_exchange(proxy.port, (OTHER_IP, server.port), source, b"SSH-2.0-x\r\n")
        assert got == expected, proxy.log_tail()
        assert echo.connections == (1 if case == "cached" else 0)
        if case != "cached":
            assert "refused a connection" in proxy.log_text(), proxy.log_tail()
    finally:
        server.stop()
