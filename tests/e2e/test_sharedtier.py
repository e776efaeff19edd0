"""The shared tier's S3 edge against a real S3 server (SeaweedFS on loopback): bodies written once and checked
by sha256, records, leases under contention and taken over from a holder that stopped renewing, a store that
is down, hangs, is missing or refuses our credentials."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cacheaddon.entry import Entry
from cacheaddon.settings import SharedLocation
from cacheaddon.sharedtier import Lease, LeaseState, SharedTier, SharedTierError

from .seaweed import Seaweed, s3_env

pytestmark = [pytest.mark.e2e, pytest.mark.s3]

URL = "https://files.example/packages/demo-1.0.tar.gz"
KEY = f"{URL}\naccept=*/*\nany-coding"


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    """The tier's clock for its back-off, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard place a client finds credentials: the environment."""
    for name, value in s3_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def tiers(seaweed: Seaweed, shared_prefix: str) -> Iterator[Callable[..., SharedTier]]:
    made: list[SharedTier] = []

    def make(server: Seaweed | None = None, **kwargs: Any) -> SharedTier:
        server = server or seaweed
        bucket = kwargs.pop("bucket", server.bucket)
        location = SharedLocation(bucket, shared_prefix, server.endpoint, "us-east-1")
        tier = SharedTier(location, timeout=kwargs.pop("timeout", 3), backoff=30, **kwargs)
        made.append(tier)
        return tier

    yield make
    for tier in made:
        tier.close()


def entry_for(body: bytes, url: str = URL) -> Entry:
    digest = hashlib.sha256(body).hexdigest()
    headers = (("Content-Type", "application/octet-stream"), ("ETag", '"v1"'))
    return Entry(url, 200, "OK", headers, stored_at=1_700_000_000.0, size=len(body), sha256=digest)


def temp_files(tmp_path: Path) -> Callable[[], tuple[BinaryIO, str]]:
    def new_file() -> tuple[BinaryIO, str]:
        fd, path = tempfile.mkstemp(dir=tmp_path, suffix=".part")
        return os.fdopen(fd, "wb"), path

    return new_file


def test_check_finds_conditional_writes_enforced(
    tiers: Callable[..., SharedTier], caplog: pytest.LogCaptureFixture
) -> None:
    tier = tiers()
    with caplog.at_level(logging.INFO, logger="cacheaddon.sharedtier"):
        assert run(tier.check()) is True
    assert tier.conditional is True
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "conditional writes enforced" in lines[0], lines


def test_bodies_are_written_once_and_read_back_verified(
    tiers: Callable[..., SharedTier], seaweed: Seaweed, shared_prefix: str, tmp_path: Path
) -> None:
    small, large = b"small body", os.urandom(300 * 1024)
    first, second = tiers(), tiers()

    async def scenario() -> None:
        for body in (small, large):
            digest = hashlib.sha256(body).hexdigest()
            assert await first.put_body(digest, len(body), body) is True
            assert await second.put_body(digest, len(body), body) is False  # the first writer won
        new_file = temp_files(tmp_path)
        got_small = await second.get_body(hashlib.sha256(small).hexdigest(), len(small), new_file, 1024)
        assert got_small == small
        path = await second.get_body(hashlib.sha256(large).hexdigest(), len(large), new_file, 1024)
        assert isinstance(path, str) and Path(path).read_bytes() == large
        missing = hashlib.sha256(b"never stored").hexdigest()
        assert await second.get_body(missing, 12, temp_files(tmp_path), 1024) is None

    run(scenario())
    assert sorted(seaweed.keys(shared_prefix)) == sorted(
        f"{shared_prefix}sha256/{hashlib.sha256(b).hexdigest()}" for b in (small, large)
    )


def test_a_body_from_an_open_file_is_uploaded_from_its_position(
    tiers: Callable[..., SharedTier], tmp_path: Path
) -> None:
    body = os.urandom(200 * 1024)
    source = tmp_path / "body"
    source.write_bytes(body)
    digest = hashlib.sha256(body).hexdigest()
    tier = tiers()

    async def scenario() -> bytes | str | None:
        with open(source, "rb") as f:
            assert await tier.put_body(digest, len(body), f) is True
        return await tier.get_body(digest, len(body), temp_files(tmp_path), len(body))

    assert run(scenario()) == body


