"""A fake PyPI (simple API) and npm registry over HTTPS, with switchable failure modes.

An index host (127.0.0.2) serves /simple/ and npm packuments and tarballs; a files host (127.0.0.3) serves
wheels, their PEP 658 `.metadata` files and big blobs, linked from the index by absolute URL as on PyPI. Each
host is a ThreadingHTTPServer whose mode can be switched at runtime: ok, hang, 503, truncate.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import html
import io
import ipaddress
import json
import random
import re
import socket
import socketserver
import ssl
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import packages

MODES = ("ok", "hang", "503", "truncate")
# npm behind an HTTPS proxy cannot reach a registry addressed by IP: https-proxy-agent drops both `host` and
# `servername` for IP targets, so Node checks the proxy's certificate against "localhost" and fails with
# ERR_TLS_CERT_ALTNAME_INVALID. npm tests through the proxy therefore run the index as https://localhost.
NPM_INDEX_IP, NPM_INDEX_HOSTNAME = "127.0.0.1", "localhost"
HANG_SECONDS = 60.0
# Last-Modified of everything the fake serves: fixed, so If-Modified-Since revalidation is predictable.
LAST_MODIFIED = email.utils.formatdate(packages.FIXED_MTIME, usegmt=True)
INDEX_CACHE_CONTROL = "max-age=600, public"
FILE_CACHE_CONTROL = "max-age=365000000, immutable, public"

PYPI_JSON = "application/vnd.pypi.simple.v1+json"
PYPI_HTML = "application/vnd.pypi.simple.v1+html"
NPM_ABBREVIATED = "application/vnd.npm.install-v1+json"
PYPI_FORMATS = ("json", "html")


# --- certificates -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertPaths:
    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def make_ca(directory: Path | str) -> CertPaths:
    """Writes a test CA (ca.pem) and a server cert for 127.0.0.1-127.0.0.9, localhost and this machine's name
    into directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cacheaddon e2e test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    # This machine's own name too: clients that never proxy "localhost" (Go) reach a fake by it.
    names = dict.fromkeys(["localhost", socket.gethostname().lower()])
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    sans += [x509.IPAddress(ipaddress.IPv4Address(f"127.0.0.{i}")) for i in range(1, 10)]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = CertPaths(
        dir=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
    )
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.ca_key, ca_key)
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.server_key, server_key)
    return paths


# --- one HTTPS host -----------------------------------------------------------------------------------------


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased


