"""A loopback HTTP/1.1 server inside mitmproxy's event loop that serves bodies mitmproxy cannot stream.

mitmproxy can only stream a body that arrives from a server; a body an addon sets is held in memory whole
(MITMPROXY-NOTES.md). For a large cached file, or a download being stored while it streams, the request hook
registers a job here and re-points the flow at http://127.0.0.1:<port>/<token>; mitmproxy then streams our
answer to the client like any upstream's (the addon sets `stream = True`). Cost: one loopback connection per
client connection and one extra copy through the kernel; a 100 MB hit peaked at ~76 MB RSS (notes).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from cacheaddon import tasks

logger = logging.getLogger(__name__)

_HEAD_LIMIT = 64 * 1024
_IDLE = 120.0  # seconds an idle keep-alive connection from mitmproxy is kept
# Seconds a registered job waits for mitmproxy to ask for it (it does at once, unless the flow died: then the
# error hook cancels the job; this is the backstop that releases the upstream connection a job may hold).
_JOB_TTL = 15.0
_FILE_CHUNK = 1024 * 1024


@dataclass
class Job:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # sent as given; Content-Length must be among them for file jobs
    file: BinaryIO | None = None  # serve [offset, offset+length) of this open file with sendfile
    offset: int = 0
    length: int = 0
    stream: AsyncIterator[bytes] | None = None  # or relay these chunks as they arrive
    body: bytes | None = None  # or send these bytes, then read and drop the request's body (a refusal)
    sha256: str | None = None  # a whole file to check while sending: the last chunk waits for the verdict
    on_corrupt: Callable[[], Awaitable[None]] | None = None
    on_close: Callable[[], Awaitable[None]] | None = None  # releases the upstream; called once, always

    async def aclose(self) -> None:
        """Releases everything the job holds, whether or not it was ever sent. (aclose() on an async
        generator that never started skips its finally blocks, hence on_close.)"""
        file, stream, on_close = self.file, self.stream, self.on_close
        self.file = self.stream = self.on_close = None
        if file is not None:
            file.close()
        if stream is not None and hasattr(stream, "aclose"):
            await stream.aclose()
        if on_close is not None:
            await on_close()


class Relay:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._server: asyncio.Server | None = None
        self._socket: socket.socket | None = None
        self._started = False
        self.port = 0

    def bind(self) -> None:
        """Opens the listening socket now, so that the port is known before the event loop serves it:
        mitmproxy may hand over a client's first request before the `running` hook has run, and its
        connection then waits in the backlog until start()."""
        if self._socket is None:
            self._socket = socket.create_server(("127.0.0.1", 0), backlog=128)
            self.port = self._socket.getsockname()[1]

    async def start(self) -> None:
        """Serves the bound socket (once: later calls return at once, served or about to be)."""
        self.bind()
        if not self._started:
            self._started = True
            self._server = await asyncio.start_server(self._serve, sock=self._socket, limit=_HEAD_LIMIT)

    def close(self) -> None:
        """Stops listening and releases every job not yet asked for (in the background: this may be called
        from a synchronous hook)."""
        if self._server is not None:
            self._server.close()
        elif self._socket is not None:
            self._socket.close()
        for token in list(self._jobs):
            self.cancel(token)

    def register(self, job: Job) -> str:
        token = secrets.token_urlsafe(24)
        self._jobs[token] = job
        # A flow that never reaches us (the client went away) must not pin an upstream stream for ever.
        asyncio.get_running_loop().call_later(_JOB_TTL, self._expire, token)
        return token

    def cancel(self, token: str) -> None:
        """Releases a job that will not be asked for (its flow failed before reaching the relay)."""
        job = self._jobs.pop(token, None)
        if job is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop any more: close what can be closed without one
            if job.file is not None:
                job.file.close()
            return
        tasks.spawn(self._finish(job))

    _expire = cancel

    async def _finish(self, job: Job) -> None:
        await job.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
                token = rest.split(" ", 1)[0].lstrip("/")
                job = self._jobs.pop(token, None)
                if job is not None and job.body is None and not await _skip_body(head, reader):
                    await self._finish(job)  # a body the relay was not meant to get: never misread it
                    return
                if job is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    await writer.drain()
                    return
                try:
                    if not await self._answer(job, method == "HEAD", reader, writer):
                        return
                finally:
                    await self._finish(job)
        except (ConnectionError, OSError) as exc:
            logger.debug("relay connection ended: %s", exc)
        finally:
            writer.close()

    async def _answer(
        self, job: Job, head_only: bool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Writes one response; False when the connection must close (the body was cut short)."""
        # RFC 9110 6.4.1: these answers have no body, whatever their fields say.
        head_only = head_only or job.status in (204, 304) or job.status < 200
        chunked = job.stream is not None and not any(k.lower() == "content-length" for k, _ in job.headers)
        lines = [f"HTTP/1.1 {job.status} {job.reason or 'OK'}"]
        lines += [f"{k}: {v}" for k, v in job.headers]
        if chunked and not head_only:
            lines.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if head_only:
            await writer.drain()
            return True
        if job.body is not None:
            writer.write(job.body)
            await writer.drain()
            await _drain(reader)
            return False
        if job.file is not None and job.sha256 is not None:
            return await self._send_verified(job, writer)
        if job.file is not None:
            await writer.drain()
            await asyncio.get_running_loop().sendfile(writer.transport, job.file, job.offset, job.length)
            return True
        assert job.stream is not None
        try:
            async for chunk in job.stream:
                if chunked:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    writer.write(chunk)
                await writer.drain()
        except Exception as exc:
            # Closing without the last chunk (or short of Content-Length) makes mitmproxy and the client
            # see a broken download rather than a complete-looking wrong one.
            logger.warning("download cut short mid-stream: %s", exc)
            writer.transport.abort()
            return False
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _send_verified(self, job: Job, writer: asyncio.StreamWriter) -> bool:
        """Sends a stored file while hashing it, holding the last chunk back until the hash is known: a body
        that rotted on disk since it was last checked reaches the client cut short, never whole and wrong."""
        assert job.file is not None
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        pending = b""
        while chunk := await loop.run_in_executor(None, _read_hashed, job.file, digest):
            if pending:
                writer.write(pending)
                await writer.drain()
            pending = chunk
        if digest.hexdigest() != job.sha256:
            logger.warning("a cached body changed on disk while being served: the download was cut short")
            if job.on_corrupt is not None:
                await job.on_corrupt()
            writer.transport.abort()
            return False
        writer.write(pending)
        await writer.drain()
        return True


async def _skip_body(head: bytes, reader: asyncio.StreamReader) -> bool:
    """Reads past a request body of a declared length (the addon sends none: this only guards against
    reading one as the next request); False when there is one it cannot skip (chunked, or too large)."""
    fields = head.lower()
    if b"\r\ntransfer-encoding:" in fields:
        return False
    _, found, rest = fields.partition(b"\r\ncontent-length:")
    if not found:
        return True
    length = rest.split(b"\r\n", 1)[0].strip()
    if not length.isdigit() or int(length) > _HEAD_LIMIT:
        return False
    try:
        await reader.readexactly(int(length))
    except asyncio.IncompleteReadError:
        return False
    return True


async def _drain(reader: asyncio.StreamReader) -> None:
    """Reads and drops what mitmproxy still streams of a refused request, until it closes or goes quiet: the
    client must be able to finish sending before it reads the refusal, and nothing of it may be kept."""
    try:
        while await asyncio.wait_for(reader.read(_FILE_CHUNK), _IDLE):
            pass
    except (TimeoutError, ConnectionError, OSError):
        pass


def _read_hashed(file: BinaryIO, digest: hashlib._Hash) -> bytes:
    chunk = file.read(_FILE_CHUNK)
    digest.update(chunk)
    return chunk
