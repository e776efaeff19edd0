"""A small parent proxy (a corporate egress proxy) the tests own: CONNECT tunnels only. It records every
request head it gets, with its Proxy-Authorization, and can be switched between working, refusing connections
(not listening) and hanging (accepting, never answering)."""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass

from .clients import free_port

IDLE = 30.0  # seconds a tunnel may stay silent before it is closed (bounds every thread)


@dataclass
class Seen:
    method: str
    target: str
    proxy_authorization: str | None


class FakeParent:
    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.ip, self.port = ip, free_port(ip)
        self.mode = "work"
        self.seen: list[Seen] = []
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []  # every connection, closed by stop()

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self, mode: str = "work") -> FakeParent:
        """Listens (again) on the same port: "work" answers, "hang" accepts and never answers."""
        self.mode = mode
        if self._server is None:
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((self.ip, self.port))
            server.listen(64)
            self._server = server
            threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def refuse(self) -> None:
        """Stops listening: connections are refused."""
        self.stop()

    def stop(self) -> None:
        """Stops listening and drops every connection, tunnels included (a down proxy keeps none)."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close() alone would not
            except OSError:
                pass
            server.close()
        with self._lock:
            open_, self._open = self._open, []
        for sock in open_:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def targets(self, method: str = "CONNECT") -> list[str]:
        with self._lock:
            return [s.target for s in self.seen if s.method == method]

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IDLE)
        with self._lock:
            self._open.append(conn)
        if self.mode == "hang":
            return  # never answered; closed by stop()
        try:
            head = _read_head(conn)
            if head is None:
                conn.close()
                return
            request_line, *fields = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            named = (f.split(":", 1) for f in fields if ":" in f)
            auth = next((v.strip() for k, v in named if k.lower() == "proxy-authorization"), None)
            with self._lock:
                self.seen.append(Seen(method, target, auth))
            if method != "CONNECT":
                conn.sendall(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                conn.close()
                return
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=IDLE)
            with self._lock:
                self._open.append(upstream)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(conn, upstream)
        except OSError:
            conn.close()


def _read_head(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or len(data) > 65536:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copies bytes both ways until either side closes or both are silent for IDLE seconds."""
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], IDLE)
            if not ready:
                return
            for source in ready:
                data = source.recv(65536)
                if not data:
                    return
                (b if source is a else a).sendall(data)
    except OSError:
        pass
    finally:
        a.close()
        b.close()
