"""The guard on PyPI's simple API pages, JSON and HTML: which files go, what stays byte for byte."""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheaddon import advisories, pypidocs
from cacheaddon import settings as options
from cacheaddon.rulings import Dates, Reason, Rules, format_time

NOW = 1_800_000_000.0
DAY = 86400.0
FILES = "https://files.example/packages"


def rules(age: str = "3d", **more: object) -> Rules:
    opts = {**options.defaults(), "cache_min_release_age": age, **more}
    return Rules.of(options.from_options(opts, env={"HOME": "/h"}), NOW)


def files_of(releases: dict[str, float | None], name: str = "alpha") -> list[dict[str, Any]]:
    """A wheel and an sdist per version, with PEP 658 metadata on the wheel."""
    out = []
    for version, published in releases.items():
        for filename in (f"{name}-{version}-py3-none-any.whl", f"{name}-{version}.tar.gz"):
            item: dict[str, Any] = {
                "filename": filename,
                "url": f"{FILES}/{filename}",
                "hashes": {"sha256": hashlib.sha256(filename.encode()).hexdigest()},
                "requires-python": ">=3.8",
            }
            if filename.endswith(".whl"):
                item["core-metadata"] = {"sha256": "ab" * 32}
            if published is not None:
                item["upload-time"] = format_time(published)
            out.append(item)
    return out


def json_page(releases: dict[str, float | None], status: str | None = None) -> bytes:
    doc: dict[str, Any] = {
        "meta": {"api-version": "1.4"},
        "name": "alpha",
        "files": files_of(releases),
        "versions": list(releases),
    }
    if status:
        doc["project-status"] = {"status": status, "reason": "malware"}
    return json.dumps(doc, indent=1).encode()


def html_page(releases: dict[str, float | None], status: str | None = None) -> bytes:
    meta = f'<meta name="pypi:project-status" content="{status}">\n' if status else ""
    links = "".join(
        f'    <a href="{html.escape(f["url"])}#sha256={f["hashes"]["sha256"]}"'
        ' data-requires-python="&gt;=3.8"'
        + (' data-core-metadata="sha256=' + "ab" * 32 + '"' if "core-metadata" in f else "")
        + f">{f['filename']}</a><br/>\n"
        for f in files_of(releases)
    )
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta name="pypi:repository-version" content="1.4">\n'
        f"{meta}<title>Links for alpha</title>\n</head>\n<body>\n<h1>Links for alpha</h1>\n"
        f"{links}</body>\n</html>\n"
    ).encode()


def times_of(releases: dict[str, float | None]) -> dict[str, float | None]:
    return {f["filename"]: releases[v] for v in releases for f in files_of({v: releases[v]})}


RELEASES: dict[str, float | None] = {"1.0.0": NOW - 200 * DAY, "1.1.0": NOW - 5 * DAY, "2.0.0": NOW - 60}


def test_project_pages_are_recognised_by_path() -> None:
    assert pypidocs.project_of("/simple/Foo_Bar/") == "foo-bar"
    assert pypidocs.project_of("/root/pypi/+simple/foo/") == "foo"
    assert pypidocs.project_of("/api/pypi/remote/simple/foo") == "foo"
    assert pypidocs.project_of("/simple/") is None
    assert pypidocs.project_of("/packages/foo-1.0.tar.gz") is None


def test_json_young_files_go_with_their_metadata_and_version() -> None:
    screened = pypidocs.screen_json(json_page(RELEASES), "alpha", rules())
    assert screened.body is not None
    doc = json.loads(screened.body)
    assert [f["filename"] for f in doc["files"]] == [f["filename"] for f in files_of(RELEASES)][:4]
    assert doc["files"] == files_of(RELEASES)[:4]  # kept entries untouched: hashes, metadata, URLs
    assert doc["versions"] == ["1.0.0", "1.1.0"]
    assert doc["meta"] == {"api-version": "1.4"}
    assert {(v.version, v.reason) for v in screened.removed} == {("2.0.0", Reason.YOUNG)}
    assert screened.summary(rules()) == "filtered: 1 version younger than 3d"


def test_json_with_nothing_to_hide_is_left_alone_but_tells_its_dates() -> None:
    screened = pypidocs.screen_json(json_page(RELEASES), "alpha", rules("1m"))
    assert screened.body is None
    assert screened.times == times_of(RELEASES)
    assert screened.links == tuple(f["url"] for f in files_of(RELEASES))
    assert screened.status == "active"


def test_a_version_keeps_its_place_while_one_of_its_files_is_old_enough() -> None:
    releases = {"1.0.0": NOW - 200 * DAY}
    page = json.loads(json_page(releases))
    page["files"][1]["upload-time"] = format_time(NOW - 60)  # an sdist uploaded later to an old release
    screened = pypidocs.screen_json(json.dumps(page).encode(), "alpha", rules())
    assert screened.body is not None
    doc = json.loads(screened.body)
    assert [f["filename"] for f in doc["files"]] == ["alpha-1.0.0-py3-none-any.whl"]
    assert doc["versions"] == ["1.0.0"]


