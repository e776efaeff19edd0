"""The diskcache-backed store: records by key, bodies by sha256. Knows nothing of HTTP.

Layout in one diskcache directory (process-safe, so several mitmdump processes may share it):
  "m <key>"      -> the Entry record, as JSON bytes (never pickle: a cache directory is not code)
  "b <sha256>"   -> the body; content-addressed, so a record and its body can never disagree silently
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import diskcache

from cacheaddon.entry import Entry
from cacheaddon.keys import redact

logger = logging.getLogger(__name__)

_TMP = "tmp"
_ORPHAN_AGE = 3600  # seconds; an older temporary file belongs to a writer that died


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
            )
            self.salt = _salt(directory)
            self._tmp = directory / _TMP
            self._tmp.mkdir(exist_ok=True)
        except Exception as exc:
            raise _wrap(exc, f"cannot open cache_dir {directory}") from exc
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._remove_orphans()

    def close(self) -> None:
        self._cache.close()

    def _remove_orphans(self) -> None:
        cutoff = time.time() - _ORPHAN_AGE
        for path in self._tmp.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass

    # records

    def get(self, key: str) -> Entry | None:
        try:
            raw = self._cache.get("m " + key)
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
            self._cache.set("m " + key, json.dumps(entry.to_record()).encode())
        except Exception as exc:
            raise _wrap(exc, "writing a record") from exc

    def delete(self, key: str) -> None:
        try:
            self._cache.delete("m " + key)
        except Exception as exc:
            raise _wrap(exc, "deleting a record") from exc

    # digests published by index documents, keyed by canonical file URL

    def expected_digest(self, url: str) -> str | None:
        try:
            value = self._cache.get("d " + url)
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

    def read_body(self, entry: Entry, inline_limit: int = 0) -> Body | None:
        """The entry's body, checked against its sha256; None (and the body dropped) when missing or corrupt.
        Bodies up to inline_limit bytes come back in memory, larger ones as an open file."""
        value = self.open_body(entry)
        return None if value is None else self.check_body(entry, value, inline_limit)

    def lookup(self, keys: tuple[str, ...], inline_limit: int) -> tuple[Entry | None, Body | BinaryIO | None]:
        """The newest record found under `keys` and its body, in one trip to the database thread (the hit
        path): a checked Body when that is cheap (bytes from the database, or a large file already verified
        and unchanged: the relay hashes it again while sending), else the open file, for check_body in the
        I/O pool."""
        found = [e for e in map(self.get, keys) if e is not None]
        entry = max(found, key=lambda e: e.stored_at, default=None)
        if entry is None:
            return None, None
        value = self.open_body(entry)
        if value is None:
            return entry, None
        if isinstance(value, bytes):
            return entry, self.check_body(entry, value, inline_limit)
        if entry.size > inline_limit and self._known_good(entry, value):
            return entry, Body(None, value, entry.size)
        return entry, value

    def _known_good(self, entry: Entry, handle: BinaryIO) -> bool:
        st = os.fstat(handle.fileno())
        with self._lock:
            return self._verified.get(entry.sha256) == (st.st_ino, st.st_size, st.st_mtime_ns)

    def open_body(self, entry: Entry) -> bytes | BinaryIO | None:
        """The stored body as diskcache gives it (the database part of read_body: bytes or an open file)."""
        try:
            value = self._cache.get("b " + entry.sha256, read=True)
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
                    data = value.read()
                return self.check_body(entry, data, inline_limit)
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

    def integrity_failed(self, kind: str) -> None:
        """Tells the counters about a body that did not match its digest ('body', 'published digest')."""
        if self._integrity_listener is not None:
            self._integrity_listener(kind)

    def watch(self, on_integrity: Callable[[str], None], on_evict: Callable[[int, int], None]) -> None:
        """Reports integrity failures and diskcache's LRU evictions (rows, bytes) to the counters."""
        self._integrity_listener = on_integrity
        cache, cull = self._cache, self._cache._cull

        def counting_cull(now: float, sql: Any, cleanup: Any, limit: int | None = None) -> None:
            # diskcache's triggers keep the row count and total size in Settings; we set no expiry, so every
            # row a cull removes is an eviction.
            before = _totals(sql)
            cull(now, sql, cleanup, limit)
            after = _totals(sql)
            if after != before:
                on_evict(before[0] - after[0], before[1] - after[1])

        cache._cull = counting_cull

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


def _totals(sql: Any) -> tuple[int, int]:
    rows = dict(sql("SELECT key, value FROM Settings WHERE key IN ('count', 'size')").fetchall())
    return int(rows.get("count", 0)), int(rows.get("size", 0))
