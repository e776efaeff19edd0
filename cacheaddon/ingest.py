"""Admits a complete download into the store: checked against the digest its index published, stored, and
(for an index document) mined for the digests it publishes for its files. Hashing and parsing run in the I/O
pool, database work on the database thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cacheaddon import decoding, digests
from cacheaddon.entry import Entry
from cacheaddon.keys import redact
from cacheaddon.store import Store, StoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Index documents larger than this (decoded) are not searched for digests: parsing costs ~5x their size in
# memory, and the client checks the digests itself anyway.
_DOC_LIMIT = 32 * 1024 * 1024


class Ingest:
    def __init__(
        self,
        store: Store,
        pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
        on_stored: Callable[[str, Entry, bool], None] | None = None,
    ) -> None:
        self.store = store
        self.db_pool, self.pool = pools
        # Told of every entry stored (True: with a new body; False: only its record changed), to share it.
        self.on_stored = on_stored

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db_pool, fn, *args)

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def commit(self, key: str, entry: Entry, body: bytes | str, share: bool = True) -> bool:
        """Stores a complete body unless it contradicts the digest its index published; then remembers the
        digests an index document publishes for its files. Hashing and parsing run off the database thread.
        True when stored; share=False for what came from the shared tier."""
        stored = False
        try:
            expected = await self._db(self.store.expected_digest, entry.url)
            if expected is not None and not await self._disk(_digest_ok, expected, entry, body):
                self.store.integrity_failed("published digest")
                logger.warning(
                    "%s does not match the digest its index published (%s): not cached",
                    redact(entry.url),
                    expected,
                )
                if isinstance(body, str):
                    await self._disk(self.store.discard, body)
                return False
            doc = await self._disk(_document, entry, body)
            await self._db(self.store.commit, key, entry, body)
            stored = True
            if isinstance(body, str):
                await self._db(self.store.remember_verified, entry)
            if doc is not None:
                found = await self._disk(
                    digests.published, entry.url, entry.header("content-type") or "", doc
                )
                if found:
                    await self._db(self.store.record_digests, found)
        except (StoreError, OSError) as exc:
            level = "disk full" if isinstance(exc, StoreError) and exc.no_space else "store error"
            logger.warning("could not store %s (%s): %s", redact(entry.url), level, exc)
            if not stored:
                return False
        if share and self.on_stored is not None:
            self.on_stored(key, entry, True)
        return True

    async def refresh(self, key: str, entry: Entry) -> None:
        """Stores a refreshed record (after a 304) whose body is unchanged."""
        try:
            await self._db(self.store.put_record, key, entry)
        except StoreError as exc:
            logger.warning("could not update the cache record of %s: %s", redact(entry.url), exc)
            return
        if self.on_stored is not None:
            self.on_stored(key, entry, False)


def _digest_ok(expected: str, entry: Entry, body: bytes | str) -> bool:
    algo = expected.partition("=")[0]
    if algo == "sha256":
        return digests.matches(expected, {"sha256": entry.sha256}) is not False
    digest = digests.hasher(expected)
    if digest is None:
        return True  # an algorithm this Python lacks: nothing to check against
    if isinstance(body, bytes):
        digest.update(body)
    else:
        with open(body, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digests.matches(expected, {algo: digest.hexdigest()}) is not False


def _document(entry: Entry, body: bytes | str) -> bytes | None:
    """An index document's decoded bytes, to look for published digests in; None for anything else."""
    content_type = entry.header("content-type") or ""
    if (
        entry.status != 200
        or entry.size > _DOC_LIMIT
        or not ("json" in content_type or "html" in content_type)
    ):
        return None
    data = body if isinstance(body, bytes) else Path(body).read_bytes()
    try:
        return decoding.decode(data, entry.header("content-encoding") or "", _DOC_LIMIT)
    except ValueError:  # undecodable, or a compression bomb
        return None
