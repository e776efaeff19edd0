"""Leases on cache keys across the processes that share a cache_dir (workers, or several proxies): the one
that holds a key's lease downloads it; the others follow its temporary file or wait for it to commit.

A lease is a file cache_dir/flights/<name>.lease created with O_CREAT|O_EXCL (atomic: one process wins),
holding the holder's pid, host, start time and a token; its mtime is renewed while the download runs, and it
is removed when the flight lands. Once the body streams, the holder announces it next to the lease
(<name>.<token>.head: the temporary file's path, the expected length and the response head), written to a
temporary name and renamed, so a reader never sees half of it. A lease is told from another by its token
(inode numbers are reused at once).

A lease expires when its holder is known dead (its pid gone on this host) or was not renewed for STALE_AFTER
seconds. Taking over is atomic too: the dead lease is renamed aside (only if it is still the one judged
dead: same token, same mtime), then a new one is created with O_EXCL. The decisions are pure (`judge`, with
`now` passed in); the rest is file I/O, meant for a worker thread. Leases only save downloads: correctness
never rests on them (bodies are committed atomically and checked by sha256), so a lost race costs at most a
second download.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STALE_AFTER = 5.0  # seconds without renewal after which a lease counts as abandoned
RENEW_EVERY = 1.0  # seconds between renewals while the holder downloads
DIRECTORY = "flights"  # in the cache_dir
# Seconds a file in flights/ stays unchanged before it counts as left over: a live lease is renewed every
# RENEW_EVERY, and one not renewed for STALE_AFTER is taken over by the next process that wants its key.
LEFTOVER_AGE = 60.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its file says (all unknown while the holder is still writing it)."""

    token: str = ""
    pid: int = 0
    host: str = ""
    started: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "pid": self.pid, "host": self.host, "started": self.started}

    @classmethod
    def parse(cls, raw: bytes) -> Holder:
        try:
            data = json.loads(raw)
            return cls(str(data["token"]), int(data["pid"]), str(data["host"]), float(data["started"]))
        except (ValueError, KeyError, TypeError):
            return cls()


@dataclass(frozen=True)
class Seen:
    """Another holder's lease as found: its holder, when it was last renewed, and its file's identity."""

    holder: Holder
    renewed: float  # mtime
    alive: bool | None  # the holder's pid is running (None: not on this host, or not known)


@dataclass(frozen=True)
class Lease:
    """A lease we hold."""

    name: str
    holder: Holder


class Verdict(enum.Enum):
    HELD = "held"  # someone is on it: follow or wait
    EXPIRED = "expired"  # its holder died or stopped renewing: take it over


def judge(seen: Seen, now: float, stale_after: float = STALE_AFTER) -> Verdict:
    """Whether another process's lease still holds at `now`."""
    if now - seen.renewed > stale_after:
        return Verdict.EXPIRED
    if seen.alive is False:
        return Verdict.EXPIRED
    return Verdict.HELD


