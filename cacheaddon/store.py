"""The diskcache-backed store: records by key, bodies by sha256. Knows nothing of HTTP.

Layout in one diskcache directory (process-safe, so several mitmdump processes may share it):
  "m <key>"      -> the Entry record, as JSON bytes (never pickle: a cache directory is not code)
  "b <sha256>"   -> the body; content-addressed, so a record and its body can never disagree silently
  "v <group>"    -> the keys stored for one URL and credential owner (keys.variant_group), for content
                    negotiation; a key whose record was evicted stays listed until the group is next written
  "salt"         -> random bytes that credential fingerprints are hashed with
Bodies are written to a temporary file first and moved into diskcache's directory only when complete, so a
crash can leave an orphan file but never a half-written body that a record points to.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import diskcache

from cacheaddon.entry import Entry
from cacheaddon.keys import redact, variant_group

logger = logging.getLogger(__name__)

_TMP = "tmp"
_ORPHAN_AGE = 3600  # seconds; an older temporary file belongs to a writer that died
# diskcache's own read (Cache.get) is a write transaction under its least-recently-used policy (it records
# the access time), so every hit took SQLite's write lock and processes sharing a directory queued on it.
# Our reads are plain SELECTs (diskcache's fast path); the access times they would record are kept in memory
# and written in one transaction before the next store, or after ACCESS_FLUSH seconds (flush_access), so
# eviction still takes the least recently used rows first.
_SELECT = (
    "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
    " AND (expire_time IS NULL OR expire_time > ?)"
)
_TOUCH = "UPDATE Cache SET access_time = MAX(access_time, ?) WHERE key = ? AND raw = 1"
ACCESS_FLUSH = 30.0  # seconds
# Body files up to this size are read and hashed by lookup() itself (a fraction of a millisecond, the GIL
# released): most package files, answered in one trip to the database thread instead of two.
_READ_IN_LOOKUP = 256 * 1024
# Left free below the size limit after each store: room for the rows and log pages the next store writes
# before it shrinks the cache again.
_HEADROOM = 256 * 1024
# Keys listed per variant group, the most recently stored kept: clients send only a handful of distinct
# Accept and Accept-Encoding values, and a client making up new ones must not grow a row without bound.
_VARIANTS_LIMIT = 32


class StoreError(Exception):
    """Any failure of the cache storage (full disk, unreadable database, permissions)."""

    def __init__(self, message: str, no_space: bool = False) -> None:
        super().__init__(message)
        self.no_space = no_space


@dataclass(frozen=True)
class Body:
    """A verified body: in memory when small, else an open file to send from (the caller closes it)."""

    data: bytes | None
    file: BinaryIO | None
    size: int
    source: FileStamp | None = None  # the file the data was read from, as it was then


@dataclass(frozen=True)
class FileStamp:
    """A file as it was when read: any write to it changes its size or mtime (or, replaced, its inode)."""

    path: str
    inode: int
    size: int
    mtime_ns: int


class _Complete:
    """A finished temporary file, handed to diskcache to be moved (not copied) into place."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size


class _Disk(diskcache.Disk):  # type: ignore[misc]
    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if isinstance(value, _Complete):
            filename, full_path = self.filename(key, value)
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            os.replace(value.path, full_path)
            return value.size, diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)


def _salt(directory: Path) -> bytes:
    """The directory's random salt, in a file of its own: an LRU entry could be evicted, and a new salt
    would orphan every entry stored with credentials and split processes sharing the directory."""
    path = directory / "salt"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".salt-")
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        try:
            os.link(tmp, path)  # atomic and fails if another process won the race: everyone reads the winner
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    salt = path.read_bytes()
    if len(salt) != 32:
        raise OSError(f"{path} is damaged; delete it (credentialed entries are then refetched)")
    return salt


def _wrap(exc: BaseException, what: str) -> StoreError:
    no_space = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    if "database or disk is full" in str(exc):
        no_space = True
    return StoreError(f"{what}: {exc}", no_space=no_space)


