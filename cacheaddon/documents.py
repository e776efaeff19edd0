"""Reading an index document out of a Reply, whole, to change it before it is sent (endpoints rewrite its
links, the guard filters its versions): from memory, from a cached file (checked against its digest) or
from a miss streaming in, up to a limit beyond which it is served as it is."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from collections.abc import AsyncIterator

from cacheaddon import decoding, responses
from cacheaddon.keys import redact
from cacheaddon.relay import Job
from cacheaddon.reply import Reply

logger = logging.getLogger(__name__)

# Documents are changed in memory: larger ones (raw or decoded) are served as the upstream sent them.
LIMIT = 128 * 1024 * 1024


class Unread(enum.Enum):
    TOO_LARGE = "too large"  # the reply is left as it was, to be sent unchanged
    FAILED = "failed"  # the reply is used up: answer with an error


def status_fields(reply: Reply) -> tuple[int, list[tuple[str, str]]]:
    if reply.response is not None:
        return reply.response.status_code, list(reply.response.headers.items(multi=True))
    assert reply.job is not None
    return reply.job.status, reply.job.headers


def field(fields: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in fields if k.lower() == name), None)


async def read_whole(reply: Reply, url: str, purpose: str, limit: int = LIMIT) -> bytes | Unread:
    """The reply's body as sent (still content-encoded). `purpose` completes the log lines: 'to rewrite'."""
    job = reply.job
    if job is not None and job.file is not None and job.length > limit:
        logger.warning("%s: document too large %s (%d bytes): served as is", redact(url), purpose, job.length)
        return Unread.TOO_LARGE
    if job is not None and job.stream is not None:  # a miss streaming in: read it, up to the limit
        try:
            parts, whole = await _read_up_to(job.stream, limit)
        except Exception as exc:
            await job.aclose()
            logger.warning("%s: could not read a document %s: %s", redact(url), purpose, exc)
            return Unread.FAILED
        if not whole:
            logger.warning("%s: document too large %s: served as is", redact(url), purpose)
            job.stream = _chain(parts, job.stream)
            return Unread.TOO_LARGE
        await job.aclose()
        return b"".join(parts)
    body = await _materialize(reply, purpose)
    return Unread.FAILED if body is None else body


def unreadable(reply: Reply, url: str, doing: str) -> Reply:
    """The 502 for a document that could not be read whole (its reply is used up)."""
    detail = f"document could not be read for {doing}"
    return Reply(reply.outcome, detail, responses.error(502, url, detail, reply.outcome))


def decode(body: bytes, content_encoding: str, limit: int = LIMIT) -> bytes | None:
    """In a thread: the body without its content coding, None if it cannot be decoded within `limit`."""
    try:
        return decoding.decode(body, content_encoding, limit)
    except ValueError:
        return None


async def _read_up_to(stream: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """The chunks of `stream` until it ends (True) or passes `limit` bytes (False: the rest is unread)."""
    parts, size = [], 0
    async for chunk in stream:  # leaving the loop early does not close the stream
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return parts, False
    return parts, True


async def _chain(parts: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        for part in parts:
            yield part
        async for chunk in rest:
            yield chunk
    finally:
        if hasattr(rest, "aclose"):
            await rest.aclose()


async def _materialize(reply: Reply, purpose: str) -> bytes | None:
    """The whole body of a reply held in memory or in a file."""
    if reply.response is not None:
        return reply.response.raw_content or b""
    job: Job | None = reply.job
    assert job is not None
    try:
        data = job.body or b""
        if job.file is not None:
            job.file.seek(job.offset)
            data = await asyncio.to_thread(job.file.read, job.length)
            if job.sha256 is not None and hashlib.sha256(data).hexdigest() != job.sha256:
                logger.warning("a cached document changed on disk: dropped, will fetch again")
                if job.on_corrupt is not None:
                    await job.on_corrupt()
                return None
        return data
    except Exception as exc:
        logger.warning("could not read a document %s: %s", purpose, exc)
        return None
    finally:
        await job.aclose()
