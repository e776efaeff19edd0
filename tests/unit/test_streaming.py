"""The download task of a streamed miss, with a real Spool on a temporary directory: the owner's client gets
every chunk (the last after the commit), a download whose owner's client left goes on for joiners and stops
when nobody reads, and a failure reaches the owner's client, the joiners and the flight."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cacheaddon.entry import Entry
from cacheaddon.singleflight import Flight, FlightBroken, Growing, Head, Kind
from cacheaddon.spool import Spool, Spooled
from cacheaddon.streaming import Pump
from cacheaddon.upstream import UpstreamFailure

POOL = ThreadPoolExecutor(2)
CHUNK = 100_000
HEAD = Head(200, "OK", (), None, (), "miss")


class Upstream:
    """Chunks that arrive when the test lets them (gate), then the end or a failure."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self.data, self.fail_at = data, fail_at
        self.gate = asyncio.Semaphore(0)
        self.closed = False
        self.sent = 0

    def allow(self, chunks: int = 1000) -> None:
        for _ in range(chunks):
            self.gate.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        for offset in range(0, len(self.data), CHUNK):
            await asyncio.wait_for(self.gate.acquire(), 10)
            if self.fail_at is not None and offset >= self.fail_at:
                raise UpstreamFailure("body cut short", "truncated")
            self.sent += 1
            yield self.data[offset : offset + CHUNK]

    async def close(self) -> None:
        self.closed = True


class Setup:
    def __init__(self, tmp_path: Path, data: bytes, fail_at: int | None = None, shared: bool = True) -> None:
        self.upstream = Upstream(data, fail_at)
        self.flight = Flight("k")
        self.growing = Growing(len(data)) if shared else None
        self.committed: list[Spooled] = []
        self.failures: list[str] = []
        growing = self.growing

        def open_file() -> tuple[BinaryIO, str]:
            fd, path = tempfile.mkstemp(dir=tmp_path)
            if growing is not None:
                growing.opened(path)
            return os.fdopen(fd, "wb"), path

        spool = Spool(0, open_file, POOL, 1 << 30, growing.grew if growing is not None else None)
        self.pump = Pump(
            self.upstream.chunks(),
            spool,
            self.commit,
            lambda exc: self.failures.append(str(exc)),
            self.upstream.close,
            self.flight,
            growing,
        )
        if growing is not None:
            self.flight.publish(HEAD, growing)

    async def commit(self, body: Spooled) -> Entry | None:
        self.committed.append(body)
        return Entry("u", 200, "OK", (), 0.0, body.size, body.sha256)


async def drain(chunks: AsyncIterator[bytes], into: bytearray) -> BaseException | None:
    try:
        async for chunk in chunks:
            into += chunk
    except (FlightBroken, UpstreamFailure) as exc:
        return exc
    return None


def run(coro: Any) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(main())


DATA = os.urandom(10 * CHUNK + 123)


def test_the_owner_gets_every_byte_and_the_last_after_the_commit(tmp_path: Path) -> None:
    async def main() -> None:
        s = Setup(tmp_path, DATA, shared=False)
        got = bytearray()
        owner = asyncio.ensure_future(drain(s.pump.owner(), got))
        s.upstream.allow()
        assert await owner is None
        assert bytes(got) == DATA and s.upstream.closed
        assert [c.sha256 for c in s.committed] == [hashlib.sha256(DATA).hexdigest()]
        assert s.flight.landing is not None and s.flight.landing.kind is Kind.STORED

    run(main())


def test_when_the_owner_leaves_the_download_goes_on_for_a_joiner(tmp_path: Path) -> None:
    async def main() -> None:
        s = Setup(tmp_path, DATA)
        assert s.growing is not None
        joiner_got = bytearray()
        joiner = asyncio.ensure_future(drain(s.growing.reader().chunks(POOL, 5), joiner_got))
        s.upstream.allow(3)
        await asyncio.sleep(0.2)
        assert 0 < len(joiner_got) < len(DATA)
        # The owner's client left before the relay asked for its job: the job's on_close says so.
        await s.pump.owner_left()
        s.upstream.allow()
        assert await joiner is None
        assert bytes(joiner_got) == DATA
        assert len(s.committed) == 1 and s.upstream.closed

    run(main())


def test_when_nobody_reads_any_more_the_download_stops(tmp_path: Path) -> None:
    async def main() -> None:
        s = Setup(tmp_path, DATA)
        assert s.growing is not None
        reader = s.growing.reader()
        s.upstream.allow(2)
        await asyncio.sleep(0.2)
        await s.pump.owner_left()
        assert s.flight.landing is None, "stopped while a joiner still reads"
        await reader.close()
        await asyncio.sleep(0.1)
        assert s.upstream.closed and s.committed == []
        assert s.flight.landing is not None and s.flight.landing.kind is Kind.ABANDONED
        assert s.upstream.sent < 10
        assert list(tmp_path.iterdir()) == [], "the partial body was left behind"

    run(main())


@pytest.mark.parametrize("shared", [True, False])
def test_a_failure_reaches_the_owner_the_joiners_and_the_flight(tmp_path: Path, shared: bool) -> None:
    async def main() -> None:
        s = Setup(tmp_path, DATA, fail_at=5 * CHUNK, shared=shared)
        owner_got, joiner_got = bytearray(), bytearray()
        owner = asyncio.ensure_future(drain(s.pump.owner(), owner_got))
        joiner = None
        if s.growing is not None:
            joiner = asyncio.ensure_future(drain(s.growing.reader().chunks(POOL, 5), joiner_got))
        s.upstream.allow()
        assert isinstance(await owner, UpstreamFailure)
        if joiner is not None:
            assert isinstance(await joiner, FlightBroken)
        assert len(owner_got) < len(DATA) and len(joiner_got) < len(DATA)
        assert s.failures == ["body cut short"] and s.committed == []
        landing = s.flight.landing
        assert landing is not None and landing.kind is Kind.FAILED and landing.failure is not None
        for _ in range(100):  # the download task cleans up after telling the clients
            if s.upstream.closed:
                break
            await asyncio.sleep(0.01)
        assert s.upstream.closed and list(tmp_path.iterdir()) == []

    run(main())


def test_an_owner_gone_before_the_download_started_still_lands_the_flight(tmp_path: Path) -> None:
    """A reply discarded at once (a background probe's, or one the guard answers 304 for) closes the owner's
    stream before the download task first ran: a task cancelled then never enters its body, so the flight,
    its lease and the upstream stream were never released, and every later request joined a dead flight."""

    async def main() -> None:
        s = Setup(tmp_path, DATA)
        await s.pump.owner_left()  # no await in between: the task has not had its first step
        for _ in range(100):
            if s.upstream.closed:
                break
            await asyncio.sleep(0.01)
        assert s.flight.landing is not None and s.flight.landing.kind is Kind.ABANDONED
        assert s.growing is not None and s.growing.ended
        assert s.upstream.closed and s.committed == []

    run(main())