@dataclass
class Reply:
    """What a route answers; FakeHost adds validators, conditional 304s and the failure modes."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    # A streamed body: chunks() yields `length` bytes in total. `etag` must then be given.
    chunks: Callable[[], Iterator[bytes]] | None = None
    length: int | None = None
    etag: str | None = None

    @property
    def size(self) -> int:
        return self.length if self.chunks is not None and self.length is not None else len(self.body)


Route = Callable[[Request], Reply]


def etag_for(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def _etag_matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip() for t in if_none_match.split(",")]
    bare = etag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == bare for t in tags)


def _not_modified_since(if_modified_since: str) -> bool:
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    return since.timestamp() >= packages.FIXED_MTIME


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end after this
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _serve(self) -> None:
        host = self.server.host
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        host._record(request)
        mode = host.mode
        if mode == "hang":
            host._stopping.wait(HANG_SECONDS)
            self.close_connection = True
            return
        if mode == "503":
            reply = Reply(503, b"fake registry: service unavailable\n", "text/plain")
        else:
            reply = host.route(request)
        if reply.status == 200:
            reply.etag = reply.etag or etag_for(reply.body)
            reply.headers = {"ETag": reply.etag, "Last-Modified": LAST_MODIFIED, **reply.headers}
            if mode == "ok" and self._not_modified(reply.etag):
                self._send_head(304, {k: v for k, v in reply.headers.items() if k != "Content-Type"}, None)
                return
        self._send(reply, truncate=mode == "truncate")

    def _not_modified(self, etag: str) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return _etag_matches(inm, etag)
        ims = self.headers.get("If-Modified-Since")
        return ims is not None and _not_modified_since(ims)

    def _send_head(self, status: int, headers: Mapping[str, str], length: int | None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is not None:  # a 304 has no body and, as from real servers, no Content-Length
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, reply: Reply, truncate: bool) -> None:
        headers = {"Content-Type": reply.content_type, **reply.headers}
        self._send_head(reply.status, headers, reply.size)
        if self.command == "HEAD":
            return
        budget = reply.size // 2 if truncate else reply.size
        chunks = reply.chunks() if reply.chunks is not None else iter([reply.body])
        try:
            for chunk in chunks:
                if budget <= 0:
                    break
                chunk = chunk[:budget]
                self.wfile.write(chunk)
                budget -= len(chunk)
                self.server.host.count_sent(len(chunk))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if truncate:
            # Close without TLS close_notify, as a dying server would: the client sees a short body.
            self.close_connection = True
            try:
                socket.socket.shutdown(self.connection, socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: FakeHost, address: tuple[str, int]) -> None:
        self.host = host
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall without a network.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        request.settimeout(10)
        try:
            conn = self.host._ssl_context.wrap_socket(request, server_side=True)
        except OSError:
            request.close()
            return
        if not self.host._track(conn):
            conn.close()
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        finally:
            self.host._untrack(conn)
            conn.close()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-answer are expected here


class FakeHost:
    """One HTTPS listener; `mode` is read per request, so it can be switched while clients are connected."""

    def __init__(
        self, ip: str, certs: CertPaths, route: Route, port: int = 0, name: str = "", hostname: str = ""
    ) -> None:
        self.ip = ip
        self.hostname = hostname or ip  # what URLs call it: the certificate has localhost and 127.0.0.1-9
        self.name = name or ip
        self.route = route
        self._port = port
        self._mode = "ok"
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self.body_bytes_sent = 0  # response body bytes written, all requests together
        self._conns: set[ssl.SSLSocket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.on_request: Callable[[FakeHost, Request], None] | None = None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.server_cert, certs.server_key)
        ctx.set_alpn_protocols(["http/1.1"])
        self._ssl_context = ctx

    # state

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")
        self._mode = value

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"{self.name} has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        # On 443 without the port, as registries link to themselves (https://files.pythonhosted.org/...).
        return f"https://{self.hostname}" if self.port == 443 else f"https://{self.hostname}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def count_sent(self, n: int) -> None:
        with self._lock:
            self.body_bytes_sent += n

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)
        if self.on_request is not None:
            self.on_request(self, request)

    def _track(self, conn: ssl.SSLSocket) -> bool:
        with self._lock:
            if self._server is None:
                return False
            self._conns.add(conn)
            return True

    def _untrack(self, conn: ssl.SSLSocket) -> None:
        with self._lock:
            self._conns.discard(conn)

    # lifecycle

    def start(self) -> FakeHost:
        with self._lock:
            if self._server is not None:
                return self
            self._stopping = threading.Event()
            server = _Server(self, (self.ip, self._port))
            self._port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                daemon=True,
                name=f"fake-{self.name}",
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Closes the listening socket (connects are refused), drops open connections, frees hung handlers."""
        with self._lock:
            server, thread, conns = self._server, self._thread, list(self._conns)
            self._server = self._thread = None
            self._conns.clear()
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        for conn in conns:
            try:
                # The plain socket's shutdown: SSLSocket.shutdown would pull the TLS object from under the
                # handler thread that is still using it.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(5)

    def restart(self) -> FakeHost:
        self.stop()
        return self.start()


# --- the registry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PyFile:
    name: str
    version: str
    filename: str
    data: bytes
    sha256: str
    published: float | None = None  # its upload-time in the JSON simple API (PEP 700); None: not given


@dataclass(frozen=True)
class NpmVersion:
    name: str
    version: str
    deps: dict[str, str]
    data: bytes
    integrity: str
    shasum: str
    published: float | None = None  # its entry in the packument's time map; None: a fixed old date


@dataclass(frozen=True)
class Blob:
    path: str
    size: int
    chunk_size: int = 64 * 1024
    delay: float = 0.0  # seconds before each chunk is sent: a slow download, for overlapping requests

    def chunks(self) -> Iterator[bytes]:
        """Deterministic bytes, generated chunk by chunk: a seeded block, rotated differently per chunk."""
        block = random.Random(self.path).randbytes(self.chunk_size)
        remaining, i = self.size, 0
        while remaining > 0:
            if self.delay:
                time.sleep(self.delay)
            shift = (i * 7919) % self.chunk_size
            chunk = block[shift:] + block[:shift]
            yield chunk[:remaining]
            remaining -= len(chunk)
            i += 1