class Store:
    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory = directory
        self.size_limit = size_limit
        try:
            # Private to the proxy's user: records hold URLs (with any token in their query) and private
            # answers. An existing directory keeps the mode its owner gave it.
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
            self._cache = diskcache.Cache(
                str(directory),
                size_limit=size_limit,
                eviction_policy="least-recently-used",
                disk=_Disk,
                disk_min_file_size=64 * 1024,
                # Eviction is ours (shrink): diskcache's own, ten least recently used rows per write once over
                # the limit, took a body with the record written right after it.
                cull_limit=0,
                # The write-ahead log counts against the size limit (see shrink): checkpoint it at 1 MiB
                # (SQLite's default is 4 MiB) and cut it back to that size afterwards (by default it stays at
                # its largest).
                sqlite_wal_autocheckpoint=256,
                sqlite_journal_size_limit=1024 * 1024,
            )
            self.salt = _salt(directory)
            self._tmp = directory / _TMP
            self._tmp.mkdir(exist_ok=True)
        except Exception as exc:
            raise _wrap(exc, f"cannot open cache_dir {directory}") from exc
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._accessed: dict[str, float] = {}  # diskcache key -> when it was last read, not yet written
        self._flushed = time.monotonic()
        self._version_db: sqlite3.Connection | None = None
        self._remove_orphans()

    def close(self) -> None:
        if self._version_db is not None:
            self._version_db.close()
        self._cache.close()

    def _remove_orphans(self) -> None:
        cutoff = time.time() - _ORPHAN_AGE
        for path in self._tmp.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass

    # reads (no write transaction) and the access times they leave to write

    def _read(self, key: str, read: bool = False) -> Any:
        """diskcache's Cache.get without its write: the value, an open file (read=True), or None."""
        rows = self._cache._sql(_SELECT, (key, time.time())).fetchall()
        if not rows:
            return None
        ((mode, filename, value),) = rows
        try:
            found = self._cache.disk.fetch(mode, filename, value, read)
        except OSError:  # its file vanished (diskcache's get answers None too)
            return None
        with self._lock:
            self._accessed[key] = time.time()
        return found

    def note_access(self, keys: tuple[str, ...], sha256: str) -> None:
        """Records that the records under `keys` and their body were just used (for eviction), as reading
        them does, without reading them."""
        now = time.time()
        with self._lock:
            for key in keys:
                self._accessed["m " + key] = now
            self._accessed["b " + sha256] = now

    def take_access_flush(self) -> bool:
        """True (once per ACCESS_FLUSH seconds) when recorded access times wait to be written: the caller
        then has flush_access run on the database thread."""
        with self._lock:
            if not self._accessed or time.monotonic() - self._flushed < ACCESS_FLUSH:
                return False
            self._flushed = time.monotonic()
            return True

    def flush_access(self) -> None:
        """Writes the access times recorded since the last flush, in one transaction (never raises)."""
        with self._lock:
            pending, self._accessed = self._accessed, {}
            self._flushed = time.monotonic()
        if not pending:
            return
        try:
            with self._cache.transact():
                self._cache._con.executemany(_TOUCH, [(at, key) for key, at in pending.items()])
        except Exception as exc:  # they only order eviction: never worth failing a store or a hit for
            logger.warning("could not record when %d cache entries were used: %s", len(pending), exc)

    def data_version(self) -> int | None:
        """SQLite's data_version as a connection that never writes sees it: it changes whenever any other
        connection (another thread's or another process's) commits, so a record read while it had a value is
        still current while it keeps it. Cheap (shared memory; two non-blocking locks): meant for the event
        loop's thread, the only caller. None when it cannot be read at once."""
        try:
            if self._version_db is None:
                self._version_db = sqlite3.connect(
                    self.directory / "cache.db", timeout=0, isolation_level=None, check_same_thread=False
                )
            row = self._version_db.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return int(row[0])

    # records

    def get(self, key: str) -> Entry | None:
        try:
            raw = self._read("m " + key)
        except Exception as exc:
            raise _wrap(exc, "reading a record") from exc
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            logger.warning("corrupt cache record for key %s: dropped", redact(key.split(chr(10), 1)[0]))
            self.delete(key)
            return None
        return Entry.from_record(record)

    def put_record(self, key: str, entry: Entry) -> None:
        try:
            with self._cache.transact():
                self._cache.set("m " + key, json.dumps(entry.to_record()).encode())
                self._list_variant(key, stored=True)
        except Exception as exc:
            raise _wrap(exc, "writing a record") from exc

    def delete(self, key: str) -> None:
        try:
            with self._cache.transact():
                self._cache.delete("m " + key)
                self._list_variant(key, stored=False)
        except Exception as exc:
            raise _wrap(exc, "deleting a record") from exc

    # digests published by index documents, keyed by canonical file URL

    def expected_digest(self, url: str) -> str | None:
        try:
            value = self._read("d " + url)
        except Exception as exc:
            raise _wrap(exc, "reading a digest") from exc
        return value if isinstance(value, str) else None

    def record_digests(self, digests: dict[str, str]) -> None:
        try:
            with self._cache.transact():
                for url, digest in digests.items():
                    self._cache.set("d " + url, digest)
        except Exception as exc:
            raise _wrap(exc, "recording digests") from exc

    # bodies

    def new_body_file(self) -> tuple[BinaryIO, str]:
        """A temporary file in the cache directory (same filesystem, so committing it is a rename)."""
        try:
            fd, path = tempfile.mkstemp(dir=self._tmp, prefix=f"{os.getpid()}-", suffix=".part")
        except OSError as exc:
            raise _wrap(exc, "creating a temporary file") from exc
        return os.fdopen(fd, "wb"), path

    def discard(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def commit(self, key: str, entry: Entry, body: bytes | str) -> None:
        """Stores a complete body (bytes, or the path of a finished temporary file) and then its record."""
        self.flush_access()  # before any eviction this store may cause
        try:
            if not self._cache.touch("b " + entry.sha256):
                if isinstance(body, bytes):
                    value: Any = body
                elif entry.size < 64 * 1024:
                    value = Path(body).read_bytes()
                else:
                    value = _Complete(body, entry.size)
                self._cache.set("b " + entry.sha256, value)
        except Exception as exc:
            raise _wrap(exc, "storing a body") from exc
        finally:
            if isinstance(body, str):
                self.discard(body)
        self.put_record(key, entry)
        self.shrink()

    def shrink(self) -> None:
        """Evicts least recently used rows until the directory is under size_limit again, after each store.
        diskcache's own eviction culls ten rows at a time (per write, and in Cache.cull()): too few for a
        large body, and in a cache of a few large bodies the newest go with the oldest; its volume leaves out
        the write-ahead log and our unfinished bodies, which count here. Rows go in access order, only as
        many as the excess needs."""
        try:
            target = self.size_limit - _HEADROOM
            while (excess := self._cache.volume() + self._unaccounted_size() - target) > 0:
                victims, freed = [], 0
                for key, size in self._least_recently_used(64):
                    victims.append(key)
                    freed += size
                    if freed >= excess:
                        break
                if not victims:
                    return
                with self._cache.transact():
                    for key in victims:
                        self._cache.delete(key)
                if self._evict_listener is not None:
                    self._evict_listener(len(victims), freed)
        except Exception as exc:
            raise _wrap(exc, "evicting entries") from exc

    def _least_recently_used(self, count: int) -> list[tuple[str, int]]:
        # diskcache has no public way to list keys by access time; this is the query its own cull runs for
        # eviction_policy="least-recently-used" (on its Cache_access_time index).
        rows = self._cache._sql("SELECT key, size FROM Cache ORDER BY access_time LIMIT ?", (count,))
        return [(str(key), int(size)) for key, size in rows.fetchall()]

    def _unaccounted_size(self) -> int:
        total = 0
        paths = [self.directory / "cache.db-wal", self.directory / "cache.db-shm", *self._tmp.iterdir()]
        for path in paths:
            try:
                total += path.stat().st_size
            except OSError:  # gone meanwhile
                pass
        return total

    def read_body(self, entry: Entry, inline_limit: int = 0) -> Body | None:
        """The entry's body, checked against its sha256; None (and the body dropped) when missing or corrupt.
        Bodies up to inline_limit bytes come back in memory, larger ones as an open file."""
        value = self.open_body(entry)
        return None if value is None else self.check_body(entry, value, inline_limit)

    def lookup(
        self, keys: tuple[str, ...], inline_limit: int, held: Callable[[str], bool] = lambda sha256: False
    ) -> tuple[Entry | None, Body | BinaryIO | None | bool]:
        """The newest record found under `keys` and its body, in one trip to the database thread (the hit
        path): a checked Body when that is cheap (bytes from the database, a small file, or a large file
        already verified and unchanged: the relay hashes it again while sending), else the open file, for
        check_body in the I/O pool; False (not read) when the caller holds the body already (`held`)."""
        entry = self.newest(keys)
        if entry is None:
            return None, None
        if held(entry.sha256):
            with self._lock:
                self._accessed["b " + entry.sha256] = time.time()
            return entry, False
        value = self.open_body(entry)
        if value is None:
            return entry, None
        if isinstance(value, bytes) or entry.size <= _READ_IN_LOOKUP:
            return entry, self.check_body(entry, value, inline_limit)
        if entry.size > inline_limit and self._known_good(entry, value):
            return entry, Body(None, value, entry.size)
        return entry, value

    def newest(self, keys: tuple[str, ...]) -> Entry | None:
        """The newest record found under `keys`."""
        found = [e for e in map(self.get, keys) if e is not None]
        return max(found, key=lambda e: e.stored_at, default=None)

    def _known_good(self, entry: Entry, handle: BinaryIO) -> bool:
        st = os.fstat(handle.fileno())
        with self._lock:
            return self._verified.get(entry.sha256) == (st.st_ino, st.st_size, st.st_mtime_ns)

    def open_body(self, entry: Entry) -> bytes | BinaryIO | None:
        """The stored body as diskcache gives it (the database part of read_body: bytes or an open file)."""
        try:
            value = self._read("b " + entry.sha256, read=True)
            if value is None:
                # diskcache answers None when a body's file vanished but its row stayed; drop the row too, or
                # the next commit would only touch it and the body could never be stored again.
                self._cache.delete("b " + entry.sha256)
        except Exception as exc:
            raise _wrap(exc, "reading a body") from exc
        return value  # type: ignore[no-any-return]

    def remember_verified(self, entry: Entry) -> None:
        """After a commit: the body was hashed as it arrived, so its first hit need not hash it again."""
        value = self.open_body(entry)
        if value is not None and not isinstance(value, bytes):
            with value:
                st = os.fstat(value.fileno())
                with self._lock:
                    self._verified[entry.sha256] = (st.st_ino, st.st_size, st.st_mtime_ns)

    def check_body(self, entry: Entry, value: bytes | BinaryIO, inline_limit: int) -> Body | None:
        """The file-reading part of read_body: hashes, and drops the body when it does not match."""
        if isinstance(value, bytes):
            if hashlib.sha256(value).hexdigest() == entry.sha256:
                return Body(value, None, len(value))
            self._corrupt(entry)
            return None
        try:
            if entry.size <= inline_limit:
                # Read into memory anyway, so hashing it always costs little: no trust in earlier checks.
                with value:
                    st = os.fstat(value.fileno())
                    data = value.read()
                body = self.check_body(entry, data, inline_limit)
                source = FileStamp(str(value.name), st.st_ino, st.st_size, st.st_mtime_ns)
                return None if body is None else Body(data, None, len(data), source)
            ok = self._verify_file(value, entry)
        except OSError as exc:
            value.close()
            raise _wrap(exc, "reading a body") from exc
        if not ok:
            value.close()
            self._corrupt(entry)
            return None
        value.seek(0)
        # Larger files are trusted from an earlier check only until they are sent: the relay hashes them on
        # the way and cuts the download short if they no longer match.
        return Body(None, value, entry.size)

    def unchanged(self, source: FileStamp) -> bool:
        """Whether a file is still as it was when read (a stat: metadata, from the kernel's cache)."""
        try:
            st = os.stat(source.path)
        except OSError:
            return False
        return (st.st_ino, st.st_size, st.st_mtime_ns) == (source.inode, source.size, source.mtime_ns)

    def verify_whole(self, entry: Entry, handle: BinaryIO) -> bool:
        """Hashes the whole file now, whatever earlier checks said (a byte range is cut from a file, so the
        relay cannot check it on the way); False (and the body dropped) when it does not match."""
        try:
            handle.seek(0)
            ok = self._verify_file(handle, entry, trust_stamp=False)
            handle.seek(0)
        except OSError as exc:
            raise _wrap(exc, "reading a body") from exc
        if not ok:
            self._corrupt(entry)
        return ok

    def _verify_file(self, handle: BinaryIO, entry: Entry, trust_stamp: bool = True) -> bool:
        # Hashing a large file on every hit would cost more than serving it; re-hash only when the file
        # changed (inode, size or mtime) since this process last checked it.
        st = os.fstat(handle.fileno())
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if trust_stamp and self._verified.get(entry.sha256) == stamp:
                return True
        if st.st_size != entry.size:
            return False
        digest = hashlib.sha256()
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            return False
        with self._lock:
            self._verified[entry.sha256] = stamp
        return True

    def _corrupt(self, entry: Entry) -> None:
        logger.warning(
            "cached body of %s does not match its sha256: dropped, will fetch again", redact(entry.url)
        )
        self.drop_body(entry)

    def drop_body(self, entry: Entry) -> None:
        self.integrity_failed("body")
        with self._lock:
            self._verified.pop(entry.sha256, None)
        try:
            self._cache.delete("b " + entry.sha256)
        except Exception as exc:
            logger.warning("could not drop the corrupt body: %s", exc)

    def volume(self) -> int:
        return int(self._cache.volume())

    # --- operations: raw scans and batch edits for the operator commands (inventory.py, bundle.py) and the
    # counters. Reads here go straight to diskcache's table, so that listing or bundling a cache does not
    # count as using its entries (diskcache's get() moves them up the LRU order); pickled values, which
    # only a foreign writer could have left, are never loaded.

    _integrity_listener: Callable[[str], None] | None = None
    _evict_listener: Callable[[int, int], None] | None = None

    def integrity_failed(self, kind: str) -> None:
        """Tells the counters about a body that did not match its digest ('body', 'published digest')."""
        if self._integrity_listener is not None:
            self._integrity_listener(kind)

    def watch(self, on_integrity: Callable[[str], None], on_evict: Callable[[int, int], None]) -> None:
        """Reports integrity failures and LRU evictions (rows, bytes; see shrink) to the counters."""
        self._integrity_listener = on_integrity
        self._evict_listener = on_evict

    def record_rows(self) -> Iterator[tuple[str, Entry | None, float]]:
        """(key, entry or None when unreadable, last used) of every record, in key order, in pages."""
        last = "m "
        while True:
            try:
                rows = self._cache._sql(
                    "SELECT key, access_time, mode, filename, value FROM Cache "
                    "WHERE raw = 1 AND key > ? AND key < 'm!' ORDER BY key LIMIT 500",
                    (last,),
                ).fetchall()
            except Exception as exc:
                raise _wrap(exc, "listing records") from exc
            for key, used, mode, filename, value in rows:
                yield key[2:], self._decode_record(mode, filename, value), float(used or 0)
            if len(rows) < 500:
                return
            last = rows[-1][0]

    def _decode_record(self, mode: int, filename: str | None, value: Any) -> Entry | None:
        try:
            if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
                return None
            return Entry.from_record(json.loads(self._cache._disk.fetch(mode, filename, value, False)))
        except (OSError, ValueError):
            return None

    def peek_record(self, key: str) -> Entry | None:
        try:
            rows = self._cache._sql(
                "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", ("m " + key,)
            ).fetchall()
        except Exception as exc:
            raise _wrap(exc, "reading a record") from exc
        return self._decode_record(*rows[0]) if rows else None

    def body_rows(self) -> Iterator[tuple[str, float]]:
        """(sha256, when stored) of every stored body."""
        last = "b "
        while True:
            try:
                rows = self._cache._sql(
                    "SELECT key, store_time FROM Cache WHERE raw = 1 AND key > ? AND key < 'b!' "
                    "ORDER BY key LIMIT 500",
                    (last,),
                ).fetchall()
            except Exception as exc:
                raise _wrap(exc, "listing bodies") from exc
            for key, stored in rows:
                yield key[2:], float(stored or 0)
            if len(rows) < 500:
                return
            last = rows[-1][0]

    def peek_body(self, sha256: str) -> bytes | BinaryIO | None:
        """The body as stored (bytes, or an open file the caller closes), unchecked; None when missing."""
        try:
            rows = self._cache._sql(
                "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", ("b " + sha256,)
            ).fetchall()
            if not rows or rows[0][0] not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
                return None
            return self._cache._disk.fetch(*rows[0], True)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _wrap(exc, "reading a body") from exc

    def remove(self, keys: Iterable[str] = (), bodies: Iterable[str] = (), digests: bool = False) -> None:
        """Deletes records and bodies (and with `digests`, every published digest), in batches."""
        names = [*("m " + k for k in keys), *("b " + b for b in bodies)]
        try:
            for start in range(0, len(names), 200):
                with self._cache.transact():
                    for name in names[start : start + 200]:
                        self._cache.delete(name)
            if digests:
                for key in list(self._cache.iterkeys()):
                    if isinstance(key, str) and key.startswith("d "):
                        self._cache.delete(key)
        except Exception as exc:
            raise _wrap(exc, "removing entries") from exc
        with self._lock:
            for sha in bodies:
                self._verified.pop(sha, None)

    def replace_record(self, key: str, seen: Entry, new: Entry) -> bool:
        """Writes `new` under `key` only if the record there is still `seen` (a proxy may have changed it)."""
        try:
            with self._cache.transact():
                if self.peek_record(key) != seen:
                    return False
                self.put_record(key, new)
        except diskcache.Timeout as exc:
            raise _wrap(exc, "writing a record") from exc
        return True

    def record_count(self) -> int:
        try:
            ((count,),) = self._cache._sql(
                "SELECT COUNT(*) FROM Cache WHERE raw = 1 AND key > 'm ' AND key < 'm!'"
            ).fetchall()
        except Exception as exc:
            raise _wrap(exc, "counting records") from exc
        return int(count)

    def stray_files(self, min_age: float) -> list[Path]:
        """Files in diskcache's directories that no row names, unchanged for `min_age` seconds (a body being
        moved into place has its row written a moment later: its ctime is new)."""
        try:
            known = {
                row[0] for row in self._cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")
            }
        except Exception as exc:
            raise _wrap(exc, "listing files") from exc
        cutoff, stray = time.time() - min_age, []
        for path in self.directory.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"):
            name = str(path.relative_to(self.directory))
            try:
                if name not in known and path.stat().st_ctime < cutoff:
                    stray.append(path)
            except OSError:
                continue
        return stray

    # variants: the keys stored for one URL and credential owner, for content negotiation

    def variants(self, group: str) -> list[tuple[str, Entry]]:
        """The records listed for a variant group, as (key, entry); a listed key whose record is gone
        (evicted, or unreadable) is left out."""
        try:
            listed = _listed(self._read("v " + group))
        except Exception as exc:
            raise _wrap(exc, "reading the variants of a URL") from exc
        found = ((key, self.get(key)) for key in listed)
        return [(key, entry) for key, entry in found if entry is not None]

    def _list_variant(self, key: str, stored: bool) -> None:
        """Lists (or unlists) a key in its variant group, in the transaction that writes (or deletes) its
        record; keys whose records were evicted meanwhile are dropped from the list on the way."""
        row = "v " + variant_group(key)
        kept = [k for k in _listed(self._cache.get(row)) if k != key and "m " + k in self._cache]
        if stored:
            kept = [*kept[-(_VARIANTS_LIMIT - 1) :], key]
        if kept:
            self._cache.set(row, json.dumps(kept).encode())
        else:
            self._cache.delete(row)


def _listed(raw: object) -> list[str]:
    """The keys of a variant group's row; a damaged row lists none (negotiation then finds nothing)."""
    try:
        keys = json.loads(raw) if isinstance(raw, bytes) else []
    except ValueError:
        return []
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []
