"""Idle and slow clients are bounded: a connection that sends nothing, one that trickles its request head a
byte at a time, and a CONNECT tunnel left unused are closed once cache_client_timeout
has passed, while other clients are served all along (mitmproxy alone holds them for tcp_timeout, 600 s)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from .clients import ProxyFactory, fetch
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

TIMEOUT = 2  # cache_client_timeout for these tests
CLOSED_WITHIN = 30.0  # a bound on a hang, far above the timeout; not a timing


def closed_by_proxy(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Sends `trickle` a byte every 0.5 s (then nothing) and reads; True once the proxy closed the connection
    (EOF or reset) within CLOSED_WITHIN, False if it was still open then."""
    deadline = time.monotonic() + CLOSED_WITHIN
    pending = trickle
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if pending:
                sock.sendall(pending[:1])
                pending = pending[1:]
            data = sock.recv(65536)
            if not data:
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_idle_and_trickling_connections_are_closed_while_others_are_served(
    registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_client_timeout=TIMEOUT)
    target = f"{registry.pypi_url}alpha/"
    head = f"GET {target} HTTP/1.1\r\nHost: {registry.index.ip}:{registry.index.port}\r\n" + "X-Pad: x" * 40
    results: dict[str, bool] = {}

    def watch(name: str, trickle: bytes = b"") -> None:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            results[name] = closed_by_proxy(sock, trickle)

    threads = [
        threading.Thread(target=watch, args=("idle",)),
        threading.Thread(target=watch, args=("trickling", head.encode())),
    ]
    for thread in threads:
        thread.start()
    served = 0
    while any(thread.is_alive() for thread in threads) and served < 50:
        assert fetch(proxy, target)[0] == 200  # others are served meanwhile
        served += 1
        time.sleep(0.2)
    for thread in threads:
        thread.join(CLOSED_WITHIN + 5)
    assert results == {"idle": True, "trickling": True}
    assert served > 0


def test_a_tunnel_left_unused_is_closed(registry: FakeRegistry, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(cache_client_timeout=TIMEOUT)
    origin = f"{registry.files.ip}:{registry.files.port}"
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(f"CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # then nothing: no TLS handshake, no request
        assert closed_by_proxy(sock)