# (name, version, deps): at least six of each, one depending on another.
DEFAULT_PYPI: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("alpha", "1.0.0", ()),
    ("alpha", "1.1.0", ()),
    ("bravo", "2.0.0", ()),
    ("charlie", "0.3.0", ()),
    ("delta", "1.2.3", ()),
    ("echo", "3.1.0", ()),
    ("foxtrot", "1.0.0", ("echo>=3",)),
    ("golf", "0.1.0", ()),
)
DEFAULT_NPM: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("kilo", "1.0.0", {}),
    ("kilo", "1.1.0", {}),
    ("lima", "2.0.0", {}),
    ("mike", "0.3.0", {}),
    ("november", "1.2.3", {}),
    ("oscar", "3.1.0", {}),
    ("papa", "1.0.0", {"oscar": "^3.0.0"}),
    ("@fake/quebec", "1.0.0", {}),
)

_TARBALL_PATH = re.compile(r"^/((?:@[^/]+/)?[^/@][^/]*)/-/([^/]+\.tgz)$")
_PACKUMENT_PATH = re.compile(r"^/((?:@[^/]+/)?[^/@-][^/]*)$")


def _quality(offer: str, accept: list[tuple[str, float]]) -> float:
    """The q-value of `offer`, taken from the most specific range that covers it (RFC 9110 section 12.5.1)."""
    main = offer.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for media, q in accept:
        if media == offer:
            rank = 2
        elif media == f"{main}/*":
            rank = 1
        elif media == "*/*":
            rank = 0
        else:
            continue
        if rank > best[0]:
            best = (rank, q)
    return best[1]


def parse_accept(value: str) -> list[tuple[str, float]]:
    ranges = []
    for part in value.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    return ranges