def lease_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def pid_alive(pid: int) -> bool:
    """Whether a process runs with this pid (a zombie does not: it died, its parent did not reap it yet)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: kill() said it exists
    fields = line.rsplit(")", 1)[-1].split()
    return not fields or fields[0] not in ("Z", "X")


class Leases:
    """The lease files of one cache directory. Every method does file I/O: call it from a worker thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.host = socket.gethostname()
        directory.mkdir(mode=0o700, exist_ok=True)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        for path in leftovers(self.directory, time.time()):
            _unlink(path)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.lease"

    def _announcement(self, name: str, token: str) -> Path:
        return self.directory / f"{name}.{token}.head"

    def acquire(self, name: str) -> Lease | Seen:
        """Our new lease on `name`, or the one another process holds."""
        path = self._path(name)
        holder = Holder(secrets.token_hex(8), os.getpid(), self.host, time.time())
        for _ in range(3):  # the lease may vanish between the two calls: its holder just released it
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                seen = self.look(name)
                if seen is not None:
                    return seen
        else:
            seen = self.look(name)
            return seen if seen is not None else Seen(Holder(), time.time(), None)
        try:
            os.write(fd, json.dumps(holder.to_json()).encode())
        except OSError:  # a full disk: an empty lease would hold the key for STALE_AFTER seconds
            _unlink(path)
            raise
        finally:
            os.close(fd)
        return Lease(name, holder)

    def look(self, name: str) -> Seen | None:
        """The lease on `name` as it is now; None when there is none."""
        found = _read(self._path(name))
        if found is None:
            return None
        holder, mtime = found
        alive = pid_alive(holder.pid) if holder.host == self.host and holder.pid else None
        return Seen(holder, mtime, alive)

    def take_over(self, name: str, dead: Seen) -> Lease | Seen | None:
        """Replaces a lease judged dead by ours. None when it was gone already (acquire again); another
        holder's lease when someone else took it over first, or it turned out alive after all."""
        path = self._path(name)
        aside = self.directory / f"{name}.{secrets.token_hex(8)}.dead"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        try:
            if _read(aside) != (dead.holder, dead.renewed):
                # Not the lease we judged: a new holder's, or renewed since. Put it back (link fails if yet
                # another lease was created meanwhile: then that one stands).
                try:
                    os.link(aside, path)
                except (FileExistsError, FileNotFoundError):  # another lease stands, or ours was swept
                    pass
                return self.look(name)
        finally:
            _unlink(aside)
        if dead.holder.token:
            _unlink(self._announcement(name, dead.holder.token))
        logger.info("took over the download of a process that stopped (pid %s)", dead.holder.pid or "?")
        return self.acquire(name)

    def renew(self, lease: Lease) -> bool:
        """Marks the lease alive; False when it is no longer ours (taken over)."""
        path = self._path(lease.name)
        found = _read(path)
        if found is None or found[0] != lease.holder:
            return False
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def release(self, lease: Lease) -> None:
        """Removes our lease (only ours: one taken over meanwhile is left to its new holder)."""
        _unlink(self._announcement(lease.name, lease.holder.token))
        path = self._path(lease.name)
        aside = self.directory / f"{lease.name}.{lease.holder.token}.done"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        try:
            found = _read(aside)
            if found is not None and found[0] != lease.holder:
                try:
                    os.link(aside, path)
                except (FileExistsError, FileNotFoundError):  # another lease stands, or ours was swept
                    pass
        finally:
            _unlink(aside)

    def announce(self, lease: Lease, announcement: dict[str, Any]) -> None:
        """Tells followers where the body grows and what its head is."""
        final = self._announcement(lease.name, lease.holder.token)
        partial = final.with_suffix(".partial")
        partial.write_bytes(json.dumps(announcement).encode())
        os.replace(partial, final)

    def announced(self, name: str, holder: Holder) -> dict[str, Any] | None:
        if not holder.token:
            return None
        try:
            data = json.loads(self._announcement(name, holder.token).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def leftovers(directory: Path, now: float, min_age: float = LEFTOVER_AGE) -> list[Path]:
    """The files in a flights directory that no download in progress needs, unchanged for `min_age` seconds:
    leases no longer renewed, announcements of leases gone or held by another holder, and what a holder that
    died left behind (*.partial, *.dead, *.done). Removing one while a process renames it aside (take_over,
    release) only makes that process look again."""
    cutoff, found = now - min_age, []
    try:
        paths = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue  # gone meanwhile
        if st.st_mtime >= cutoff or not stat.S_ISREG(st.st_mode):
            continue
        name, _, rest = path.name.partition(".")
        if rest.endswith(".head"):  # renewed through its lease, not itself
            token = rest.removesuffix(".head")
            lease = _read(directory / f"{name}.lease")
            if lease is not None and lease[0].token == token and lease[1] >= cutoff:
                continue
        found.append(path)
    return found


def _read(path: Path) -> tuple[Holder, float] | None:
    """The holder a lease file names, and its mtime; None when there is no such file."""
    try:
        with open(path, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            return Holder.parse(f.read(4096)), mtime
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