def test_json_without_upload_times_is_let_through_or_emptied() -> None:
    releases: dict[str, float | None] = {"1.0.0": None}
    let = pypidocs.screen_json(json_page(releases), "alpha", rules())
    assert let.body is None and {v.reason for v in let.noted} == {Reason.MISSING}
    refused = pypidocs.screen_json(json_page(releases), "alpha", rules(cache_release_age_missing="refuse"))
    assert refused.body is not None and json.loads(refused.body)["files"] == []


def test_a_quarantined_project_offers_no_files() -> None:
    old = {"1.0.0": NOW - 200 * DAY}
    screened = pypidocs.screen_json(json_page(old, status="quarantined"), "alpha", rules(""))
    assert screened.body is not None and screened.status == "quarantined"
    doc = json.loads(screened.body)
    assert (doc["files"], doc["versions"]) == ([], [])
    assert doc["project-status"] == {"status": "quarantined", "reason": "malware"}
    page = pypidocs.screen_html(html_page(old, status="quarantined"), "alpha", rules(""), None)
    assert page.body is not None and b"<a " not in page.body
    assert b'<meta name="pypi:project-status" content="quarantined">' in page.body
    assert pypidocs.screen_json(json_page(old, status="archived"), "alpha", rules("")).body is None


def test_advisories_remove_exact_versions() -> None:
    index = advisories.build_index(
        [
            {
                "id": "MAL-1",
                "affected": [{"package": {"ecosystem": "PyPI", "name": "Alpha"}, "versions": ["1.1"]}],
            }
        ],
        include_all=False,
    )
    r = dataclasses.replace(rules(""), advisories=index)
    screened = pypidocs.screen_json(json_page(RELEASES), "alpha", r)
    assert screened.body is not None
    assert json.loads(screened.body)["versions"] == ["1.0.0", "2.0.0"]
    assert screened.summary(r) == "filtered: 1 version named by MAL-1"
    page = pypidocs.screen_html(html_page(RELEASES), "alpha", r, None)
    assert page.body is not None and b"alpha-1.1.0" not in page.body and b"alpha-2.0.0" in page.body


def test_html_links_go_whole_lines_and_others_stay_byte_for_byte() -> None:
    page = html_page(RELEASES)
    screened = pypidocs.screen_html(page, "alpha", rules(), Dates(times_of(RELEASES)))
    assert screened.body is not None
    young = [line for line in page.splitlines(keepends=True) if b"alpha-2.0.0" in line]
    assert len(young) == 2
    assert screened.body == page.replace(young[0], b"").replace(young[1], b"")
    assert screened.links == tuple(f"{f['url']}#sha256={f['hashes']['sha256']}" for f in files_of(RELEASES))


def test_html_without_dates_lets_everything_through_by_default() -> None:
    screened = pypidocs.screen_html(html_page(RELEASES), "alpha", rules(), None)
    assert screened.body is None and len(screened.noted) == 6 and screened.lacks_dates


def test_html_of_other_shapes() -> None:
    page = (
        b"<html><body><A HREF='https://f.example/p/alpha-2.0.0.tar.gz#sha256=00'>alpha-2.0.0.tar.gz</A>"
        b"<a href=\"https://f.example/p/alpha-1.0.0.tar.gz\" data-requires-python='>=3'>"
        b"alpha-1.0.0.tar.gz</a>"
        b'<a href="https://f.example/p/alpha-1.1.0.tar.gz"></a></body></html>'
    )
    times = {"alpha-2.0.0.tar.gz": NOW, "alpha-1.0.0.tar.gz": NOW - 9 * DAY, "alpha-1.1.0.tar.gz": NOW}
    screened = pypidocs.screen_html(page, "alpha", rules(), Dates(times))
    assert screened.body == (
        b"<html><body>"
        b"<a href=\"https://f.example/p/alpha-1.0.0.tar.gz\" data-requires-python='>=3'>"
        b"alpha-1.0.0.tar.gz</a>"
        b"</body></html>"
    )


def test_not_a_project_page() -> None:
    assert pypidocs.screen_json(b'{"projects": []}', "x", rules()).body is None
    assert pypidocs.screen_json(b"not json", "x", rules()).body is None


# --- invariants --------------------------------------------------------------------------------------------

versions_st = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)).map(
        lambda t: ".".join(map(str, t))
    ),
    min_size=0,
    max_size=8,
    unique=True,
)
age_st = st.one_of(st.none(), st.floats(min_value=0, max_value=400 * DAY))
cutoff_st = st.sampled_from(["", "1m", "1h", "3d", "30d", "1w"])


