"""One download per cache key in a process: the first request for a key owns its flight and does the work;
requests for the same key that arrive meanwhile join it (Go's x/sync/singleflight `Group.Do`).

A flight ends in a Landing that tells each joiner what to do: serve the entry the owner stored, answer the
owner's upstream failure as its own (the stale entry, or the error), fetch alone (the answer was not for
sharing), or try again (the flight broke off). While it runs, the owner may publish a body that grows in a
file (Growing): joiners then stream it as it arrives, reading the file with os.pread on a descriptor the
Growing holds open (it survives the temporary file's rename into the store). Each reader hashes what it sends
and holds its last byte back until the body is complete, then sends it only if the hash matches the owner's:
a body that broke off, or that differs, reaches the client cut short, never complete-looking.

The seam: `Flights.run(key, own, join)` runs `own(flight)`, the owner's whole "do the download" step, and
knows nothing of how it downloads: cooperation.py wraps it in a lease across the processes sharing the
cache_dir, and with a shared tier the step itself goes through the fleet's lease (fleet.py,
service._download). Every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cacheaddon.entry import Entry
from cacheaddon.policy import Failure, Outcome

if TYPE_CHECKING:
    from mitmproxy import http

logger = logging.getLogger(__name__)

R = TypeVar("R")

READ_CHUNK = 1024 * 1024


class FlightBroken(Exception):
    """A shared body will not complete (or did not match): the reader's client must see it cut short."""


class Kind(enum.Enum):
    STORED = "stored"  # the answer is in the store (entry): joiners serve it from there
    FAILED = "failed"  # the upstream failed (failure, passed): joiners answer as the owner did
    ALONE = "alone"  # the answer was not for sharing (not storable, not held): joiners fetch it themselves
    ABANDONED = "abandoned"  # the flight broke off without an answer: joiners try again


@dataclass(frozen=True)
class Landing:
    kind: Kind
    entry: Entry | None = None
    outcome: Outcome = Outcome.MISS
    detail: str = ""
    failure: Failure | None = None
    passed: http.Response | None = None  # the upstream's own error answer (copied for each joiner)


ABANDONED = Landing(Kind.ABANDONED)
ALONE = Landing(Kind.ALONE)


