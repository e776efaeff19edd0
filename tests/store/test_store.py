"""The diskcache-backed store, on a real diskcache in tmp_path."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import diskcache
import pytest

from cacheaddon.entry import FORMAT_VERSION, Entry
from cacheaddon.keys import variant_group
from cacheaddon.relay import Job, Relay
from cacheaddon.spool import Spool
from cacheaddon.store import Store, StoreError

MIB = 1024 * 1024
SMALL = b"small body\n" * 10  # stored inside diskcache's database
LARGE = bytes(range(256)) * 1024  # 256 KiB: a file of its own


def entry_for(body: bytes, url: str = "https://files.example/pkg-1.0.tar.gz") -> Entry:
    return Entry(
        url,
        200,
        "OK",
        (("Content-Type", "application/octet-stream"),),
        time.time(),
        len(body),
        hashlib.sha256(body).hexdigest(),
    )


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(cache_dir: Path) -> Iterator[Store]:
    s = Store(cache_dir, 1 << 30)
    yield s
    s.close()


def spooled(store: Store, body: bytes) -> str:
    """The body written to a temporary file of the store, as the service does for large downloads."""
    handle, path = store.new_body_file()
    with handle:
        handle.write(body)
    return path


def value_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.val"))


def read_all(store: Store, entry: Entry, inline_limit: int = 0) -> bytes | None:
    body = store.read_body(entry, inline_limit)
    if body is None:
        return None
    if body.data is not None:
        assert body.file is None
        return body.data
    assert body.file is not None
    with body.file:
        data = body.file.read()
    assert body.size == len(data)
    return data


# commit, get, read_body


def test_a_small_body_round_trips(store: Store) -> None:
    entry = entry_for(SMALL)
    store.commit("k", entry, SMALL)
    assert store.get("k") == entry
    body = store.read_body(entry)
    assert body is not None
    assert (body.data, body.file, body.size) == (SMALL, None, len(SMALL))


def test_a_missing_key_reads_as_none(store: Store) -> None:
    assert store.get("nothing") is None
    assert store.read_body(entry_for(b"never stored")) is None


def test_a_large_body_is_moved_into_place_not_copied(store: Store, cache_dir: Path) -> None:
    entry = entry_for(LARGE)
    path = spooled(store, LARGE)
    store.commit("k", entry, path)
    assert not os.path.exists(path)
    [val] = value_files(cache_dir)
    assert val.read_bytes() == LARGE
    assert store.get("k") == entry
    body = store.read_body(entry)
    assert body is not None and body.data is None and body.file is not None
    with body.file:
        assert body.file.read() == LARGE
    assert read_all(store, entry, inline_limit=len(LARGE)) == LARGE  # small enough: in memory


def test_a_medium_body_from_a_temporary_file_is_stored_and_the_file_removed(store: Store) -> None:
    body = b"m" * 1000
    path = spooled(store, body)
    store.commit("k", entry_for(body), path)
    assert not os.path.exists(path)
    assert read_all(store, entry_for(body)) == body


def test_large_bytes_are_stored_as_a_file_and_read_back(store: Store, cache_dir: Path) -> None:
    store.commit("k", entry_for(LARGE), LARGE)
    assert len(value_files(cache_dir)) == 1
    assert read_all(store, entry_for(LARGE)) == LARGE


def test_one_body_serves_several_keys(store: Store, cache_dir: Path) -> None:
    entry = entry_for(LARGE)
    store.commit("k1", entry, LARGE)
    path = spooled(store, LARGE)
    store.commit("k2", entry, path)
    assert not os.path.exists(path)  # already stored: the temporary file is dropped
    assert len(value_files(cache_dir)) == 1
    assert store.get("k1") == store.get("k2") == entry


def test_a_record_can_be_replaced_and_deleted(store: Store) -> None:
    entry = entry_for(SMALL)
    store.commit("k", entry, SMALL)
    newer = entry.refreshed(entry.stored_at + 60, (("ETag", '"2"'),))
    store.put_record("k", newer)
    assert store.get("k") == newer
    store.delete("k")
    assert store.get("k") is None
    store.delete("k")  # deleting what is gone is fine


def test_committing_a_vanished_temporary_file_raises_and_stores_no_record(
    store: Store, tmp_path: Path
) -> None:
    for size in (100, 200 * 1024):
        with pytest.raises(StoreError):
            store.commit(f"k{size}", entry_for(b"x" * size), str(tmp_path / "gone.part"))
        assert store.get(f"k{size}") is None


# sharing one directory


def test_two_stores_on_one_directory_see_each_others_entries(cache_dir: Path) -> None:
    a, b = Store(cache_dir, 1 << 30), Store(cache_dir, 1 << 30)
    try:
        assert a.salt == b.salt and len(a.salt) == 32
        small, large = entry_for(SMALL, "https://h/a"), entry_for(LARGE, "https://h/b")
        a.commit("small", small, SMALL)
        b.commit("large", large, spooled(b, LARGE))
        assert b.get("small") == small and read_all(b, small) == SMALL
        assert a.get("large") == large and read_all(a, large) == LARGE
        a.delete("large")
        assert b.get("large") is None
    finally:
        a.close()
        b.close()


def test_the_salt_survives_reopening(cache_dir: Path) -> None:
    first = Store(cache_dir, 1 << 30)
    salt = first.salt
    first.close()
    again = Store(cache_dir, 1 << 30)
    assert again.salt == salt
    again.close()
    assert Store(cache_dir.parent / "other", 1 << 30).salt != salt


# damaged data


def flip_a_byte(path: Path, offset: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    "damage",
    [
        flip_a_byte,
        lambda p: p.write_bytes(p.read_bytes() + b"x"),
        lambda p: p.write_bytes(p.read_bytes()[:-1]),
    ],
    ids=["flipped", "longer", "shorter"],
)
@pytest.mark.parametrize("inline_limit", [0, MIB])
def test_a_corrupt_body_file_is_never_returned_and_is_dropped(
    store: Store, cache_dir: Path, damage: Any, inline_limit: int
) -> None:
    entry = entry_for(LARGE)
    store.commit("k", entry, LARGE)
    [val] = value_files(cache_dir)
    damage(val)
    assert store.read_body(entry, inline_limit) is None
    assert not val.exists()
    assert store.read_body(entry, inline_limit) is None
    store.commit("k", entry, LARGE)  # stored again, it reads fine
    assert read_all(store, entry, inline_limit) == LARGE


def test_a_corrupt_small_body_is_never_returned_and_is_dropped(store: Store, cache_dir: Path) -> None:
    entry = entry_for(SMALL)
    store.commit("k", entry, SMALL)
    with diskcache.Cache(str(cache_dir)) as raw:  # another writer damages the stored bytes
        raw.set("b " + entry.sha256, SMALL[:-1] + b"?")
    assert store.read_body(entry) is None
    assert store.read_body(entry) is None
    store.commit("k", entry, SMALL)
    assert read_all(store, entry) == SMALL


def test_a_body_corrupted_after_a_store_reopened_is_detected(cache_dir: Path) -> None:
    first = Store(cache_dir, 1 << 30)
    entry = entry_for(LARGE)
    first.commit("k", entry, LARGE)
    assert read_all(first, entry) == LARGE
    first.close()
    [val] = value_files(cache_dir)
    flip_a_byte(val)
    again = Store(cache_dir, 1 << 30)
    try:
        assert again.read_body(entry) is None
    finally:
        again.close()


def test_a_body_corrupted_in_place_after_a_hit_never_reaches_a_client_whole(
    store: Store, cache_dir: Path
) -> None:
    """Bit rot that keeps inode, size and mtime slips past the store's once-per-process check by design (a
    hash per hit would cost more than serving); the relay that sends the file hashes it on the way and holds
    the last chunk back, so the client gets a cut-short download, never a complete wrong one, and the body
    is dropped."""
    entry = entry_for(LARGE)
    store.commit("k", entry, LARGE)
    assert read_all(store, entry) == LARGE
    [val] = value_files(cache_dir)
    st = val.stat()
    flip_a_byte(val)
    os.utime(val, ns=(st.st_atime_ns, st.st_mtime_ns))
    body = store.read_body(entry)
    assert body is not None and body.file is not None
    dropped: list[bool] = []

    async def on_corrupt() -> None:
        store.drop_body(entry)
        dropped.append(True)

    async def fetch() -> bytes:
        relay = Relay()
        await relay.start()
        try:
            fields = [("Content-Length", str(entry.size))]
            job = Job(200, "OK", fields, file=body.file, length=entry.size, sha256=entry.sha256)
            job.on_corrupt = on_corrupt
            token = relay.register(job)
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(f"GET /{token} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
            await writer.drain()
            received = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return received
        finally:
            relay.close()

    received = asyncio.run(fetch())
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(payload) < entry.size  # cut short: the client sees a broken download
    assert dropped == [True]
    assert store.read_body(entry) is None  # and the next request fetches it again


def test_a_range_check_hashes_the_whole_file_whatever_earlier_checks_said(
    store: Store, cache_dir: Path
) -> None:
    """A byte range is cut from the file, so the relay cannot check it on the way: verify_whole re-hashes
    even a file this process checked before and that kept its inode, size and mtime."""
    entry = entry_for(LARGE)
    store.commit("k", entry, LARGE)
    body = store.read_body(entry)
    assert body is not None and body.file is not None
    assert store.verify_whole(entry, body.file)
    assert body.file.tell() == 0
    [val] = value_files(cache_dir)
    st = val.stat()
    flip_a_byte(val)
    os.utime(val, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not store.verify_whole(entry, body.file)
    body.file.close()
    assert store.read_body(entry) is None  # dropped: the next request fetches it again


def test_a_new_cache_directory_is_private_to_its_user(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "cache"
    Store(directory, 1 << 30).close()
    assert directory.stat().st_mode & 0o777 == 0o700


def test_a_body_file_lost_from_disk_can_be_stored_again(store: Store, cache_dir: Path) -> None:
    entry = entry_for(LARGE)
    store.commit("k", entry, LARGE)
    [val] = value_files(cache_dir)
    val.unlink()
    assert store.read_body(entry) is None
    store.commit("k", entry, LARGE)
    assert read_all(store, entry) == LARGE


def put_raw_record(cache_dir: Path, key: str, value: bytes) -> None:
    with diskcache.Cache(str(cache_dir)) as raw:
        raw.set("m " + key, value)


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1])
def test_a_record_of_another_version_reads_as_a_miss(store: Store, cache_dir: Path, version: int) -> None:
    record = {**entry_for(SMALL).to_record(), "v": version}
    put_raw_record(cache_dir, "k", json.dumps(record).encode())
    assert store.get("k") is None


def test_a_record_of_this_version_written_by_another_process_reads(store: Store, cache_dir: Path) -> None:
    entry = entry_for(SMALL)
    put_raw_record(cache_dir, "k", json.dumps(entry.to_record()).encode())
    assert store.get("k") == entry


@pytest.mark.parametrize("raw", [b"\xff\xfe not json", b"{truncated", b""])
def test_an_unreadable_record_reads_as_a_miss_and_is_dropped(
    store: Store, cache_dir: Path, raw: bytes
) -> None:
    put_raw_record(cache_dir, "k", raw)
    assert store.get("k") is None
    with diskcache.Cache(str(cache_dir)) as check:
        assert "m k" not in check


# size limit


def directory_size(cache_dir: Path) -> int:
    """What `du --apparent-size` counts: every file, the SQLite database, its log and unfinished bodies."""
    return sum(path.stat().st_size for path in cache_dir.rglob("*") if path.is_file())


def test_after_each_store_the_directory_is_back_under_the_limit(cache_dir: Path) -> None:
    """diskcache alone evicts at most ten rows per write and leaves out its write-ahead log and our
    unfinished bodies: three 30 MiB bodies in a 20 MiB cache once stayed at 5x the limit."""
    limit, size = 4 * MIB, 300 * 1024
    store = Store(cache_dir, limit)
    try:
        entries = []
        for i in range(60):
            body = os.urandom(size)
            entries.append(entry_for(body, f"https://h/{i}.whl"))
            store.commit(f"k{i}", entries[-1], body)
            store.record_digests({f"https://h/{i}/{j}.whl": "ab" * 32 for j in range(50)})
            assert directory_size(cache_dir) <= limit + size, i
        assert store.read_body(entries[-1]) is not None
        present = sum(store.read_body(e) is not None for e in entries)
        assert 0 < present < limit // size
        assert store.read_body(entries[0]) is None
    finally:
        store.close()


def test_unfinished_bodies_count_against_the_limit(cache_dir: Path) -> None:
    limit = 4 * MIB
    store = Store(cache_dir, limit)
    try:
        kept = []
        for i in range(8):
            body = os.urandom(300 * 1024)
            kept.append(entry_for(body, f"https://h/{i}.whl"))
            store.commit(f"k{i}", kept[-1], body)
        handle, path = store.new_body_file()  # a download under way, 2 MiB so far
        with handle:
            handle.write(os.urandom(2 * MIB))
        body = os.urandom(300 * 1024)
        store.commit("last", entry_for(body, "https://h/last.whl"), body)
        assert directory_size(cache_dir) <= limit
        store.discard(path)
    finally:
        store.close()


def test_eviction_is_least_recently_used(cache_dir: Path) -> None:
    store = Store(cache_dir, 4 * MIB)
    try:
        kept_body = os.urandom(300 * 1024)
        kept = entry_for(kept_body, "https://h/kept.whl")
        store.commit("kept", kept, kept_body)
        others = []
        for i in range(30):
            body = os.urandom(300 * 1024)
            others.append(entry_for(body, f"https://h/{i}.whl"))
            store.commit(f"k{i}", others[-1], body)
            assert store.get("kept") == kept  # used on every build: never the least recently used
            assert read_all(store, kept) == kept_body
        assert store.read_body(others[0]) is None
    finally:
        store.close()


def test_the_salt_survives_eviction(cache_dir: Path) -> None:
    store = Store(cache_dir, MIB)
    try:
        for i in range(30):
            body = os.urandom(100 * 1024)
            store.commit(f"k{i}", entry_for(body, f"https://h/{i}"), body)
        other = Store(cache_dir, MIB)
        try:
            assert other.salt == store.salt
        finally:
            other.close()
    finally:
        store.close()


# opening


def test_an_invalid_directory_raises_store_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(StoreError):
        Store(a_file / "cache", MIB)
    with pytest.raises(StoreError):
        Store(a_file, MIB)


def test_a_damaged_database_raises_store_error(cache_dir: Path) -> None:
    cache_dir.mkdir()
    (cache_dir / "cache.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as info:
        Store(cache_dir, MIB)
    assert str(cache_dir) in str(info.value)


def test_orphan_temporary_files_older_than_an_hour_are_removed_at_open(cache_dir: Path) -> None:
    Store(cache_dir, MIB).close()
    tmp = cache_dir / "tmp"
    old, recent = tmp / "123-old.part", tmp / "456-recent.part"
    old.write_bytes(b"half a download")
    recent.write_bytes(b"a download in progress")
    hours_ago = time.time() - 3601
    os.utime(old, (hours_ago, hours_ago))
    os.utime(recent, (time.time() - 3000, time.time() - 3000))
    Store(cache_dir, MIB).close()
    assert not old.exists()
    assert recent.exists()


# digests


def test_published_digests_are_shared_between_stores(store: Store, cache_dir: Path) -> None:
    store.record_digests({"https://h/a.whl": "sha256=" + "a" * 64, "https://h/b.tgz": "sha512=" + "b" * 128})
    other = Store(cache_dir, 1 << 30)
    try:
        assert other.expected_digest("https://h/a.whl") == "sha256=" + "a" * 64
        assert other.expected_digest("https://h/b.tgz") == "sha512=" + "b" * 128
        assert other.expected_digest("https://h/c.whl") is None
    finally:
        other.close()


# a full disk while spooling


class FullDiskFile:
    """A real temporary file of the store whose writes (or close) fail as on a full disk."""

    def __init__(self, handle: BinaryIO, fail_on: str) -> None:
        self._handle, self._fail_on = handle, fail_on
        self.closed_calls = 0

    def write(self, data: bytes) -> int:
        if self._fail_on == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def close(self) -> None:
        self.closed_calls += 1
        self._handle.close()
        if self._fail_on == "close":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fail_on", ["write", "close"])
def test_a_full_disk_makes_the_spool_unusable_without_raising(store: Store, fail_on: str) -> None:
    opened: list[tuple[FullDiskFile, str]] = []

    def open_file() -> tuple[FullDiskFile, str]:
        handle, path = store.new_body_file()
        opened.append((FullDiskFile(handle, fail_on), path))
        return opened[-1]

    async def download() -> tuple[Spool, Any]:
        with ThreadPoolExecutor(2) as pool:
            spool = Spool(1024, open_file, pool, 1 << 30)
            for _ in range(10):  # the client's stream goes on whatever the disk does
                await spool.write(b"x" * 1000)
            return spool, await spool.finish()

    spool, result = asyncio.run(download())
    assert result is None
    assert spool.unusable.startswith("cache write failed")
    [(file, path)] = opened
    assert file.closed_calls >= 1
    assert not os.path.exists(path)
    assert list((store.directory / "tmp").iterdir()) == []


def test_a_store_that_cannot_create_temporary_files_makes_the_spool_unusable(store: Store) -> None:
    def open_file() -> tuple[BinaryIO, str]:
        raise StoreError("creating a temporary file: [Errno 28] No space left on device", no_space=True)

    async def download() -> tuple[Spool, Any]:
        with ThreadPoolExecutor(2) as pool:
            spool = Spool(10, open_file, pool, 1 << 30)
            await spool.write(b"y" * 100)
            await spool.write(b"y" * 100)
            return spool, await spool.finish()

    spool, result = asyncio.run(download())
    assert result is None and "No space left" in spool.unusable


def test_a_spool_that_fits_commits_like_the_service_does(store: Store) -> None:
    async def download() -> Any:
        with ThreadPoolExecutor(2) as pool:
            spool = Spool(1024, store.new_body_file, pool, 1 << 30)
            for i in range(0, len(LARGE), 10_000):
                await spool.write(LARGE[i : i + 10_000])
            return await spool.finish()

    spooled_body = asyncio.run(download())
    assert spooled_body is not None and spooled_body.data is None and spooled_body.path is not None
    assert (spooled_body.size, spooled_body.sha256) == (len(LARGE), hashlib.sha256(LARGE).hexdigest())
    store.commit("k", entry_for(LARGE), spooled_body.path)
    assert read_all(store, entry_for(LARGE)) == LARGE


def test_lookup_takes_the_newest_record_of_its_keys(store: Store) -> None:
    """An unencoded answer and an encoded one can both exist for a URL (shared and coded keys): a stale old
    one must never hide the one the upstream sent since."""
    old, new = entry_for(b"old page"), entry_for(b"new page")
    old = Entry(**{**old.__dict__, "stored_at": 1000.0})
    new = Entry(**{**new.__dict__, "stored_at": 2000.0})
    store.commit("shared", old, b"old page")
    store.commit("coded", new, b"new page")
    for keys in (("shared", "coded"), ("coded", "shared")):
        entry, _ = store.lookup(keys, 1 << 20)
        assert entry == new
    entry, _ = store.lookup(("shared", "absent"), 1 << 20)
    assert entry == old


# the hit path: reads are not writes


def test_a_lookup_needs_no_write_lock(store: Store, cache_dir: Path) -> None:
    """diskcache's least-recently-used reads are write transactions: processes sharing a directory then
    queued on SQLite's write lock on every hit. Another writer holding it must not hold up a hit."""
    entry = entry_for(SMALL)
    store.commit("k", entry, SMALL)
    writer = sqlite3.connect(cache_dir / "cache.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        found: list[Any] = []
        reader = threading.Thread(target=lambda: found.append(store.lookup(("k",), 1 << 20)))
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "the lookup waited for the write lock"
        [(got, body)] = found
        assert got == entry and body.data == SMALL
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_the_data_version_changes_with_every_commit_of_another_store_only(cache_dir: Path) -> None:
    """What the hit path's record memo relies on: anything another process (another Store on the same
    directory) or another thread commits changes it; reads do not."""
    store, other = Store(cache_dir, 1 << 30), Store(cache_dir, 1 << 30)
    try:
        store.commit("k", entry_for(SMALL), SMALL)
        before = store.data_version()
        assert before is not None
        store.lookup(("k",), 1 << 20)
        other.lookup(("k",), 1 << 20)
        assert store.data_version() == before
        other.commit("k", entry_for(LARGE), LARGE)
        after = store.data_version()
        assert after != before
        with ThreadPoolExecutor(1) as thread:  # this store's own writes, from its database thread
            thread.submit(store.delete, "k").result()
        assert store.data_version() != after
    finally:
        store.close()
        other.close()


def test_reads_leave_their_access_times_for_the_next_store(store: Store, cache_dir: Path) -> None:
    """Eviction still takes the least recently used rows first: access times are written in one
    transaction, before the next store (or by the timer), not by each read."""

    def access_time(key: str) -> float:
        with sqlite3.connect(cache_dir / "cache.db") as con:
            [(at,)] = con.execute("SELECT access_time FROM Cache WHERE key = ?", (key,)).fetchall()
        return float(at)

    entry = entry_for(SMALL)
    store.commit("k", entry, SMALL)
    stored = access_time("m k")
    time.sleep(0.01)
    store.lookup(("k",), 1 << 20)
    assert access_time("m k") == stored
    store.commit("other", entry_for(LARGE), LARGE)
    assert access_time("m k") > stored
    assert access_time("b " + entry.sha256) > stored


def test_listing_the_variants_of_a_url_needs_no_write_lock(store: Store, cache_dir: Path) -> None:
    """Negotiation lists a URL's variants after a request's own keys missed: a read like a lookup, so it
    neither queues on SQLite's write lock nor changes the data_version that the hit path's memo relies on."""
    url = "https://index.example/simple/alpha/"
    json_key, html_key = f"{url}\naccept=application/json", f"{url}\naccept=text/html"
    store.commit(json_key, entry_for(SMALL, url), SMALL)
    store.commit(html_key, entry_for(LARGE, url), LARGE)
    group = variant_group(json_key)
    before = store.data_version()
    writer = sqlite3.connect(cache_dir / "cache.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        found: list[Any] = []
        reader = threading.Thread(target=lambda: found.append(store.variants(group)))
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "listing variants waited for the write lock"
        assert sorted(key for key, _ in found[0]) == sorted([json_key, html_key])
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert store.data_version() == before