@settings(max_examples=150, deadline=None)
@given(
    versions_st.flatmap(
        lambda vs: st.tuples(st.just(vs), st.lists(age_st, min_size=len(vs), max_size=len(vs)))
    ),
    cutoff_st,
    st.booleans(),
)
def test_json_pages_stay_valid_and_never_offer_a_young_file(
    data: tuple[list[str], list[float | None]], age: str, refuse_missing: bool
) -> None:
    names, ages = data
    releases = {v: (NOW - a if a is not None else None) for v, a in zip(names, ages, strict=True)}
    r = rules(age, cache_release_age_missing="refuse" if refuse_missing else "allow")
    original = json.loads(json_page(releases))
    screened = pypidocs.screen_json(json_page(releases), "alpha", r)
    doc = json.loads(screened.body) if screened.body is not None else original
    for item in doc["files"]:
        assert item in original["files"]  # untouched, hashes and all
        published = releases[re.sub(r"^alpha-|(-py3-none-any\.whl|\.tar\.gz)$", "", item["filename"])]
        if r.min_age:
            assert published is not None or not refuse_missing
            assert published is None or published <= r.cutoff
    kept_versions = {
        re.sub(r"^alpha-|(-py3-none-any\.whl|\.tar\.gz)$", "", f["filename"]) for f in doc["files"]
    }
    assert set(doc["versions"]) == kept_versions
    assert len(doc["files"]) + 2 * len({v.version for v in screened.removed}) == len(original["files"])


@settings(max_examples=150, deadline=None)
@given(
    versions_st.flatmap(
        lambda vs: st.tuples(st.just(vs), st.lists(age_st, min_size=len(vs), max_size=len(vs)))
    ),
    cutoff_st,
)
def test_html_pages_keep_their_links_intact_and_never_offer_a_young_file(
    data: tuple[list[str], list[float | None]], age: str
) -> None:
    names, ages = data
    releases = {v: (NOW - a if a is not None else None) for v, a in zip(names, ages, strict=True)}
    r = rules(age)
    page = html_page(releases)
    screened = pypidocs.screen_html(page, "alpha", r, Dates(times_of(releases)))
    body = screened.body if screened.body is not None else page
    original_lines = page.splitlines(keepends=True)
    lines = body.splitlines(keepends=True)
    assert all(line in original_lines for line in lines)  # whole lines removed, nothing altered
    assert [line for line in original_lines if b"<a " not in line] == [
        line for line in lines if b"<a " not in line
    ]
    for line in lines:
        m = re.search(rb">alpha-([0-9.]+?)(?:-py3-none-any\.whl|\.tar\.gz)</a>", line)
        if m:
            published = releases[m[1].decode()]
            assert published is None or not r.min_age or published <= r.cutoff


def test_a_page_nested_deeper_than_the_parser_goes_is_left_alone() -> None:
    deep = b'{"name": "alpha", "files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert pypidocs.screen_json(deep, "alpha", rules()).body is None


def test_a_page_whose_name_is_not_text_is_judged_under_its_url_s_name() -> None:
    doc = json.loads(json_page({"1.0.0": NOW - 100 * DAY, "2.0.0": NOW - 60}))
    doc["name"] = ["not", "a", "name"]
    screened = pypidocs.screen_json(json.dumps(doc).encode(), "alpha", rules())
    assert {r.name for r in screened.removed} == {"alpha"}


def test_a_link_is_judged_by_the_file_its_url_leads_to() -> None:
    """pip and uv take a link's file name from its URL, not from its text."""
    young, old = "alpha-2.0.0-py3-none-any.whl", "alpha-1.0.0-py3-none-any.whl"
    page = f'<a href="https://files.example/p/{young}#sha256=00">{old}</a>\n'.encode()
    known = Dates({young: NOW - 60, old: NOW - 100 * DAY}, NOW)
    screened = pypidocs.screen_html(page, "alpha", rules(), known)
    assert screened.body == b"" and [r.version for r in screened.removed] == ["2.0.0"]


@pytest.mark.parametrize(
    "page",
    [
        # the young link unclosed; the old one; the young one, at the page's end
        "<a href='https://f/{young}'>{young}\n<a href='https://f/{old}'>{old}</a>\n",
        "<a href='https://f/{old}'>{old}\n<a href='https://f/{young}'>{young}</a>\n</body>",
        "<a href='https://f/{old}'>{old}</a>\n<a href='https://f/{young}'>{young}\n</body></html>",
    ],
)
def test_an_unclosed_link_is_still_judged_and_hides_no_other(page: str) -> None:
    """An HTML parser (pip's, uv's) sees a link in an anchor left unclosed: it is judged like any other, and
    neither hides the young link after it nor takes the old one with it."""
    young, old = "alpha-2.0.0-py3-none-any.whl", "alpha-1.0.0-py3-none-any.whl"
    known = Dates({young: NOW - 60, old: NOW - 100 * DAY}, NOW)
    screened = pypidocs.screen_html(page.format(young=young, old=old).encode(), "alpha", rules(), known)
    assert screened.body is not None
    assert young.encode() not in screened.body and old.encode() in screened.body