@dataclass(frozen=True)
class Head:
    """What every reader of a shared body sends before it: the fields are the storable ones (no Set-Cookie),
    vary the owner's request's digests of the fields the answer varies on (readers whose own differ must not
    use it). JSON-able: another process reads it from the lease's announcement."""

    status: int
    reason: str
    fields: tuple[tuple[str, str], ...]
    length: int | None
    vary: tuple[tuple[str, str], ...]
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "fields": [list(f) for f in self.fields],
            "length": self.length,
            "vary": [list(v) for v in self.vary],
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Any) -> Head | None:
        try:
            length = data["length"]
            return cls(
                int(data["status"]),
                str(data["reason"]),
                tuple((str(k), str(v)) for k, v in data["fields"]),
                None if length is None else int(length),
                tuple((str(k), str(v)) for k, v in data["vary"]),
                str(data["detail"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class Growing:
    """A body being written to a file by one source (a download, or another process's download followed),
    read by any number of Readers while it grows."""

    def __init__(self, length: int | None) -> None:
        self.length = length  # as announced, if it was
        self.fd: int | None = None
        self.path = ""
        self.available = 0  # bytes in the file that readers may read
        self.sha256: str | None = None  # set once complete
        self.failed = ""  # why it will not complete
        self.readers = 0
        self.on_idle: Callable[[], None] | None = None  # the last reader left
        self._event = asyncio.Event()
        self._lock = threading.Lock()  # the descriptor is opened in a worker thread, closed in the loop

    @property
    def ended(self) -> bool:
        return self.sha256 is not None or bool(self.failed)

    def opened(self, path: str) -> None:
        """The source's file exists at `path` (may run in a worker thread: it opens before any byte is
        reported, and the descriptor outlives the file's rename or removal)."""
        fd = os.open(path, os.O_RDONLY)
        with self._lock:
            if self.ended:  # given up while the file was being made
                os.close(fd)
                return
            self.fd, self.path = fd, path

    def grew(self, available: int) -> None:
        if available > self.available and not self.ended:
            self.available = available
            self._wake()

    def complete(self, sha256: str, size: int) -> None:
        if not self.ended:
            self.available, self.sha256 = size, sha256
            self._wake()
            self._release()

    def fail(self, reason: str) -> None:
        if not self.ended:
            self.failed = reason
            self._wake()
            self._release()

    def _wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def _release(self) -> None:
        with self._lock:
            if self.ended and self.readers == 0 and self.fd is not None:
                fd, self.fd = self.fd, None
                os.close(fd)

    def reader(self) -> Reader:
        return Reader(self)

    async def changed(self, stall: float) -> None:
        """Waits for more bytes or the end; raises FlightBroken after `stall` seconds without either."""
        try:
            await asyncio.wait_for(self._event.wait(), stall)
        except TimeoutError:
            raise FlightBroken(f"no progress for {stall:g} s") from None


class Reader:
    """One client's view of a Growing body; close() (idempotent) when its client is done or gone."""

    def __init__(self, growing: Growing) -> None:
        self.growing = growing
        self._open = True
        growing.readers += 1

    async def close(self) -> None:
        if self._open:
            self._open = False
            growing = self.growing
            growing.readers -= 1
            growing._release()
            if growing.readers == 0 and growing.on_idle is not None:
                growing.on_idle()

    async def chunks(self, pool: ThreadPoolExecutor, stall: float) -> AsyncIterator[bytes]:
        """The body as it grows; its last byte only once it is complete and hashes to the owner's sha256."""
        growing, loop = self.growing, asyncio.get_running_loop()
        digest, offset, pending = hashlib.sha256(), 0, b""
        try:
            while True:
                if growing.failed:
                    raise FlightBroken(growing.failed)
                if offset < growing.available:
                    fd = growing.fd
                    if fd is None:
                        raise FlightBroken("the body's file is closed")
                    size = min(READ_CHUNK, growing.available - offset)
                    chunk = await loop.run_in_executor(pool, _read_hashed, fd, size, offset, digest)
                    if not chunk:
                        raise FlightBroken("the body's file is shorter than reported")
                    offset += len(chunk)
                    # Only the last byte read so far waits: the rest goes out as it arrives.
                    ready, pending = pending + chunk[:-1], chunk[-1:]
                    if ready:
                        yield ready
                elif growing.sha256 is not None:
                    break
                else:
                    await growing.changed(stall)
            if digest.hexdigest() != growing.sha256:
                raise FlightBroken("the shared body does not match the owner's sha256")
            if pending:
                yield pending
        finally:
            await self.close()


def _read_hashed(fd: int, size: int, offset: int, digest: Any) -> bytes:
    chunk = os.pread(fd, size, offset)
    digest.update(chunk)
    return chunk


class Flight:
    """One key's download in progress: what the owner published so far, and how it ended."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.head: Head | None = None
        self.body: Growing | None = None
        self.landing: Landing | None = None
        self.joined = 0
        self._touched = time.monotonic()
        self._event = asyncio.Event()
        self._on_land: list[Callable[[], None]] = []

    def publish(self, head: Head, body: Growing) -> None:
        """A body joiners can stream while it arrives."""
        self.head, self.body = head, body
        self.touch()
        self._event.set()

    def touch(self) -> None:
        """The owner made progress (bytes arrived): joiners keep waiting."""
        self._touched = time.monotonic()

    def land(self, landing: Landing) -> None:
        """How the flight ended (the first landing counts); joiners arriving later start a new flight."""
        if self.landing is not None:
            return
        self.landing = landing
        self._event.set()
        callbacks, self._on_land = self._on_land, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("a flight's landing callback failed")

    def on_land(self, callback: Callable[[], None]) -> None:
        if self.landing is not None:
            callback()
        else:
            self._on_land.append(callback)

    async def wait(self, stall: float) -> bool:
        """Until a body is published or the flight lands; False when the owner made no progress for `stall`
        seconds (joiners then go their own way)."""
        while self.body is None and self.landing is None:
            left = self._touched + stall - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except TimeoutError:
                pass
        return True


def land_stored(flight: Flight | None, stored: Entry | None, outcome: Outcome, detail: str) -> None:
    """Lands a flight whose answer was stored (joiners serve it from the store) or not (they fetch it
    themselves)."""
    if flight is not None:
        flight.land(Landing(Kind.STORED, stored, outcome, detail) if stored is not None else ALONE)


class Flights:
    """The flights of this process, by key."""

    def __init__(self) -> None:
        self._flying: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flying)

    async def run(
        self, key: str, own: Callable[[Flight], Awaitable[R]], join: Callable[[Flight], Awaitable[R]]
    ) -> R:
        """own(flight) when nobody is fetching `key`, else join(flight) of the one who is. The owner must
        publish a body or land the flight; one that returns without either lands it ALONE, one that raises
        lands it ABANDONED, so no joiner is left waiting on it."""
        flight = self._flying.get(key)
        if flight is not None:
            flight.joined += 1
            return await join(flight)
        flight = self._flying[key] = Flight(key)
        flight.on_land(lambda: self._ended(flight))
        try:
            result = await own(flight)
        except BaseException:
            flight.land(ABANDONED)
            raise
        if flight.body is None:
            flight.land(ALONE)
        return result

    def _ended(self, flight: Flight) -> None:
        if self._flying.get(flight.key) is flight:
            del self._flying[flight.key]
