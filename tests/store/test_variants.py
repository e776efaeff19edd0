"""The store's list of variants per URL and credential owner (what content negotiation picks from), on a real
diskcache in tmp_path: kept in step with the records when they are replaced, deleted or evicted, and a key
whose record is gone reads as nothing, never as an error."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheaddon import keys
from cacheaddon.entry import Entry
from cacheaddon.keys import RequestView
from cacheaddon.store import Store

URL = "https://pypi.org/simple/requests/"
PIP = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
UV = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
SALT = b"s" * 32


def key_of(accept: str, url: str = URL, **fields: str) -> str:
    return keys.cache_key(RequestView("GET", url, {"accept": accept, **fields}), SALT)


def entry(body: bytes, content_type: str = "application/vnd.pypi.simple.v1+json", url: str = URL) -> Entry:
    headers = (("Content-Type", content_type),)
    return Entry(url, 200, "OK", headers, time.time(), len(body), hashlib.sha256(body).hexdigest())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "cache", 1 << 30)
    yield s
    s.close()


def listed(store: Store, key: str) -> dict[str, Entry]:
    return dict(store.variants(keys.variant_group(key)))


def test_each_stored_key_of_a_url_is_listed_with_its_record(store: Store) -> None:
    pip, html = entry(b"json"), entry(b"<html>", "text/html")
    store.commit(key_of(PIP), pip, b"json")
    store.commit(key_of("text/html"), html, b"<html>")
    assert listed(store, key_of(UV)) == {key_of(PIP): pip, key_of("text/html"): html}


def test_other_urls_and_credential_owners_have_lists_of_their_own(store: Store) -> None:
    store.commit(key_of(PIP), entry(b"anonymous"), b"anonymous")
    private = key_of(PIP, authorization="Bearer one")
    store.commit(private, entry(b"private"), b"private")
    other_url = "https://pypi.org/simple/six/"
    store.commit(key_of(PIP, other_url), entry(b"six", url=other_url), b"six")
    assert list(listed(store, key_of(UV))) == [key_of(PIP)]
    assert list(listed(store, key_of(UV, authorization="Bearer one"))) == [private]
    assert listed(store, key_of(UV, authorization="Bearer two")) == {}
    assert list(listed(store, key_of(UV, other_url))) == [key_of(PIP, other_url)]


def test_a_replaced_record_is_listed_once_with_its_new_content(store: Store) -> None:
    store.commit(key_of(PIP), entry(b"json"), b"json")
    newer = entry(b"<html>", "text/html")
    store.commit(key_of(PIP), newer, b"<html>")
    store.put_record(key_of(PIP), newer)  # a 304 refreshes the record in place
    assert listed(store, key_of(UV)) == {key_of(PIP): newer}


def test_a_deleted_record_is_unlisted_and_an_empty_list_removed(store: Store) -> None:
    store.commit(key_of(PIP), entry(b"json"), b"json")
    store.commit(key_of("text/html"), entry(b"<html>", "text/html"), b"<html>")
    store.delete(key_of(PIP))
    assert list(listed(store, key_of(UV))) == [key_of("text/html")]
    store.delete(key_of("text/html"))
    assert listed(store, key_of(UV)) == {}
    assert "v " + keys.variant_group(key_of(UV)) not in store._cache


def test_a_record_gone_behind_the_lists_back_reads_as_nothing_and_is_pruned_on_the_next_write(
    store: Store,
) -> None:
    store.commit(key_of(PIP), entry(b"json"), b"json")
    store._cache.delete("m " + key_of(PIP))  # as diskcache's eviction removes a row: no delete() of ours
    assert listed(store, key_of(UV)) == {}
    store.commit(key_of("text/html"), entry(b"<html>", "text/html"), b"<html>")
    assert json.loads(store._cache.get("v " + keys.variant_group(key_of(UV)))) == [key_of("text/html")]


def test_a_corrupt_record_behind_the_list_reads_as_nothing(store: Store) -> None:
    store.commit(key_of(PIP), entry(b"json"), b"json")
    store._cache.set("m " + key_of(PIP), b"{not json")
    assert listed(store, key_of(UV)) == {}
    assert store.get(key_of(PIP)) is None


@pytest.mark.parametrize("row", [b"{not json", b'{"a": 1}', b'[1, null, "x"]', "text"])
def test_a_damaged_list_reads_as_no_variants_and_is_rewritten(store: Store, row: bytes | str) -> None:
    store.commit(key_of(PIP), entry(b"json"), b"json")
    store._cache.set("v " + keys.variant_group(key_of(PIP)), row)
    assert listed(store, key_of(UV)) == {}
    store.commit(key_of("text/html"), entry(b"<html>", "text/html"), b"<html>")
    assert list(listed(store, key_of(UV))) == [key_of("text/html")]


def test_a_client_inventing_accept_values_cannot_grow_the_list_without_bound(store: Store) -> None:
    body = b"json"
    for i in range(50):
        store.commit(key_of(f"application/x-{i}"), entry(body), body)
    found = listed(store, key_of(UV))
    assert 0 < len(found) <= 32
    assert key_of("application/x-49") in found  # the newest are kept


def test_two_stores_on_one_directory_see_each_others_variants(tmp_path: Path) -> None:
    first, second = Store(tmp_path / "cache", 1 << 30), Store(tmp_path / "cache", 1 << 30)
    try:
        first.commit(key_of(PIP), entry(b"json"), b"json")
        second.commit(key_of("text/html"), entry(b"<html>", "text/html"), b"<html>")
        assert (
            set(listed(first, key_of(UV)))
            == set(listed(second, key_of(UV)))
            == {
                key_of(PIP),
                key_of("text/html"),
            }
        )
    finally:
        first.close()
        second.close()


def test_eviction_by_the_size_limit_leaves_only_readable_variants(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache", 4 * 1024 * 1024)
    try:
        accepts = [f"application/x-{i}" for i in range(30)]
        for accept in accepts:
            body = os.urandom(400 * 1024)
            store.commit(key_of(accept), entry(body, "application/octet-stream"), body)
            for key, found in store.variants(keys.variant_group(key_of(UV))):
                assert store.get(key) == found
        survivors = listed(store, key_of(UV))
        # Eviction takes bodies first (a record whose body went reads as a miss); none is an error.
        readable = [key for key, found in survivors.items() if store.read_body(found) is not None]
        assert 0 < len(readable) < len(accepts)
        assert key_of(accepts[-1]) in readable
    finally:
        store.close()
