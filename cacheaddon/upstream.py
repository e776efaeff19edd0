"""Talks to upstream registries ourselves, with timeouts mitmproxy does not have, and reads bodies safely.

mitmproxy has no connect or read timeout, ignores a response set in its error hook, and cannot let an addon
answer once it waits on the upstream (see MITMPROXY-NOTES.md). So cacheable requests are fetched here, inside
the request hook, where every failure can still be turned into a stale answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import httpx

from cacheaddon.policy import HOP_BY_HOP

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
_HTTPX_DEFAULTS = ("accept", "accept-encoding", "user-agent")


class UpstreamFailure(Exception):
    """The upstream could not give a complete answer; str() is the human reason ('connection refused')."""

    def __init__(self, reason: str, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


def classify(exc: BaseException) -> UpstreamFailure:
    if isinstance(exc, UpstreamFailure):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure("timed out", timeout=True)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return UpstreamFailure("name resolution failed")
        if isinstance(cause, ssl.SSLError):
            return UpstreamFailure(f"TLS failure ({cause.reason or cause})")
        if isinstance(cause, ConnectionRefusedError):
            return UpstreamFailure("connection refused")
        if isinstance(cause, ConnectionResetError):
            return UpstreamFailure("connection reset")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.RemoteProtocolError):
        if "without sending complete message body" in str(exc):
            return UpstreamFailure("connection closed before the body was complete")
        return UpstreamFailure(f"protocol error ({exc})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamFailure(f"connection failed ({exc})")
    return UpstreamFailure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def tls_context(insecure: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext | bool:
    """Upstream verification that follows mitmproxy's own ssl_* options."""
    if insecure:
        return False
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    # The system's CAs (SSL_CERT_FILE honoured: corporate roots live there) and certifi's, as mitmproxy uses.
    import certifi

    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    return context


class Upstream:
    def __init__(self, timeout: int, verify: ssl.SSLContext | bool) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(float(timeout)),
            verify=verify,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open(self, method: str, url: str, headers: Mapping[str, str]) -> httpx.Response:
        """Sends the request and waits for the response head; the body is left to read. Raises UpstreamFailure."""
        forwarded = {k: v for k, v in headers.items() if k not in HOP_BY_HOP and k != "host"}
        request = self._client.build_request(method, url, headers=forwarded)
        for name in _HTTPX_DEFAULTS:  # send what the client sent, not httpx's own defaults
            if name not in forwarded:
                del request.headers[name]
        try:
            return await self._client.send(request, stream=True)
        except Exception as exc:  # every way an upstream can fail ends up here
            raise classify(exc) from exc


def expected_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.isdigit() or "chunked" in response.headers.get("transfer-encoding", ""):
        return None
    return int(value)


async def raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent (still content-encoded); raises UpstreamFailure on a timeout or a short body."""
    # A HEAD answer, a 304 and a 204 announce a length but carry no body (RFC 9110 6.4.1).
    bodiless = response.request.method == "HEAD" or response.status_code in (204, 304)
    expected, seen = (None if bodiless else expected_length(response)), 0
    try:
        async for chunk in response.aiter_raw(CHUNK):
            seen += len(chunk)
            yield chunk
    except Exception as exc:
        raise classify(exc) from exc
    finally:
        await response.aclose()
    if expected is not None and seen != expected:
        raise UpstreamFailure(f"body cut short ({seen} of {expected} bytes)")


@dataclass
class Spooled:
    data: bytes | None  # small bodies stay in memory
    path: str | None  # larger ones were written to this temporary file
    size: int
    sha256: str


class Spool:
    """Collects a body while it streams: hashes it and keeps it in memory up to a limit, then in a file.

    File writes go to a thread so the event loop never waits on the disk."""

    def __init__(
        self, memory_limit: int, open_file: object, pool: ThreadPoolExecutor, size_limit: int
    ) -> None:
        self._memory_limit, self._size_limit = memory_limit, size_limit
        self._open_file = open_file  # () -> (BinaryIO, path), called only when the body outgrows memory
        self._pool = pool
        self._buffer: list[bytes] = []
        self._file: BinaryIO | None = None
        self.path: str | None = None
        self._hash = hashlib.sha256()
        self.size = 0
        self.unusable = ""  # why this body cannot be stored, once it cannot

    async def write(self, chunk: bytes) -> None:
        """Never raises for a storage problem: the client's download must go on whatever the disk does."""
        if self.unusable:
            return
        self.size += len(chunk)
        if self.size > self._size_limit:
            self.unusable = "larger than cache_max_object_size"
            await self.abort()
            return
        self._hash.update(chunk)
        if self._file is None and self.size <= self._memory_limit:
            self._buffer.append(chunk)
            return
        loop = asyncio.get_running_loop()
        try:
            if self._file is None:
                self._file, self.path = await loop.run_in_executor(self._pool, self._open_file)  # type: ignore[arg-type]
                pending, self._buffer = b"".join(self._buffer), []
                await loop.run_in_executor(self._pool, self._file.write, pending)
            await loop.run_in_executor(self._pool, self._file.write, chunk)
        except Exception as exc:  # ENOSPC, EIO, a StoreError from open_file
            logger.warning("cannot write to the cache (%s): this download is passed on but not stored", exc)
            self.unusable = f"cache write failed: {exc}"
            await self.abort()

    async def finish(self) -> Spooled | None:
        """The complete body, or None when it could not be kept."""
        if self.unusable:
            return None
        if self._file is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._file.close)
            except OSError as exc:
                logger.warning("cannot write to the cache (%s): not stored", exc)
                self.unusable = f"cache write failed: {exc}"
                await self.abort()
                return None
            return Spooled(None, self.path, self.size, self._hash.hexdigest())
        return Spooled(b"".join(self._buffer), None, self.size, self._hash.hexdigest())

    async def abort(self) -> None:
        self._buffer = []
        if self._file is not None:
            file, path, self._file = self._file, self.path, None
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._pool, file.close)
            except OSError:
                pass
            if path:
                await loop.run_in_executor(self._pool, _unlink, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
