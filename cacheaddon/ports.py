"""Which listener of `cacheaddon run` cannot get its port, said plainly before mitmproxy tries.

mitmproxy 12.3 reports a busy port as "[Errno 98] HTTP(S) proxy failed to listen on ... with [Errno 98] error
while attempting to bind ..." and, for a mode without its own port, adds "Try specifying a different port by
using `--mode regular@PORT+2`": with the registry presets that is the npm endpoint's port (8082), a hint that
leads to the next clash. So each TCP listener's port is tried first, the way asyncio's start_server binds it
(SO_REUSEADDR, IPv6 only on IPv6 sockets), and a taken one is named with the flag that moves it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from mitmproxy.proxy.mode_specs import ProxyMode


def _bind_fails(host: str, port: int) -> OSError | None:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None  # an unresolvable host is mitmproxy's to report
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return exc
    return None


def busy_listener(modes: Sequence[str], listen_host: str, listen_port: int | None) -> str | None:
    """A one-line message naming the first listener (port and mode) whose TCP port is taken, else None."""
    for spec in modes:
        try:
            mode = ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy's to report
        port = mode.listen_port(listen_port)
        if not port or mode.transport_protocol == "udp":
            continue
        host = mode.listen_host(listen_host)
        if _bind_fails(host, port) is None:
            continue
        if mode.custom_listen_port is None:
            move = "with -p PORT"
        else:
            move = "with --registry NAME@PORT, or @PORT in the --mode spec"
        return (
            f"port {port} is already in use: the {mode.description} (mode {spec}) cannot listen on "
            f"{host or '*'}:{port}; stop what listens there, or choose another port {move}"
        )
    return None
