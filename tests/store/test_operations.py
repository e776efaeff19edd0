"""The store's operator side on a real diskcache: scans that do not touch the LRU order, purges that keep
shared bodies, refresh that loses no race, verify, bundles, and the counters' eviction and integrity hooks."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from cacheaddon import bundle, inventory, keys, recording
from cacheaddon.entry import Entry
from cacheaddon.settings import defaults, from_options
from cacheaddon.store import Store

SETTINGS = from_options(defaults())


def _entry(url: str, body: bytes, stored_at: float = 1000.0) -> Entry:
    return Entry(
        url,
        200,
        "OK",
        (("Content-Type", "text/html"),),
        stored_at,
        len(body),
        hashlib.sha256(body).hexdigest(),
    )


def _fill(store: Store) -> dict[str, bytes]:
    bodies = {
        "https://r.example/simple/a/": b"<a>index a</a>",
        "https://r.example/simple/b/": b"<a>index a</a>",  # the same body as a's
        "https://f.example/packages/a-1.0-py3-none-any.whl": b"W" * 200_000,  # a file of its own
    }
    for url, body in bodies.items():
        store.commit(f"{url}\naccept=*/*\nany-coding", _entry(url, body), body)
    return bodies


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "cache", 1 << 30)
    yield s
    s.close()


def test_scans_do_not_count_as_use(store: Store) -> None:
    _fill(store)
    before = {key: used for key, _, used in store.record_rows()}
    time.sleep(0.01)
    found, unreadable = inventory.items(store)
    assert len(found) == 3 and unreadable == []
    for item in found:
        assert store.peek_body(item.entry.sha256) is not None
    assert {key: used for key, _, used in store.record_rows()} == before
    assert store.record_count() == 3


def test_purge_keeps_a_body_another_entry_still_uses(store: Store) -> None:
    bodies = _fill(store)
    found, _ = inventory.items(store)
    chosen = [i for i in found if i.url.endswith("/a/")]
    result = inventory.purge(store, found, chosen)
    assert (result.entries, result.bytes, result.freed) == (1, len(bodies["https://r.example/simple/a/"]), 0)
    [b_item] = [i for i in inventory.items(store)[0] if i.url.endswith("/b/")]
    assert store.read_body(b_item.entry) is not None
    found, _ = inventory.items(store)
    result = inventory.purge(store, found, [i for i in found if i.url.endswith(".whl")])
    assert result.freed == 200_000


def test_refresh_marks_stale_and_loses_no_race(store: Store) -> None:
    _fill(store)
    found, _ = inventory.items(store)
    page = next(i for i in found if i.url.endswith("/a/"))
    wheel = next(i for i in found if i.url.endswith(".whl"))
    newer = _entry(page.url, b"<a>newer</a>", stored_at=2000.0)
    store.commit(page.key, newer, b"<a>newer</a>")  # a proxy replaced it after we listed it
    result = inventory.refresh(store, [page, wheel], SETTINGS)
    assert (result.marked, result.immutable, result.changed) == ([], 1, 1)
    assert store.get(page.key) == newer
    fresh, _ = inventory.items(store)
    again = inventory.refresh(store, [i for i in fresh if i.url == page.url], SETTINGS)
    assert len(again.marked) == 1
    marked = store.get(page.key)
    assert marked is not None and marked.invalidated and marked.refreshed(3000.0).invalidated is False


def test_verify_finds_and_fixes_damage_and_keeps_the_healthy(store: Store) -> None:
    bodies = _fill(store)
    store.commit(
        "https://r.example/simple/c/\naccept=*/*\nany-coding",
        _entry("https://r.example/simple/c/", b"c"),
        b"c",
    )
    assert inventory.verify(store, time.time()).problems == []
    wheel = _entry(
        "https://f.example/packages/a-1.0-py3-none-any.whl",
        bodies["https://f.example/packages/a-1.0-py3-none-any.whl"],
    )
    value = store.peek_body(wheel.sha256)
    assert value is not None and not isinstance(value, bytes)
    with value:
        path = Path(value.name)
    path.write_bytes(b"X" + path.read_bytes()[1:])
    store._cache.delete("b " + hashlib.sha256(b"c").hexdigest())  # a record whose body went missing
    store._cache.set("b " + "0" * 64, b"nobody's")  # a body no record points to (old enough)
    report = inventory.verify(store, time.time() + 3600)
    kinds = sorted((p.kind, p.what) for p in report.problems)
    assert kinds == [
        ("corrupt-body", wheel.url),
        ("missing-body", "https://r.example/simple/c/"),
        ("orphaned-body", "0" * 64),
    ]
    fixed = inventory.verify(store, time.time() + 3600, fix=True)
    assert fixed.fixed
    assert inventory.verify(store, time.time() + 3600).problems == []
    assert sorted(i.url for i in inventory.items(store)[0]) == [
        "https://r.example/simple/a/",
        "https://r.example/simple/b/",
    ]


def test_bundle_round_trip_and_refusals(tmp_path: Path, store: Store) -> None:
    _fill(store)
    found, _ = inventory.items(store)
    out = tmp_path / "b.tar"
    created = bundle.create(store, found, out)
    assert (created.entries, created.bodies) == (3, 2)
    target = Store(tmp_path / "target", 1 << 30)
    try:
        first = bundle.import_bundle(target, out)
        assert (first.imported, first.kept) == (3, 0)
        assert (bundle.import_bundle(target, out).imported, bundle.import_bundle(target, out).kept) == (0, 3)
        for item in found:
            entry = target.get(item.key)
            assert entry == item.entry and target.read_body(entry) is not None
        # A member that is not a body, a manifest listing what is absent: refused, nothing committed.
        odd = tmp_path / "odd.tar"
        with tarfile.open(out) as src, tarfile.open(odd, "w") as dst:
            for member in src.getmembers():
                if "/bodies/" in member.name and member.size == 200_000:
                    continue
                dst.addfile(member, src.extractfile(member))
        other = Store(tmp_path / "other", 1 << 30)
        try:
            with pytest.raises(bundle.BundleError, match="lacks 1"):
                bundle.import_bundle(other, odd)
            assert other.record_count() == 0 and not list((tmp_path / "other" / "tmp").iterdir())
        finally:
            other.close()
    finally:
        target.close()


def test_a_body_damaged_in_the_cache_is_not_bundled(tmp_path: Path, store: Store) -> None:
    _fill(store)
    found, _ = inventory.items(store)
    wheel = next(i for i in found if i.url.endswith(".whl"))
    value = store.peek_body(wheel.entry.sha256)
    assert value is not None and not isinstance(value, bytes)
    with value:
        Path(value.name).write_bytes(b"short")
    with pytest.raises(bundle.BundleError, match="damaged"):
        bundle.create(store, found, tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "x.tar.partial").exists()


def test_evictions_and_integrity_failures_reach_the_counters(tmp_path: Path) -> None:
    evicted: list[tuple[int, int]] = []
    failures: list[str] = []
    small = Store(tmp_path / "small", 1024 * 1024)
    try:
        small.watch(failures.append, lambda n, b: evicted.append((n, b)))
        for i in range(40):
            body = bytes([i]) * 100_000
            small.commit(
                f"https://f.example/{i}\naccept=\nany-coding", _entry(f"https://f.example/{i}", body), body
            )
        assert evicted and sum(n for n, _ in evicted) > 0 and sum(b for _, b in evicted) > 0
        entry = _entry("https://f.example/x", b"x")
        small.commit("k", entry, b"x")
        small._cache.set("b " + entry.sha256, b"y")
        assert small.read_body(entry) is None
        assert failures == ["body"]
    finally:
        small.close()


_HEAD = b'{"format": "cacheaddon-bundle", "version": 1, '


@pytest.mark.parametrize(
    "manifest",
    [
        _HEAD + b'"entries": [], "bodies": {"' + b"a" * 64 + b'": 1e999}}',
        b"[" * 100_000 + b"]" * 100_000,
        _HEAD + b'"entries": [{"key": "k", "record": 5}], "bodies": {}}',
    ],
)
def test_a_foreign_manifest_is_refused_with_one_message(
    tmp_path: Path, store: Store, manifest: bytes
) -> None:
    path = tmp_path / "foreign.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(bundle.MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(bundle.BundleError, match="damaged or foreign manifest"):
        bundle.import_bundle(store, path)
    assert store.record_count() == 0


def test_record_lines_no_parser_can_take_are_skipped(tmp_path: Path) -> None:
    record = tmp_path / "build.record"
    good = {"v": 1, "key": "k", "url": "https://x/", "status": 200, "size": 1, "sha256": "0" * 64, "at": 1.0}
    lines = [json.dumps(good), json.dumps({**good, "key": "k2", "size": 1e999}), "[" * 100_000]
    record.write_text("\n".join(lines) + "\n")
    found, bad = recording.read(record)
    assert [r.key for r in found] == ["k"] and bad == 2


def test_an_entry_chosen_by_an_unsent_vary_field_matches_in_the_cache_it_is_imported_into(
    tmp_path: Path, store: Store
) -> None:
    """A registry that sends `Vary: Origin` (S3, CloudFront) to clients that send no Origin: the record holds
    the digest of "" salted with this cache's salt, which the other cache's salt would never match, and
    the offline build would miss. A field the client did send cannot be carried, and is said so."""
    url, body = "https://static.example/crates/a/a-1.0.crate", b"crate"
    unsent = dataclasses.replace(_entry(url, body), vary=(("origin", keys.vary_digest("", store.salt)),))
    sent = dataclasses.replace(
        _entry(url + "?x", body), vary=(("user-agent", keys.vary_digest("pip/24", store.salt)),)
    )
    store.commit(f"{url}\naccept=*/*\nany-coding", unsent, body)
    store.commit(f"{url}?x\naccept=*/*\nany-coding", sent, body)
    out = tmp_path / "b.tar"
    created = bundle.create(store, inventory.items(store)[0], out)
    target = Store(tmp_path / "target", 1 << 30)
    try:
        bundle.import_bundle(target, out)
        imported = target.get(f"{url}\naccept=*/*\nany-coding")
        assert imported is not None
        assert keys.vary_matches(imported, keys.RequestView("GET", url, {"accept": "*/*"}), target.salt)
    finally:
        target.close()
    assert created.cache_bound == 1