@pytest.mark.parametrize("tamper", ["same size", "shorter", "longer"])
def test_a_corrupt_body_is_detected_deleted_and_written_again(
    tiers: Callable[..., SharedTier],
    seaweed: Seaweed,
    shared_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tamper: str,
) -> None:
    body = os.urandom(100 * 1024)
    digest = hashlib.sha256(body).hexdigest()
    name = f"{shared_prefix}sha256/{digest}"
    tier = tiers()
    run(tier.put_body(digest, len(body), body))
    bad = {
        "same size": body[:-1] + bytes([body[-1] ^ 1]),
        "shorter": body[:-10],
        "longer": body + b"tail",
    }[tamper]
    seaweed.put(name, bad)
    with caplog.at_level(logging.WARNING, logger="cacheaddon.sharedtier"):
        for limit in (0, len(body)):  # into a file, and into memory
            seaweed.put(name, bad)
            assert run(tier.get_body(digest, len(body), temp_files(tmp_path), limit)) is None
            # A longer object is not read whole (it cannot be the body): the next writer replaces it.
            assert (name in seaweed.keys(shared_prefix)) is (tamper == "longer")
    if tamper != "longer":
        assert any("does not match its sha256" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("*.part")) == []  # no temporary file left behind
    assert run(tier.put_body(digest, len(body), body)) is True  # the next writer repairs it
    assert seaweed.get(name) == body


@pytest.mark.parametrize("wrong", [-10, +10])
def test_a_record_naming_another_size_is_not_served_and_never_costs_the_body(
    tiers: Callable[..., SharedTier], seaweed: Seaweed, shared_prefix: str, tmp_path: Path, wrong: int
) -> None:
    """A record that disagrees with a healthy body (a foreign or buggy writer) is the one that is wrong: the
    body stays for every record that names it rightly."""
    body = os.urandom(100 * 1024)
    digest = hashlib.sha256(body).hexdigest()
    tier = tiers()
    run(tier.put_body(digest, len(body), body))
    for limit in (0, 2 * len(body)):
        assert run(tier.get_body(digest, len(body) + wrong, temp_files(tmp_path), limit)) is None
    assert seaweed.get(f"{shared_prefix}sha256/{digest}") == body
    assert run(tier.put_body(digest, len(body), body)) is False  # healthy: left as it is
    assert run(tier.get_body(digest, len(body), temp_files(tmp_path), 2 * len(body))) == body


def test_records_round_trip_under_their_key(tiers: Callable[..., SharedTier], seaweed: Seaweed) -> None:
    entry = entry_for(b"body")
    writer, reader = tiers(), tiers()
    run(writer.put_record(KEY, entry))
    assert run(reader.get_record(KEY)) == entry
    assert run(reader.get_record(KEY.replace("*/*", "text/html"))) is None


def test_an_unreadable_or_misplaced_record_reads_as_none(
    tiers: Callable[..., SharedTier], seaweed: Seaweed, shared_prefix: str
) -> None:
    tier = tiers()
    run(tier.put_record(KEY, entry_for(b"body")))
    (name,) = seaweed.keys(f"{shared_prefix}records/")
    for foreign in (
        b"{not json",
        b"[" * 100_000,  # nested deeper than Python's json parser can follow
        json.dumps({**entry_for(b"body").to_record(), "stored_at": float("inf")}).encode(),
        json.dumps(entry_for(b"body").to_record()).encode() + b" " * 2**20,  # too large to be a record
    ):
        seaweed.put(name, foreign)
        assert run(tier.get_record(KEY)) is None
    other = entry_for(b"body", url="https://files.example/other.tar.gz")
    seaweed.put(name, json.dumps(other.to_record()).encode())
    assert run(tier.get_record(KEY)) is None  # a record for another URL never answers this key


