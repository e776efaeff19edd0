"""The advisories of cache_block_advisories, read from a directory or zip of OSV JSON files and read again
when it changes, without a restart. Reading happens in a thread; a request waits only for the first load
(no malicious version may slip through while the proxy starts) and for a reload it triggered itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import lzma
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cacheaddon import advisories

logger = logging.getLogger(__name__)

# How often (seconds) the path is checked for changes: a stat of a zip, a walk of a directory.
CHECK_INTERVAL = 2.0
# A check slower than this (a walk of a huge tree) spaces the next ones out to ten times its duration.
_SLOW_CHECK = 0.05
_MAX_RECORD = 16 * 1024 * 1024  # an OSV record is a few KB; anything far larger is not one

Signature = str


def check_source(path: Path) -> None:
    """Raises ValueError naming the option when the path is neither a directory nor a zip file."""
    if path.is_dir():
        return
    if not path.exists():
        raise ValueError(f"cache_block_advisories: {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cache_block_advisories: {path} is neither a directory nor a zip file")


def signature(path: Path) -> Signature:
    """What changes when a file is added, removed, replaced or edited: a digest of each file's name, mtime
    and size (an edit that keeps an old mtime, as rsync and unzip do, still changes the name or size)."""
    digest = hashlib.sha256()
    if not path.is_dir():
        st = path.stat()
        digest.update(f"{st.st_mtime_ns} {st.st_size} {st.st_ino}".encode())
        return digest.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".json"):
                full = os.path.join(root, name)
                st = os.stat(full)
                digest.update(
                    f"{full}\0{st.st_mtime_ns} {st.st_size} {st.st_ino}\n".encode("utf-8", "replace")
                )
    return digest.hexdigest()


# What reading one member of a zip can raise beyond OSError: a damaged member (bad CRC, a broken deflate
# stream, cut short), a compression method or encryption this Python cannot read.
_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError)


def read_records(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each JSON file's record (None for one that is not a JSON object, or cannot be read: one damaged file
    does not keep the others out)."""
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in sorted(files):
                if name.endswith(".json"):
                    yield _read_file(Path(root, name))
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".json") and not info.is_dir():
                yield _read_member(archive, info)


def _read_file(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > _MAX_RECORD:
            return None
        return _parse(path.read_bytes())
    except OSError:  # removed or unreadable meanwhile: the next change is read again
        return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, Any] | None:
    if info.file_size > _MAX_RECORD:
        return None
    try:
        return _parse(archive.read(info))
    except _MEMBER_ERRORS:
        return None


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    return record if isinstance(record, dict) else None


def load(path: Path, include_all: bool) -> tuple[advisories.AdvisoryIndex, Signature]:
    """In a thread: the index and the signature it was read at (taken first: a change during the read
    makes the next check read again)."""
    sig = signature(path)
    return advisories.build_index(read_records(path), include_all), sig


class AdvisoryFeed:
    def __init__(self, path: Path, include_all: bool, interval: float = CHECK_INTERVAL) -> None:
        self.path, self.include_all, self.interval = path, include_all, interval
        self.index: advisories.AdvisoryIndex | None = None
        self.generation = 0  # counts loads: part of the filtered documents' validators
        self._signature: Signature | None = None
        self._checked = 0.0
        self._cost = 0.0  # seconds the last check took: checks of a huge tree are spaced out further
        self._busy: asyncio.Task[None] | None = None

    async def current(self) -> advisories.AdvisoryIndex:
        """The index, read again first if the path changed since it was read (checked at most every
        `interval` seconds). If the path cannot be read, the last index stays in force, loudly."""
        now = time.monotonic()
        if self.index is None or now - self._checked >= max(self.interval, 10 * self._cost):
            self._checked = now
            if self._busy is None:
                self._busy = asyncio.get_running_loop().create_task(self._refresh())
            busy = self._busy
            try:
                await asyncio.shield(busy)
            finally:
                if busy.done() and self._busy is busy:
                    self._busy = None
        return self.index if self.index is not None else advisories.EMPTY

    async def _refresh(self) -> None:
        try:
            started = time.monotonic()
            sig = await asyncio.to_thread(signature, self.path)
            took = time.monotonic() - started
            self._cost = took if took > _SLOW_CHECK else 0.0
            if sig == self._signature and self.index is not None:
                return
            index, sig = await asyncio.to_thread(load, self.path, self.include_all)
        except (OSError, zipfile.BadZipFile) as exc:
            logger.warning(
                "cache_block_advisories: cannot read %s (%s): keeping what was loaded", self.path, exc
            )
            return
        except Exception as exc:  # whatever the files hold, answering goes on with what was loaded
            logger.warning(
                "cache_block_advisories: could not load %s (%s: %s): keeping what was loaded",
                self.path,
                type(exc).__name__,
                exc,
            )
            return
        first = self.index is None
        self.index, self._signature = index, sig
        self.generation += 1
        logger.info(
            "cache_block_advisories: %s %d advisories naming PyPI or npm packages from %s%s",
            "loaded" if first else "reloaded",
            index.records,
            self.path,
            f" ({index.skipped} files were not OSV JSON)" if index.skipped else "",
        )
