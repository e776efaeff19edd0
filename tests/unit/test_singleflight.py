"""The flight registry (one owner per key, joiners told how it ended, nobody left waiting) and readers of a
growing body (bytes as they arrive, the last chunk only once complete and matching, cut otherwise)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cacheaddon.singleflight import (
    ABANDONED,
    ALONE,
    Flight,
    FlightBroken,
    Flights,
    Growing,
    Head,
    Kind,
    Landing,
)

POOL = ThreadPoolExecutor(2)
STALL = 5.0


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(main())


def test_one_owner_per_key_and_joiners_get_its_landing() -> None:
    async def main() -> list[str]:
        flights = Flights()
        release = asyncio.Event()
        owned: list[str] = []

        async def own(flight: Flight) -> str:
            owned.append(flight.key)
            await release.wait()
            flight.land(Landing(Kind.ALONE, detail="done"))
            return "owner"

        async def join(flight: Flight) -> str:
            assert await flight.wait(STALL)
            assert flight.landing is not None
            return f"joiner: {flight.landing.detail}"

        calls = [flights.run("a", own, join) for _ in range(4)] + [flights.run("b", own, join)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.01)
        assert sorted(owned) == ["a", "b"] and len(flights) == 2
        release.set()
        results = await asyncio.gather(*tasks)
        assert len(flights) == 0
        again = await flights.run("a", own, join) if release.is_set() else ""
        return [*results, again]

    results = run(main())
    assert results == ["owner", "joiner: done", "joiner: done", "joiner: done", "owner", "owner"]


@pytest.mark.parametrize(("ending", "kind"), [("return", Kind.ALONE), ("raise", Kind.ABANDONED)])
def test_an_owner_that_neither_publishes_nor_lands_leaves_nobody_waiting(ending: str, kind: Kind) -> None:
    async def main() -> Landing | None:
        flights = Flights()
        seen: list[Landing | None] = []
        started = asyncio.Event()

        async def own(flight: Flight) -> str:
            started.set()
            await asyncio.sleep(0.01)
            if ending == "raise":
                raise RuntimeError("owner failed")
            return "owner"

        async def join(flight: Flight) -> str:
            assert await flight.wait(STALL)
            seen.append(flight.landing)
            return "joiner"

        owner = asyncio.ensure_future(flights.run("k", own, join))
        await started.wait()
        await flights.run("k", own, join)
        await asyncio.gather(owner, return_exceptions=True)
        return seen[0]

    landing = run(main())
    assert landing is not None and landing.kind is kind


def test_joiners_give_up_on_an_owner_without_progress() -> None:
    async def main() -> bool:
        flight = Flight("k")
        return await flight.wait(0.05)

    assert run(main()) is False


def test_progress_keeps_joiners_waiting() -> None:
    async def main() -> bool:
        flight = Flight("k")

        async def owner() -> None:
            for _ in range(5):
                await asyncio.sleep(0.03)
                flight.touch()
            flight.land(ALONE)

        task = asyncio.ensure_future(owner())
        waited = await flight.wait(0.05)  # longer in all than 0.05 s, but never 0.05 s without progress
        await task
        return waited

    assert run(main()) is True


def test_the_first_landing_counts_and_callbacks_run_once() -> None:
    flight = Flight("k")
    calls: list[int] = []
    flight.on_land(lambda: calls.append(1))
    flight.land(ABANDONED)
    flight.land(ALONE)
    flight.on_land(lambda: calls.append(2))  # after the landing: at once
    assert flight.landing is ABANDONED and calls == [1, 2]


def test_head_round_trips_through_json() -> None:
    head = Head(200, "OK", (("Content-Type", "application/x-tar"),), 5, (("user-agent", "d" * 32),), "miss")
    assert Head.from_json(head.to_json()) == head
    assert Head.from_json({"status": "x"}) is None
    assert Head.from_json(None) is None


class Source:
    """Writes a body into a file in pieces, as a download would, reporting each to the Growing."""

    def __init__(self, path: Path, data: bytes, growing: Growing) -> None:
        self.path, self.data, self.growing = path, data, growing
        self.file = open(path, "wb")  # noqa: SIM115 - closed by finish()
        growing.opened(str(path))
        self.written = 0

    def write(self, size: int) -> None:
        self.file.write(self.data[self.written : self.written + size])
        self.file.flush()
        self.written += size
        self.growing.grew(self.written)

    def finish(self) -> None:
        self.file.close()


async def collect(chunks: AsyncIterator[bytes], into: bytearray) -> BaseException | None:
    try:
        async for chunk in chunks:
            into += chunk
    except FlightBroken as exc:
        return exc
    return None


def body(size: int) -> bytes:
    return os.urandom(size)


Script = Callable[[Source, Growing, list[bytearray]], Awaitable[None]]


def reading(
    tmp_path: Path, data: bytes, script: Script, readers: int = 3
) -> tuple[list[bytearray], list[BaseException | None], Growing]:
    """Readers of a Growing body while `script` writes it (and sees what they received so far)."""

    async def main() -> tuple[list[bytearray], list[BaseException | None], Growing]:
        growing = Growing(len(data))
        source = Source(tmp_path / "body.part", data, growing)
        received = [bytearray() for _ in range(readers)]
        tasks = [
            asyncio.ensure_future(collect(growing.reader().chunks(POOL, 0.5), into)) for into in received
        ]
        await script(source, growing, received)
        errors = await asyncio.gather(*tasks)
        source.finish()
        return received, list(errors), growing

    result: tuple[list[bytearray], list[BaseException | None], Growing] = run(main())
    return result


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_readers_get_the_bytes_as_they_arrive_and_the_last_byte_only_at_the_end(tmp_path: Path) -> None:
    data = body(1_000_000)

    async def script(source: Source, growing: Growing, received: list[bytearray]) -> None:
        source.write(600_000)
        await asyncio.sleep(0.1)
        assert all(len(r) == 600_000 - 1 for r in received), "more than the last byte held back"
        source.write(400_000)
        await asyncio.sleep(0.1)
        assert all(len(r) == len(data) - 1 for r in received), "the last byte went out before the end"
        os.rename(source.path, source.path.with_suffix(".committed"))  # the store takes the file
        growing.complete(sha(data), len(data))

    received, errors, growing = reading(tmp_path, data, script)
    assert errors == [None, None, None]
    assert all(bytes(r) == data for r in received)
    assert growing.fd is None and growing.readers == 0, "the descriptor outlived its readers"


def test_a_body_that_does_not_match_is_cut_short(tmp_path: Path) -> None:
    data = body(600_000)

    async def script(source: Source, growing: Growing, received: list[bytearray]) -> None:
        source.write(len(data))
        await asyncio.sleep(0.05)
        growing.complete(sha(b"something else"), len(data))

    received, errors, _ = reading(tmp_path, data, script)
    assert all(isinstance(e, FlightBroken) for e in errors)
    assert all(len(r) < len(data) for r in received)


def test_a_body_that_breaks_off_is_cut_short(tmp_path: Path) -> None:
    data = body(600_000)

    async def script(source: Source, growing: Growing, received: list[bytearray]) -> None:
        source.write(300_000)
        await asyncio.sleep(0.05)
        growing.fail("upstream cut")

    received, errors, growing = reading(tmp_path, data, script)
    assert all(isinstance(e, FlightBroken) and "upstream cut" in str(e) for e in errors)
    assert all(len(r) < 300_000 for r in received)
    assert growing.fd is None


def test_a_body_that_stops_growing_is_cut_short(tmp_path: Path) -> None:
    data = body(600_000)

    async def script(source: Source, growing: Growing, received: list[bytearray]) -> None:
        source.write(300_000)  # and nothing more: the readers' stall bound (0.5 s) ends their wait

    received, errors, _ = reading(tmp_path, data, script)
    assert all(isinstance(e, FlightBroken) and "no progress" in str(e) for e in errors)


def test_a_file_shorter_than_reported_is_cut_short(tmp_path: Path) -> None:
    data = body(600_000)

    async def script(source: Source, growing: Growing, received: list[bytearray]) -> None:
        source.write(100_000)
        growing.grew(500_000)  # claims more than the file holds

    _, errors, _ = reading(tmp_path, data, script, readers=1)
    assert isinstance(errors[0], FlightBroken)


def test_the_last_reader_leaving_is_told(tmp_path: Path) -> None:
    async def main() -> list[str]:
        growing = Growing(None)
        (tmp_path / "b").write_bytes(b"x")
        growing.opened(str(tmp_path / "b"))
        told: list[str] = []
        growing.on_idle = lambda: told.append("idle")
        first, second = growing.reader(), growing.reader()
        await first.close()
        await first.close()  # idempotent
        told.append(f"readers={growing.readers}")
        await second.close()
        growing.fail("aborted")
        assert growing.fd is None
        return told

    assert run(main()) == ["readers=1", "idle"]
