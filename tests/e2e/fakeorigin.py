"""Small servers and raw-socket helpers for the safety tests (access, privacy, integrity, crash, bad input).

FakeOrigin: an HTTP/1.1 origin (plain or HTTPS with the e2e test certificate) whose routes a test sets: a
credential-dependent document, an index publishing a chosen digest, a body that stalls midway.
RawServer: a TCP listener that runs a function on each accepted socket: for upstreams that answer garbage.
raw_exchange: one exchange with the proxy over a bare socket, optionally from another loopback source address
or through a CONNECT tunnel, for requests no HTTP client library would send.

Everything binds 127.x.y.z, waits are bounded, and stop() frees every thread a test may have left waiting.
"""

from __future__ import annotations

import hashlib
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from .fakeregistry import CertPaths

IO_TIMEOUT = 10.0  # seconds any socket of these servers waits for its peer
STALL_LIMIT = 60.0  # seconds a stalled body waits for release() at most


class OriginRequest(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""


@dataclass
class OriginReply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # A streamed body: chunks() yields exactly `length` bytes.
    chunks: Callable[[], Iterator[bytes]] | None = None
    length: int | None = None


OriginRoute = Callable[[OriginRequest], OriginReply]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """`size` deterministic, incompressible-looking bytes (different seeds give different bytes)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT
    server: _OriginServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        origin = self.server.origin
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = OriginRequest(self.command, self.path, headers, body)
        origin._record(request)
        reply = origin.route_for(request)(request)
        self.send_response(reply.status)
        size = reply.length if reply.chunks is not None else len(reply.body)
        for name, value in {"Content-Type": "application/octet-stream", **reply.headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if reply.chunks is None:
                self.wfile.write(reply.body)
            else:
                for chunk in reply.chunks():
                    self.wfile.write(chunk)
                    self.wfile.flush()
        except OSError:  # the proxy went away mid-body (the crash test kills it on purpose)
            self.close_connection = True

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET


class _OriginServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, origin: FakeOrigin, address: tuple[str, int]) -> None:
        self.origin = origin
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no getfqdn(): a reverse lookup can stall offline
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self.origin._accepted()
        request.settimeout(IO_TIMEOUT)
        conn: socket.socket = request
        if self.origin._ssl_context is not None:
            try:
                conn = self.origin._ssl_context.wrap_socket(request, server_side=True)
            except OSError:
                request.close()
                return
        self.origin._track(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        except OSError:
            pass
        finally:
            self.origin._untrack(conn)
            conn.close()

    def handle_error(self, request: object, client_address: object) -> None:
        pass


def not_found(request: OriginRequest) -> OriginReply:
    return OriginReply(404, b"fake origin: not found\n", {"Content-Type": "text/plain"})


class FakeOrigin:
    """An HTTP/1.1 origin on `ip`; `routes` maps a path (query ignored) to a function of the request."""

    def __init__(self, ip: str = "127.0.0.4", *, certs: CertPaths | None = None) -> None:
        self.ip = ip
        self.routes: dict[str, OriginRoute] = {}
        self.default: OriginRoute = not_found
        self._lock = threading.Lock()
        self._requests: list[OriginRequest] = []
        self._conns: set[socket.socket] = set()
        self.accepted = 0  # TCP connections accepted, whether or not a request followed
        self._server: _OriginServer | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self._ssl_context: ssl.SSLContext | None = None
        if certs is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certs.server_cert, certs.server_key)
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl_context = ctx
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context is not None else "http"

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.scheme}://{host}:{self.port}"

    def route_for(self, request: OriginRequest) -> OriginRoute:
        return self.routes.get(urlsplit(request.path).path, self.default)

    @property
    def requests(self) -> list[OriginRequest]:
        with self._lock:
            return list(self._requests)

    def paths(self, method: str | None = "GET") -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def _record(self, request: OriginRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _accepted(self) -> None:
        with self._lock:
            self.accepted += 1

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def start(self) -> FakeOrigin:
        server = _OriginServer(self, (self.ip, 0))
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=f"origin-{self.ip}"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)


class Stall:
    """A body that sends `before` bytes, then waits for release() (or the origin's stop), then the rest."""

    def __init__(self, data: bytes, before: int, origin: FakeOrigin, chunk: int = 64 * 1024) -> None:
        self.data, self.before, self.origin, self.chunk = data, before, origin, chunk
        self.stalling = True  # later requests get the whole body at once when False
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def reply(self, request: OriginRequest) -> OriginReply:
        return OriginReply(
            200,
            headers={"Cache-Control": "max-age=600"},
            chunks=self.chunks,
            length=len(self.data),
        )

    def chunks(self) -> Iterator[bytes]:
        stall = self.stalling
        for offset in range(0, len(self.data), self.chunk):
            if stall and offset >= self.before:
                deadline = time.monotonic() + STALL_LIMIT
                while not self._released.is_set() and not self.origin.stopping.is_set():
                    if time.monotonic() > deadline:
                        return  # short of Content-Length: never a complete-looking body
                    self._released.wait(0.1)
                stall = False
            yield self.data[offset : offset + self.chunk]


# --- a listener that speaks whatever the test wants ---------------------------------------------------------


class RawServer:
    """Accepts TCP connections on `ip` and runs `behaviour(sock, stopping)` on each in its own thread."""

    def __init__(
        self, behaviour: Callable[[socket.socket, threading.Event], None], ip: str = "127.0.0.5"
    ) -> None:
        self.behaviour = behaviour
        self.ip = ip
        self.stopping = threading.Event()
        self.accepted = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((ip, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"raw-{ip}")

    def start(self) -> RawServer:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT)
            with self._lock:
                self._conns.add(conn)
                self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.behaviour(conn, self.stopping)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)


def read_request_head(conn: socket.socket, limit: int = 1 << 20) -> bytes:
    """Reads until the end of a request head (or EOF, or `limit` bytes). A TLS ClientHello counts as a
    head: a garbage server answers it with its garbage instead of a ServerHello."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if data[:1] == b"\x16":
            break
    return data


class Hang:
    """A RawServer behaviour: reads a request and never answers (until the test stops it)."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket, stopping: threading.Event) -> None:
        if read_request_head(conn):
            with self._lock:
                self.requests += 1
        stopping.wait(60)


# --- raw exchanges with the proxy ---------------------------------------------------------------------------


@dataclass
class RawResult:
    status: int | None  # None: the connection ended (or timed out) before a status line
    head: bytes
    body: bytes
    closed: bool  # the proxy closed or reset the connection
    elapsed: float
    error: str = ""

    @property
    def refused_or_error(self) -> bool:
        """A 4xx/5xx answer, or no answer and a closed connection."""
        return (self.status is not None and self.status >= 400) or (self.status is None and self.closed)


def _read_response(sock: socket.socket, deadline: float, head_only: bool = False) -> RawResult:
    """One response: its head, then a Content-Length, chunked or close-delimited body (none if head_only)."""
    start = time.monotonic()
    data = b""
    closed = False
    error = ""

    def recv() -> bytes | None:
        nonlocal closed, error
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            error = "timed out"
            return None
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            closed, error = True, f"{type(exc).__name__}: {exc}"
            return None
        if not chunk:
            closed = True
            return None
        return chunk

    while b"\r\n\r\n" not in data:
        chunk = recv()
        if chunk is None:
            return RawResult(_status(data), data, b"", closed, time.monotonic() - start, error)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
    if head_only or _status(head) in (204, 304):
        length = 0
    while True:
        if chunked and (body.endswith(b"0\r\n\r\n")):
            break
        if not chunked and length is not None and len(body) >= length:
            break
        chunk = recv()
        if chunk is None:
            break
        body += chunk
    return RawResult(_status(head), head, body, closed, time.monotonic() - start, error)


def _status(head: bytes) -> int | None:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def raw_exchange(
    proxy_port: int,
    data: bytes,
    *,
    source: str = "127.0.0.1",
    timeout: float = 15.0,
    tunnel: tuple[str, int] | None = None,
    cafile: Path | None = None,
    server_hostname: str | None = None,
) -> RawResult:
    """Sends `data` to the proxy on 127.0.0.1 from `source` and reads one response (or the end of the
    connection) within `timeout`. With `tunnel=(host, port)`, first CONNECTs there, does TLS trusting
    `cafile` (the proxy's bundle), then sends `data` inside; a refused CONNECT is the result."""
    start = time.monotonic()
    deadline = start + timeout
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", proxy_port))
        if tunnel is not None:
            host, port = tunnel
            sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            answer = _read_response(sock, deadline, head_only=True)
            if answer.status != 200:
                return answer
            ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            ctx.set_alpn_protocols(["http/1.1"])
            try:
                sock = ctx.wrap_socket(sock, server_hostname=server_hostname or host)
            except (ssl.SSLError, OSError) as exc:
                return RawResult(None, b"", b"", True, time.monotonic() - start, f"TLS: {exc}")
        try:
            sock.sendall(data)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            # The proxy may answer and close before reading a huge request: read what it said anyway.
            result = _read_response(sock, deadline)
            result.error = result.error or f"send: {exc}"
            result.closed = True
            result.elapsed = time.monotonic() - start
            return result
        result = _read_response(sock, deadline)
        result.elapsed = time.monotonic() - start
        return result
    finally:
        sock.close()


def alive(proxy_port: int, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout):
            return True
    except OSError:
        return False


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Polls predicate until it is true or `timeout` seconds have passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
