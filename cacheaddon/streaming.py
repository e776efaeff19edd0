"""A streamed miss: one task reads the upstream body into the spool (and from there the store) while the
client that asked gets each chunk as it arrives, and joiners of its flight read the spool's file.

The task is not driven by any one client: when the owner's client leaves, the download goes on as long as
a joiner reads it (the owner's client no longer holds it back), and stops once nobody does, as a lone
download always did. The owner's client is fed from memory, not from the file, so that a failing disk (or a
body grown past cache_max_object_size) costs it nothing; the joiners, who depend on the file, are cut off
then, and later arrivals fetch on their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from cacheaddon import tasks
from cacheaddon.entry import Entry
from cacheaddon.singleflight import ABANDONED, ALONE, Flight, Growing, Kind, Landing
from cacheaddon.spool import Spool, Spooled
from cacheaddon.upstream import UpstreamFailure

logger = logging.getLogger(__name__)

# Chunks waiting for the owner's client: the download runs at most this far ahead of it while it is there.
_OWNER_QUEUE = 4

# Stores a complete body; the entry it was stored as, or None when it is not to be stored.
Commit = Callable[[Spooled], Awaitable[Entry | None]]


def spool(
    memory_limit: int,
    new_file: Callable[[], tuple[BinaryIO, str]],
    discard: Callable[[str], None],
    pool: ThreadPoolExecutor,
    size_limit: int,
    growing: Growing | None,
) -> Spool:
    """The spool of a streamed body; one that joiners read (growing) is written to a file from the first
    byte, and the descriptor they read it with is opened with the file."""
    if growing is None:
        return Spool(memory_limit, new_file, pool, size_limit)
    shared = growing

    def open_file() -> tuple[BinaryIO, str]:
        file, path = new_file()
        try:
            shared.opened(path)
        except OSError:
            file.close()
            discard(path)
            raise
        return file, path

    return Spool(0, open_file, pool, size_limit, growing.grew)


class Pump:
    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        spool: Spool,
        commit: Commit,
        on_failure: Callable[[UpstreamFailure], None],
        close: Callable[[], Awaitable[None]],
        flight: Flight | None = None,
        growing: Growing | None = None,
    ) -> None:
        """chunks: the upstream body (raises UpstreamFailure when it breaks off); close releases the
        upstream; growing: the body as joiners of `flight` read it (the spool must report to it)."""
        self._chunks, self._spool, self._commit = chunks, spool, commit
        self._on_failure, self._close = on_failure, close
        self._flight, self._growing = flight, growing
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_OWNER_QUEUE)
        self._owner_here = True
        self._ending = False  # the upstream body ended (whole or not): what follows is never cancelled
        # A task cancelled before its first step never runs its body (no landing, no cleanup): until it has
        # started, _maybe_stop leaves the stopping to _run.
        self._started = False
        if growing is not None:
            growing.on_idle = self._maybe_stop
        self._task = tasks.spawn(self._run())

    def _land(self, landing: Landing) -> None:
        if self._growing is not None and landing.kind is not Kind.STORED:
            self._growing.fail(landing.detail or landing.kind.value)
        if self._flight is not None:
            self._flight.land(landing)

    async def _run(self) -> None:
        self._started = True
        done = False
        try:
            try:
                if self._unread():  # everyone left before it started (a reply discarded at once)
                    raise asyncio.CancelledError
                async for chunk in self._chunks:
                    await self._spool.write(chunk)
                    if self._spool.unusable and self._growing is not None and not self._growing.ended:
                        # Joiners read the file, which will not be whole: cut off; later ones fetch alone.
                        self._land(Landing(Kind.ALONE, detail=f"not stored: {self._spool.unusable}"))
                        self._maybe_stop()
                    if self._flight is not None:
                        self._flight.touch()
                    if self._owner_here:
                        await self._queue.put(chunk)
            except UpstreamFailure as exc:
                self._ending = True
                self._on_failure(exc)
                self._land(Landing(Kind.FAILED, detail=str(exc), failure=exc.failure))
                await self._to_owner(exc)
                return
            self._ending = True
            body = await self._spool.finish()
            done = True
            entry = await self._commit(body) if body is not None else None
            if body is not None and self._growing is not None:
                self._growing.complete(body.sha256, body.size)
            self._land(Landing(Kind.STORED, entry) if entry is not None else ALONE)
            await self._to_owner(None)
        except asyncio.CancelledError:
            self._land(ABANDONED)
            raise
        except Exception as exc:
            self._ending = True
            logger.exception("a streamed download failed")
            self._land(ABANDONED)
            await self._to_owner(exc)
        finally:
            if not done:
                await self._spool.abort()
            await self._close()

    async def _to_owner(self, item: BaseException | None) -> None:
        if self._owner_here:
            await self._queue.put(item)

    async def owner(self) -> AsyncIterator[bytes]:
        """The chunks for the owner's client; the last one only once the body is committed, so that asking
        again at once is a hit."""
        pending = b""
        try:
            while (item := await self._queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if pending:
                    yield pending
                pending = item
            if pending:
                yield pending
        finally:
            await self.owner_left()

    async def owner_left(self) -> None:
        """The owner's client is done or gone (idempotent)."""
        if not self._owner_here:
            return
        self._owner_here = False
        while not self._queue.empty():  # frees a download waiting to hand it a chunk
            self._queue.get_nowait()
        self._maybe_stop()

    def _unread(self) -> bool:
        readers = self._growing.readers if self._growing is not None and not self._growing.ended else 0
        return not self._owner_here and readers == 0

    def _maybe_stop(self) -> None:
        """Stops the download once no client reads it any more."""
        if self._unread() and self._started and not self._ending and not self._task.done():
            self._task.cancel()
