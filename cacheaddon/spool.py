"""Collects a body while it streams to the client: hashed, in memory while small, then in a temporary file.

Disk writes run in a thread, one after another, while the next chunks keep streaming (a bounded queue
between them), so neither a slow disk nor a full one ever stalls or breaks the client's download.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

logger = logging.getLogger(__name__)

_QUEUE = 8  # chunks in flight to the disk: bounds memory when the disk is slower than the network


@dataclass
class Spooled:
    data: bytes | None  # small bodies stay in memory
    path: str | None  # larger ones were written to this temporary file
    size: int
    sha256: str


class Spool:
    def __init__(
        self,
        memory_limit: int,
        open_file: Callable[[], tuple[BinaryIO, str]],
        pool: ThreadPoolExecutor,
        size_limit: int,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self._memory_limit, self._size_limit = memory_limit, size_limit
        self._open_file = open_file  # called only once the body outgrows memory
        self._pool = pool
        # Told how many bytes the file holds after each write: readers of a shared download may read that far.
        self._on_flush = on_flush
        self.flushed = 0
        self._buffer: list[bytes] = []
        self._hash = hashlib.sha256()
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._file: BinaryIO | None = None
        self.path: str | None = None
        self.size = 0
        self.unusable = ""  # why this body cannot be stored, once it cannot

    async def write(self, chunk: bytes) -> None:
        """Never raises for a storage problem: the client's download must go on whatever the disk does."""
        if self.unusable:
            return
        self.size += len(chunk)
        if self.size > self._size_limit:
            await self._give_up("larger than cache_max_object_size")
            return
        if self._queue is None and self.size <= self._memory_limit:
            self._hash.update(chunk)
            self._buffer.append(chunk)
            return
        if self._queue is None:
            self._queue = asyncio.Queue(_QUEUE)
            self._writer = asyncio.get_running_loop().create_task(self._write_all(b"".join(self._buffer)))
            self._buffer = []
        await self._queue.put(chunk)

    async def _write_all(self, already_hashed: bytes) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        try:
            opening = loop.run_in_executor(self._pool, self._open_file)
            try:
                file, self.path = await asyncio.shield(opening)
            except asyncio.CancelledError:  # aborted while the file was being made: remove it once it is
                opening.add_done_callback(_discard_opened)
                raise
            self._file = file
            if already_hashed:
                await loop.run_in_executor(self._pool, self._write, already_hashed)
                self._flushed(len(already_hashed))
            while (chunk := await self._queue.get()) is not None:
                await loop.run_in_executor(self._pool, self._hash_and_write, chunk)
                self._flushed(len(chunk))
        except Exception as exc:  # ENOSPC, EIO, a StoreError from open_file
            logger.warning("cannot write to the cache (%s): this download is passed on but not stored", exc)
            self.unusable = f"cache write failed: {exc}"
            while await self._queue.get() is not None:  # keep the producer from blocking on a full queue
                pass

    def _hash_and_write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self._file.flush()  # what on_flush reports must be in the file, for readers of another descriptor

    def _flushed(self, size: int) -> None:
        self.flushed += size
        if self._on_flush is not None and not self.unusable:
            self._on_flush(self.flushed)

    async def finish(self) -> Spooled | None:
        """The complete body, or None when it could not be kept."""
        if self._queue is not None and self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._queue = self._writer = None
        if self.unusable:
            await self._discard()
            return None
        if self._file is None:
            return Spooled(b"".join(self._buffer), None, self.size, self._hash.hexdigest())
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._file.close)
        except OSError as exc:
            logger.warning("cannot write to the cache (%s): not stored", exc)
            self.unusable = f"cache write failed: {exc}"
            await self._discard()
            return None
        return Spooled(None, self.path, self.size, self._hash.hexdigest())

    async def abort(self) -> None:
        await self._give_up(self.unusable or "aborted")

    async def _give_up(self, reason: str) -> None:
        self.unusable = reason
        self._buffer = []
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._queue = self._writer = None
        await self._discard()

    async def _discard(self) -> None:
        file, path, self._file, self.path = self._file, self.path, None, None
        if file is not None or path is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, _close_and_unlink, file, path)


def _discard_opened(opening: asyncio.Future[tuple[BinaryIO, str]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        _close_and_unlink(*opening.result())


def _close_and_unlink(file: BinaryIO | None, path: str | None) -> None:
    try:
        if file is not None:
            file.close()
    except OSError:
        pass
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