def negotiate(accept: str | None, offers: Iterable[str], default: str) -> str:
    """The offer with the highest q-value; ties go to the earliest offer; no Accept gives `default`."""
    if not accept:
        return default
    ranges = parse_accept(accept)
    best, best_q = default, 0.0
    for offer in offers:
        q = _quality(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    return best


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeRegistry:
    """PyPI simple API + npm registry on the index host, wheels and blobs on the files host."""

    def __init__(
        self,
        certs: CertPaths,
        *,
        index_ip: str = "127.0.0.2",
        files_ip: str = "127.0.0.3",
        index_port: int = 0,
        files_port: int = 0,
        index_hostname: str = "",
        default_packages: bool = True,
        core_metadata: bool = False,
        pypi_formats: Iterable[str] = PYPI_FORMATS,
    ) -> None:
        """`index_hostname` names the index host in URLs (default: its IP); see NPM_INDEX_HOSTNAME for why npm
        behind a proxy needs a name. `core_metadata`: the simple API advertises each wheel's PEP 658/714
        metadata file (`<file>.metadata`, always served on the files host). `pypi_formats`: which simple API
        forms are offered ("json", "html"), whatever the client's Accept. Both can be changed at runtime, and
        so can `project_status` (normalised project name -> PEP 792 status; a quarantined project's pages
        list no files, as PyPI's do)."""
        self.certs = certs
        self.core_metadata = core_metadata
        self.pypi_formats = tuple(pypi_formats)
        self.project_status: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pypi: dict[str, list[PyFile]] = {}
        self._files: dict[str, PyFile] = {}
        self._npm: dict[str, dict[str, NpmVersion]] = {}
        self._blobs: dict[str, Blob] = {}
        self._blob_digests: dict[str, str] = {}
        self._journal: list[tuple[str, Request]] = []
        self.index = FakeHost(index_ip, certs, self._index_route, index_port, "index", index_hostname)
        self.files = FakeHost(files_ip, certs, self._files_route, files_port, name="files")
        for host in self.hosts:
            host.on_request = self._on_request
        if default_packages:
            for name, version, pydeps in DEFAULT_PYPI:
                self.add_wheel(name, version, pydeps)
            for name, version, npmdeps in DEFAULT_NPM:
                self.add_npm(name, version, npmdeps)

    # content

    def add_wheel(
        self, name: str, version: str, deps: Iterable[str] = (), published: float | None = None
    ) -> PyFile:
        """`published`: the wheel's upload time (seconds since the epoch), given in the JSON pages."""
        filename, data = packages.make_wheel(name, version, tuple(deps))
        pyfile = PyFile(name, version, filename, data, hashlib.sha256(data).hexdigest(), published)
        with self._lock:
            self._pypi.setdefault(packages.normalize(name), []).append(pyfile)
            self._files[filename] = pyfile
        return pyfile

    def add_npm(
        self, name: str, version: str, deps: Mapping[str, str] | None = None, published: float | None = None
    ) -> NpmVersion:
        """`published`: the version's publish time (seconds since the epoch) in the full packument."""
        data = packages.make_npm_tarball(name, version, deps)
        entry = NpmVersion(
            name,
            version,
            dict(deps or {}),
            data,
            packages.npm_integrity(data),
            hashlib.sha1(data).hexdigest(),
            published,
        )
        with self._lock:
            self._npm.setdefault(name, {})[version] = entry
        return entry

    def add_blob(self, path: str, size: int, delay: float = 0.0) -> Blob:
        """Serves `size` deterministic bytes at `path` on the files host, streamed (see blob_url), waiting
        `delay` seconds before each 64 KiB chunk."""
        if not path.startswith("/"):
            raise ValueError("blob path must start with /")
        blob = Blob(path, size, delay=delay)
        with self._lock:
            self._blobs[path] = blob
            self._blob_digests.pop(path, None)
        return blob

    def blob_url(self, path: str) -> str:
        return self.files.url + path

    def blob_sha256(self, path: str) -> str:
        """The blob's sha256 hex, computed once by streaming it (also the source of its ETag)."""
        with self._lock:
            blob, known = self._blobs[path], self._blob_digests.get(path)
        if known is not None:
            return known
        digest = hashlib.sha256()
        for chunk in replace(blob, delay=0.0).chunks():
            digest.update(chunk)
        with self._lock:
            return self._blob_digests.setdefault(path, digest.hexdigest())

    def wheel(self, name: str, version: str | None = None) -> PyFile:
        """The wheel of `name` at `version`, or its latest (last added) one."""
        with self._lock:
            files = self._pypi[packages.normalize(name)]
        return next(f for f in files if f.version == version) if version else files[-1]

    def npm_version(self, name: str, version: str | None = None) -> NpmVersion:
        with self._lock:
            versions = self._npm[name]
        return versions[version] if version else list(versions.values())[-1]

    # addresses

    @property
    def hosts(self) -> tuple[FakeHost, FakeHost]:
        return (self.index, self.files)

    @property
    def cache_hosts(self) -> list[str]:
        """The proxy's cache_hosts value that covers both hosts."""
        return [host.hostname for host in self.hosts]

    @property
    def pypi_url(self) -> str:
        """The --index-url for pip."""
        return f"{self.index.url}/simple/"

    @property
    def npm_url(self) -> str:
        """The --registry for npm."""
        return f"{self.index.url}/"

    def file_url(self, filename: str) -> str:
        return f"{self.files.url}/packages/{filename}"

    def metadata_url(self, filename: str) -> str:
        """The wheel's PEP 658 metadata file: the wheel's URL + ".metadata"."""
        return self.file_url(filename) + ".metadata"

    def core_metadata_of(self, filename: str) -> bytes:
        """The METADATA file inside the wheel, as served at metadata_url."""
        with self._lock:
            pyfile = self._files[filename]
        return _wheel_metadata(pyfile)

    def tarball_url(self, name: str, version: str) -> str:
        return f"{self.index.url}/{name}/-/{packages.npm_tarball_name(name, version)}"

    # modes and what was asked

    @property
    def mode(self) -> str:
        modes = {h.mode for h in self.hosts}
        return modes.pop() if len(modes) == 1 else "mixed"

    @mode.setter
    def mode(self, value: str) -> None:
        for host in self.hosts:
            host.mode = value

    def _on_request(self, host: FakeHost, request: Request) -> None:
        with self._lock:
            self._journal.append((host.name, request))

    @property
    def requests(self) -> list[tuple[str, Request]]:
        """Every request to either host in arrival order, as (host name "index"|"files", Request)."""
        with self._lock:
            return list(self._journal)

    def paths(self, method: str | None = "GET") -> list[str]:
        """Request paths in arrival order, of one method (None: any), as in `"/simple/alpha/" in paths()`."""
        return [r.path for _, r in self.requests if method is None or r.method == method]

    @property
    def body_bytes_sent(self) -> int:
        """Response body bytes both hosts have written since they were made."""
        return sum(host.body_bytes_sent for host in self.hosts)

    def clear_requests(self) -> None:
        with self._lock:
            self._journal.clear()
        for host in self.hosts:
            host.clear_requests()

    # lifecycle

    def start(self) -> FakeRegistry:
        for host in self.hosts:
            host.start()
        return self

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()

    def restart(self) -> FakeRegistry:
        self.stop()
        return self.start()

    def __enter__(self) -> FakeRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # routes

    def _index_route(self, request: Request) -> Reply:
        path = urlsplit(request.path).path
        if path == "/simple/":
            return self._simple_root(request)
        if path.startswith("/simple/"):
            name = path.removeprefix("/simple/")
            if not name.endswith("/"):
                return Reply(301, b"", "text/plain", {"Location": f"/simple/{name}/"})
            return self._simple_project(request, name.rstrip("/"))
        path = unquote(path)
        if m := _TARBALL_PATH.match(path):
            return self._npm_tarball(m.group(1), m.group(2))
        if m := _PACKUMENT_PATH.match(path):
            return self._packument(request, m.group(1))
        return Reply(404, b'{"error":"Not found"}', "application/json")

    def _files_route(self, request: Request) -> Reply:
        path = urlsplit(request.path).path
        with self._lock:
            blob = self._blobs.get(path)
            pyfile = (
                self._files.get(path.removeprefix("/packages/")) if path.startswith("/packages/") else None
            )
        if blob is not None:
            return Reply(
                chunks=blob.chunks,
                length=blob.size,
                etag=f'"{self.blob_sha256(path)[:32]}"',
                headers={"Cache-Control": FILE_CACHE_CONTROL},
            )
        if pyfile is not None:
            return Reply(body=pyfile.data, headers={"Cache-Control": FILE_CACHE_CONTROL})
        if path.startswith("/packages/") and path.endswith(".metadata"):
            with self._lock:
                wheel = self._files.get(path.removeprefix("/packages/").removesuffix(".metadata"))
            if wheel is not None:
                return Reply(body=_wheel_metadata(wheel), headers={"Cache-Control": FILE_CACHE_CONTROL})
        return Reply(404, b"not found\n", "text/plain")

    def _simple_kind(self, request: Request) -> str:
        offers = [PYPI_JSON] if "json" in self.pypi_formats else []
        if "html" in self.pypi_formats:
            offers = ["text/html", PYPI_HTML, *offers]
        if not offers:
            raise ValueError(f"pypi_formats offers nothing: {self.pypi_formats!r}")
        default = "text/html" if "html" in self.pypi_formats else PYPI_JSON
        return negotiate(request.headers.get("accept"), offers, default)

    def _simple_root(self, request: Request) -> Reply:
        with self._lock:
            names = sorted(self._pypi)
        kind = self._simple_kind(request)
        if kind == PYPI_JSON:
            doc = {"meta": {"api-version": "1.0"}, "projects": [{"name": n} for n in names]}
            body = json.dumps(doc, indent=1).encode()
        else:
            links = "\n".join(f'    <a href="/simple/{n}/">{n}</a><br/>' for n in names)
            body = _html_page("Simple index", links)
        return self._simple_reply(kind, body)

    def _simple_project(self, request: Request, name: str) -> Reply:
        normalized = packages.normalize(name)
        with self._lock:
            files = list(self._pypi.get(normalized, ()))
        if not files:
            return Reply(404, b"404 Not Found\n", "text/plain")
        if name != normalized:
            return Reply(301, b"", "text/plain", {"Location": f"/simple/{normalized}/"})
        kind = self._simple_kind(request)
        metadata = self.core_metadata
        status = self.project_status.get(normalized)
        if status == "quarantined":
            files = []
        if kind == PYPI_JSON:

            def entry(f: PyFile) -> dict[str, object]:
                item: dict[str, object] = {
                    "filename": f.filename,
                    "url": self.file_url(f.filename),
                    "hashes": {"sha256": f.sha256},
                }
                if metadata:  # PEP 714's name and PEP 658's, as PyPI sends both
                    digest = {"sha256": hashlib.sha256(_wheel_metadata(f)).hexdigest()}
                    item |= {"core-metadata": digest, "dist-info-metadata": digest}
                if f.published is not None:
                    item["upload-time"] = _iso(f.published)
                return item

            doc: dict[str, object] = {
                "meta": {"api-version": "1.0"},
                "name": normalized,
                "files": [entry(f) for f in files],
            }
            if any(f.published is not None for f in files) or status:  # PEP 700's fields, PEP 792's status
                doc["meta"] = {"api-version": "1.4" if status else "1.1"}
                doc["versions"] = list(dict.fromkeys(f.version for f in files))
            if status:
                doc["project-status"] = {"status": status}
            body = json.dumps(doc, indent=1).encode()
        else:

            def attributes(f: PyFile) -> str:
                if not metadata:
                    return ""
                digest = f"sha256={hashlib.sha256(_wheel_metadata(f)).hexdigest()}"
                return f' data-dist-info-metadata="{digest}" data-core-metadata="{digest}"'

            links = "\n".join(
                f'    <a href="{html.escape(self.file_url(f.filename))}#sha256={f.sha256}"{attributes(f)}>'
                f"{f.filename}</a><br/>"
                for f in files
            )
            body = _html_page(f"Links for {normalized}", links, status)
        return self._simple_reply(kind, body)

    @staticmethod
    def _simple_reply(kind: str, body: bytes) -> Reply:
        return Reply(
            body=body,
            content_type=kind if kind != "text/html" else "text/html; charset=utf-8",
            headers={"Cache-Control": INDEX_CACHE_CONTROL, "Vary": "Accept, Accept-Encoding"},
        )

    def _packument(self, request: Request, name: str) -> Reply:
        with self._lock:
            versions = list(self._npm.get(name, {}).values())
        if not versions:
            return Reply(404, b'{"error":"Not found"}', "application/json")
        latest = versions[-1].version
        modified = _iso(packages.FIXED_MTIME + 3600)
        kind = negotiate(
            request.headers.get("accept"), ("application/json", NPM_ABBREVIATED), "application/json"
        )
        # Deliberately no Vary header, as some registries do: the proxy must key on Accept anyway.
        headers = {"Cache-Control": INDEX_CACHE_CONTROL}

        def dist(v: NpmVersion) -> dict[str, str]:
            return {
                "tarball": self.tarball_url(v.name, v.version),
                "integrity": v.integrity,
                "shasum": v.shasum,
            }

        if kind == NPM_ABBREVIATED:
            doc: dict[str, object] = {
                "name": name,
                "modified": modified,
                "dist-tags": {"latest": latest},
                "versions": {
                    v.version: {"name": name, "version": v.version, "dependencies": v.deps, "dist": dist(v)}
                    for v in versions
                },
            }
        else:
            doc = {
                "_id": name,
                "name": name,
                "description": f"e2e test package {name}",
                "dist-tags": {"latest": latest},
                "versions": {
                    v.version: {
                        "_id": f"{name}@{v.version}",
                        "name": name,
                        "version": v.version,
                        "description": f"e2e test package {name}",
                        "main": "index.js",
                        "license": "MIT",
                        "dependencies": v.deps,
                        "dist": dist(v),
                    }
                    for v in versions
                },
                "time": {
                    "created": _iso(packages.FIXED_MTIME),
                    "modified": modified,
                    **{v.version: _iso(_published(v, i)) for i, v in enumerate(versions)},
                },
                "readme": f"# {name}\n\nA package of the cacheaddon end-to-end tests.\n",
            }
        return Reply(body=json.dumps(doc, indent=1).encode(), content_type=kind, headers=headers)

    def _npm_tarball(self, name: str, filename: str) -> Reply:
        with self._lock:
            versions = list(self._npm.get(name, {}).values())
        for v in versions:
            if packages.npm_tarball_name(name, v.version) == filename:
                return Reply(body=v.data, headers={"Cache-Control": FILE_CACHE_CONTROL})
        return Reply(404, b'{"error":"Not found"}', "application/json")


def _published(version: NpmVersion, index: int) -> float:
    """Its own publish time, else a fixed one a minute after the version before."""
    return version.published if version.published is not None else packages.FIXED_MTIME + 60 * index


def _wheel_metadata(pyfile: PyFile) -> bytes:
    """The wheel's .dist-info/METADATA: what PEP 658 serves as `<wheel>.metadata`."""
    with zipfile.ZipFile(io.BytesIO(pyfile.data)) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name)


def _html_page(title: str, links: str, status: str | None = None) -> bytes:
    status_meta = f'    <meta name="pypi:project-status" content="{html.escape(status)}">\n' if status else ""
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.0">\n'
        f"{status_meta}"
        f"    <title>{html.escape(title)}</title>\n  </head>\n  <body>\n"
        f"    <h1>{html.escape(title)}</h1>\n{links}\n  </body>\n</html>\n"
    ).encode()
