"""The stored record: round trip, unknown versions and damaged records read as None, 304 merges."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon.entry import FORMAT_VERSION, Entry

ENTRY = Entry(
    url="https://pypi.org/simple/requests/",
    status=200,
    reason="OK",
    headers=(("Content-Type", "text/html"), ("ETag", '"v1"'), ("Cache-Control", "max-age=600")),
    stored_at=1_700_000_000.5,
    size=1234,
    sha256="ab" * 32,
    vary=(("user-agent", "pip/24"),),
)

pairs = st.tuples(st.text(max_size=20), st.text(max_size=40))
entries = st.builds(
    Entry,
    url=st.text(max_size=60),
    status=st.integers(100, 599),
    reason=st.text(max_size=20),
    headers=st.lists(pairs, max_size=6).map(tuple),
    stored_at=st.floats(0, 4e9, allow_nan=False),
    size=st.integers(0, 2**40),
    sha256=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    vary=st.lists(pairs, max_size=3).map(tuple),
)


@given(entries)
def test_a_record_round_trips_through_json(entry: Entry) -> None:
    record = json.loads(json.dumps(entry.to_record()))
    assert Entry.from_record(record) == entry


def test_the_record_carries_its_format_version() -> None:
    assert ENTRY.to_record()["v"] == FORMAT_VERSION


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, -1, str(FORMAT_VERSION), None, [FORMAT_VERSION]])
def test_another_version_reads_as_none(version: Any) -> None:
    record = {**ENTRY.to_record(), "v": version}
    assert Entry.from_record(record) is None


def test_a_record_without_a_version_reads_as_none() -> None:
    record = ENTRY.to_record()
    del record["v"]
    assert Entry.from_record(record) is None


@pytest.mark.parametrize("field", [k for k in ENTRY.to_record() if k != "v"])
def test_a_record_missing_a_field_reads_as_none(field: str) -> None:
    record = ENTRY.to_record()
    del record[field]
    assert Entry.from_record(record) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "abc"),
        ("status", None),
        ("stored_at", "yesterday"),
        ("size", [1]),
        ("headers", None),
        ("headers", [["only-one"]]),
        ("headers", [["a", "b", "c"]]),
        ("headers", 5),
        ("vary", None),
        ("vary", [[1, 2, 3]]),
    ],
)
def test_a_damaged_record_reads_as_none(field: str, value: Any) -> None:
    assert Entry.from_record({**ENTRY.to_record(), field: value}) is None


@pytest.mark.parametrize("record", [None, [], "x", 1, b"{}", {"v": FORMAT_VERSION}])
def test_a_non_record_reads_as_none(record: object) -> None:
    assert Entry.from_record(record) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("etag", '"v1"'), ("ETAG", '"v1"'), ("content-type", "text/html"), ("last-modified", None), ("x", None)],
)
def test_header_lookup_ignores_case(name: str, value: str | None) -> None:
    assert ENTRY.header(name) == value


def test_validators() -> None:
    entry = Entry(
        "u", 200, "OK", (("etag", '"x"'), ("LAST-MODIFIED", "Wed, 01 May 2024 10:00:00 GMT")), 0, 0, ""
    )
    assert entry.etag == '"x"'
    assert entry.last_modified == "Wed, 01 May 2024 10:00:00 GMT"
    assert (ENTRY.last_modified, Entry("u", 200, "OK", (), 0, 0, "").etag) == (None, None)


def test_refreshed_without_headers_only_moves_stored_at() -> None:
    fresh = ENTRY.refreshed(1_800_000_000.0)
    assert fresh.stored_at == 1_800_000_000.0
    assert fresh == Entry(**{**ENTRY.__dict__, "stored_at": 1_800_000_000.0})
    assert ENTRY.stored_at == 1_700_000_000.5  # the original is untouched


def test_refreshed_merges_the_304_headers() -> None:
    entry = Entry(
        "u",
        200,
        "OK",
        (
            ("Content-Type", "application/json"),
            ("ETag", '"v1"'),
            ("Cache-Control", "max-age=60"),
            ("cache-control", "public"),
            ("Content-Encoding", "gzip"),
        ),
        100.0,
        42,
        "cd" * 32,
        (("user-agent", "npm/10"),),
    )
    fresh = entry.refreshed(200.0, (("etag", '"v2"'), ("Cache-Control", "max-age=300"), ("Date", "now")))
    assert fresh.headers == (
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
        ("etag", '"v2"'),
        ("Cache-Control", "max-age=300"),
        ("Date", "now"),
    )
    assert fresh.etag == '"v2"'
    assert (fresh.stored_at, fresh.size, fresh.sha256, fresh.vary, fresh.status) == (
        200.0,
        42,
        "cd" * 32,
        (("user-agent", "npm/10"),),
        200,
    )


@pytest.mark.parametrize(
    "damage",
    [
        {"stored_at": float("inf")},  # json writes and reads Infinity
        {"stored_at": float("-inf")},
        {"stored_at": float("nan")},
        {"size": -1},
    ],
)
def test_a_record_with_impossible_numbers_reads_as_none(damage: dict[str, Any]) -> None:
    """A foreign record (a bundle, the shared tier) whose age cannot be computed would fail every request
    for its URL, and spread: it is unreadable."""
    record = json.loads(json.dumps({**ENTRY.to_record(), **damage}))
    assert Entry.from_record(record) is None
