"""The guard on npm packuments, full and abbreviated: versions, time and dist-tags."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheaddon import advisories, npmdocs
from cacheaddon import settings as options
from cacheaddon.rulings import Dates, Reason, Rules, format_time

NOW = 1_800_000_000.0
DAY = 86400.0


def rules(age: str = "3d", **more: object) -> Rules:
    opts = {**options.defaults(), "cache_min_release_age": age, **more}
    return Rules.of(options.from_options(opts, env={"HOME": "/h"}), NOW)


def manifest(name: str, version: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "dependencies": {},
        "dist": {
            "tarball": f"https://registry.example/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz",
            "integrity": f"sha512-{version}==",
            "shasum": version.replace(".", "") * 4,
        },
    }


def full(releases: dict[str, float | None], tags: dict[str, str] | None = None, name: str = "kilo") -> bytes:
    doc = {
        "_id": name,
        "name": name,
        "dist-tags": tags if tags is not None else {"latest": list(releases)[-1]},
        "versions": {v: manifest(name, v) for v in releases},
        "time": {
            "created": format_time(NOW - 900 * DAY),
            "modified": format_time(NOW - 60),
            **{v: format_time(t) for v, t in releases.items() if t is not None},
        },
        "readme": "# kilo",
    }
    return json.dumps(doc, indent=2).encode()


def abbreviated(releases: dict[str, float | None], tags: dict[str, str] | None = None) -> bytes:
    doc = json.loads(full(releases, tags))
    return json.dumps(
        {
            "name": doc["name"],
            "modified": doc["time"]["modified"],
            "dist-tags": doc["dist-tags"],
            "versions": doc["versions"],
        }
    ).encode()


def dates(releases: dict[str, float | None]) -> dict[str, float | None]:
    return npmdocs.times(json.loads(full(releases, {})))


RELEASES: dict[str, float | None] = {
    "1.0.0": NOW - 300 * DAY,
    "1.1.0": NOW - 10 * DAY,
    "2.0.0-beta.1": NOW - 5 * DAY,
    "1.2.0": NOW - 2 * DAY,
    "2.0.0": NOW - 3600,
}


def test_young_versions_leave_versions_and_time_and_latest_moves() -> None:
    screened = npmdocs.screen(
        full(RELEASES, {"latest": "2.0.0", "next": "2.0.0", "beta": "2.0.0-beta.1"}), rules()
    )
    assert screened.body is not None
    doc = json.loads(screened.body)
    assert list(doc["versions"]) == ["1.0.0", "1.1.0", "2.0.0-beta.1"]
    assert set(doc["time"]) == {"created", "modified", "1.0.0", "1.1.0", "2.0.0-beta.1"}
    # a stable tag never lands on a prerelease; an untouched tag stays
    assert doc["dist-tags"] == {"latest": "1.1.0", "next": "1.1.0", "beta": "2.0.0-beta.1"}
    assert doc["versions"]["1.1.0"] == manifest("kilo", "1.1.0")  # integrity, shasum, tarball as published
    assert screened.moved == (("latest", "2.0.0", "1.1.0"), ("next", "2.0.0", "1.1.0"))
    assert screened.summary(rules()) == (
        "filtered: 2 versions younger than 3d, latest 2.0.0 -> 1.1.0, next 2.0.0 -> 1.1.0"
    )


def test_a_tag_with_nowhere_to_go_is_dropped() -> None:
    screened = npmdocs.screen(full({"1.0.0": NOW}), rules())
    assert screened.body is not None
    doc = json.loads(screened.body)
    assert (doc["versions"], doc["dist-tags"]) == ({}, {})


def test_abbreviated_documents_take_their_dates_from_the_full_one() -> None:
    doc = abbreviated(RELEASES)
    without = npmdocs.screen(doc, rules())
    assert without.body is None and without.lacks_dates and len(without.noted) == len(RELEASES)
    screened = npmdocs.screen(doc, rules(), Dates(dates(RELEASES)))
    assert screened.body is not None and not screened.lacks_dates
    out = json.loads(screened.body)
    assert list(out["versions"]) == ["1.0.0", "1.1.0", "2.0.0-beta.1"]
    assert out["dist-tags"] == {"latest": "1.1.0"}
    assert "time" not in out


def test_a_version_the_full_document_did_not_list_yet_is_as_young_as_that_document() -> None:
    doc = abbreviated(RELEASES)
    older = {v: t for v, t in dates(RELEASES).items() if v != "1.1.0"}  # fetched before 1.1.0 came out
    recent = npmdocs.screen(doc, rules(), Dates(older, as_of=NOW - DAY))
    assert recent.body is not None and "1.1.0" not in json.loads(recent.body)["versions"]
    young = next(v for v in recent.removed if v.version == "1.1.0")
    assert young.reason is Reason.YOUNG and "not yet listed by the registry at" in young.detail
    long_ago = npmdocs.screen(doc, rules(), Dates(older, as_of=NOW - 30 * DAY))  # could be any age since
    assert long_ago.body is not None and "1.1.0" in json.loads(long_ago.body)["versions"]
    assert [v.reason for v in long_ago.noted] == [Reason.MISSING]


def test_missing_dates_are_refused_on_request() -> None:
    releases: dict[str, float | None] = {"1.0.0": NOW - 300 * DAY, "1.1.0": None}
    screened = npmdocs.screen(full(releases), rules(cache_release_age_missing="refuse"))
    assert screened.body is not None
    assert list(json.loads(screened.body)["versions"]) == ["1.0.0"]
    assert {v.reason for v in screened.removed} == {Reason.MISSING}


def test_exempt_and_advisories() -> None:
    index = advisories.build_index(
        [
            {
                "id": "MAL-5",
                "affected": [{"package": {"ecosystem": "npm", "name": "kilo"}, "versions": ["1.1.0"]}],
            }
        ],
        include_all=False,
    )
    r = dataclasses.replace(rules(cache_release_age_exempt=["npm:kilo"]), advisories=index)
    screened = npmdocs.screen(full(RELEASES), r)
    assert screened.body is not None
    assert list(json.loads(screened.body)["versions"]) == ["1.0.0", "2.0.0-beta.1", "1.2.0", "2.0.0"]


def test_nothing_to_hide_and_not_packuments() -> None:
    screened = npmdocs.screen(full(RELEASES), rules("1m"))
    assert screened.body is None and screened.times == dates(RELEASES)
    for junk in (b"[]", b"{}", b"nope", b'{"name": "x", "versions": []}'):
        assert npmdocs.screen(junk, rules()).body is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://r.example/kilo/-/kilo-1.0.0.tgz", ("kilo", "1.0.0", "https://r.example/kilo")),
        ("https://r.example/@a/b/-/b-1.0.0.tgz", ("@a/b", "1.0.0", "https://r.example/@a%2Fb")),
        (
            "https://r.example:8443/npm/@a/b/-/b-2.0.0.tgz",
            ("@a/b", "2.0.0", "https://r.example:8443/npm/@a%2Fb"),
        ),
        ("https://r.example/kilo", None),
    ],
)
def test_a_tarballs_packument(url: str, expected: tuple[str, str, str] | None) -> None:
    assert npmdocs.tarball_document(url) == expected


# --- invariants --------------------------------------------------------------------------------------------

version_st = st.tuples(
    st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.sampled_from(["", "-beta.1", "-rc.2"])
).map(lambda t: f"{t[0]}.{t[1]}.{t[2]}{t[3]}")
releases_st = st.dictionaries(
    version_st, st.one_of(st.none(), st.floats(min_value=0, max_value=400 * DAY)), max_size=10
)


@settings(max_examples=200, deadline=None)
@given(releases_st, st.sampled_from(["", "1h", "3d", "30d"]), st.booleans(), st.booleans(), st.data())
def test_packuments_stay_valid_and_never_offer_a_young_version(
    ages: dict[str, float | None], age: str, refuse_missing: bool, abbreviate: bool, data: st.DataObject
) -> None:
    releases = {v: (NOW - a if a is not None else None) for v, a in ages.items()}
    names = list(releases) or ["0.0.0"]
    tags = data.draw(
        st.dictionaries(st.sampled_from(["latest", "next", "beta"]), st.sampled_from(names), max_size=3)
    )
    r = rules(age, cache_release_age_missing="refuse" if refuse_missing else "allow")
    document = abbreviated(releases, tags) if abbreviate else full(releases, tags)
    screened = npmdocs.screen(document, r, Dates(dates(releases)) if abbreviate else None)
    doc = json.loads(screened.body if screened.body is not None else document)
    original = json.loads(document)
    for version, meta in doc["versions"].items():
        assert meta == original["versions"][version]  # integrity, shasum and tarball untouched
        published = releases[version]
        if r.min_age:
            assert published is not None or not refuse_missing
            assert published is None or published <= r.cutoff
    for tag, target in doc["dist-tags"].items():
        # never dangling, unless the upstream's own tag was
        assert target in doc["versions"] or original["dist-tags"][tag] == target not in original["versions"]
    if not abbreviate:
        assert set(doc["time"]) - {"created", "modified"} <= set(doc["versions"])


@pytest.mark.parametrize("odd", [{}, ["2.0.0"], 2, None])
def test_a_dist_tag_naming_no_version_is_left_as_it_is(odd: object) -> None:
    doc = json.loads(full({"1.0.0": NOW - 100 * DAY, "2.0.0": NOW - 60}))
    doc["dist-tags"] = {"latest": "2.0.0", "odd": odd}
    screened = npmdocs.screen(json.dumps(doc).encode(), rules())
    assert screened.body is not None
    assert json.loads(screened.body)["dist-tags"] == {"latest": "1.0.0", "odd": odd}


def test_publish_times_no_calendar_can_hold_are_missing_ones() -> None:
    doc = json.loads(full({"1.0.0": NOW - 100 * DAY, "2.0.0": NOW - 60}))
    doc["time"]["2.0.0"] = "9999-12-31T23:59:59-14:00"
    screened = npmdocs.screen(json.dumps(doc).encode(), rules(cache_release_age_missing="refuse"))
    assert [(r.version, r.reason) for r in screened.removed] == [("2.0.0", Reason.MISSING)]


def test_a_document_nested_deeper_than_the_parser_goes_is_no_packument() -> None:
    deep = b'{"name": "kilo", "versions": {}, "dist-tags": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert npmdocs.parse(deep) is None
    assert npmdocs.screen(deep, rules()).body is None