def test_one_of_many_contenders_gets_the_lease(tiers: Callable[..., SharedTier]) -> None:
    a, b = tiers(), tiers()

    async def scenario() -> list[Lease | LeaseState]:
        return await asyncio.gather(*(t.acquire(URL) for t in (a, b, a, b, a, b, a, b)))

    results = run(scenario())
    leases = [r for r in results if isinstance(r, Lease)]
    assert len(leases) == 1, results
    holders = {r.holder for r in results if isinstance(r, LeaseState)}
    assert len(holders) == 1 and holders <= {a.holder, b.holder}
    assert all(not r.expired for r in results if isinstance(r, LeaseState))


def test_a_released_lease_can_be_taken_again(tiers: Callable[..., SharedTier]) -> None:
    a, b = tiers(), tiers()

    async def scenario() -> None:
        lease = await a.acquire(URL)
        assert isinstance(lease, Lease)
        state = await b.lease_state(URL)
        assert state is not None and state.holder == a.holder and not state.expired
        assert isinstance(await b.acquire(URL), LeaseState)
        await a.release(lease)
        assert await a.lease_state(URL) is None
        assert isinstance(await b.acquire(URL), Lease)

    run(scenario())


def test_a_renewed_lease_outlives_its_ttl(tiers: Callable[..., SharedTier]) -> None:
    a, b = tiers(lease_ttl=2), tiers(lease_ttl=2)

    async def scenario() -> None:
        lease = await a.acquire(URL)
        assert isinstance(lease, Lease)
        for _ in range(8):  # 4 s: twice the TTL
            await asyncio.sleep(0.5)
            assert await a.renew(lease, URL)
            state = await b.acquire(URL)
            assert isinstance(state, LeaseState) and state.holder == a.holder

    run(scenario())


def test_a_holder_that_stops_renewing_is_taken_over(tiers: Callable[..., SharedTier]) -> None:
    a, b, c = tiers(lease_ttl=2), tiers(lease_ttl=2), tiers(lease_ttl=2)

    async def scenario() -> None:
        old = await a.acquire(URL)
        assert isinstance(old, Lease)
        deadline = time.monotonic() + 15
        taken: list[Lease | LeaseState] = []
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            taken = list(await asyncio.gather(b.acquire(URL), c.acquire(URL)))
            if any(isinstance(t, Lease) for t in taken):
                break
        winners = [t for t in taken if isinstance(t, Lease)]
        assert len(winners) == 1, taken  # two proxies taking over at once: one wins
        assert not await a.renew(old, URL)  # the old holder learns it lost the lease
        await a.release(old)  # ...and cannot remove the new holder's
        state = await c.lease_state(URL)
        winner = b if isinstance(taken[0], Lease) else c
        assert state is not None and state.holder == winner.holder and not state.expired

    run(scenario())


def test_a_stopped_store_is_logged_once_skipped_and_used_again_after_the_backoff(
    seaweed_factory: Callable[[], Seaweed], tiers: Callable[..., SharedTier], caplog: pytest.LogCaptureFixture
) -> None:
    server = seaweed_factory()
    clock = Clock()
    tier = tiers(server, clock=clock)
    entry = entry_for(b"body")
    run(tier.put_record(KEY, entry))
    server.stop()
    with caplog.at_level(logging.INFO, logger="cacheaddon.sharedtier"):
        with pytest.raises(SharedTierError) as failed:
            run(tier.get_record(KEY))
        assert not tier.available
        for _ in range(3):  # skipped at once while backing off: no new log line, no connection
            with pytest.raises(SharedTierError, match="skipped after a recent failure"):
                run(tier.put_record(KEY, entry))
        server.start()
        clock.now += 31
        assert tier.available
        assert run(tier.get_record(KEY)) == entry
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if failed.value.reason in m]) == 1, messages
    assert any(m.endswith("back again") for m in messages), messages


def test_a_missing_bucket_is_named(tiers: Callable[..., SharedTier]) -> None:
    tier = tiers(bucket="no-such-bucket-here")
    with pytest.raises(SharedTierError, match="the bucket does not exist"):
        run(tier.check())
    assert tier.conditional is None


def test_credentials_come_from_the_environment(
    tiers: Callable[..., SharedTier], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    with pytest.raises(SharedTierError, match="access denied"):
        run(tiers().get_record(KEY))
