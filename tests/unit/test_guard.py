"""The guard at answer time, in front of a stand-in for the cache (documents by URL and Accept): filtered
documents and their validators, siblings, downloads refused, quarantine, one log line per version."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cacheaddon import counters as c
from cacheaddon import responses
from cacheaddon import settings as options
from cacheaddon.advisoryfeed import AdvisoryFeed
from cacheaddon.guard import Guard
from cacheaddon.keys import RequestView
from cacheaddon.policy import Outcome
from cacheaddon.reply import Reply
from cacheaddon.rulings import format_time

NOW = 1_800_000_000.0
DAY = 86400.0
REG = "https://registry.example"
PYPI = "https://index.example"
FILES = "https://files.example"
ABBREVIATED = "application/vnd.npm.install-v1+json"
PYPI_JSON = "application/vnd.pypi.simple.v1+json"


class Cache:
    """Answers like the cache would: a 200 with the upstream's fields, or a 404; records what it was asked."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], tuple[str, bytes, list[tuple[str, str]]]] = {}
        self.asked: list[tuple[str, str, str]] = []

    def put(self, url: str, accept: str, content_type: str, body: bytes, *fields: tuple[str, str]) -> None:
        self.docs[(url, accept)] = (content_type, body, list(fields))

    async def __call__(self, request: RequestView, url: str, origin: str) -> Reply:
        accept = request.header("accept")
        self.asked.append((request.method, url, accept))
        found = self.docs.get((url, accept)) or self.docs.get((url, "*"))
        if found is None:
            return Reply(Outcome.MISS, "miss", responses.error(404, url, "not found"))
        content_type, body, fields = found
        headers = [("Content-Type", content_type), ("ETag", '"upstream"'), *fields]
        headers.append(("Cache-Status", "upstream-cdn; hit"))  # a cache before ours
        headers += responses.cache_fields(Outcome.HIT, "fresh", 7)
        return Reply(Outcome.HIT, "fresh", responses.make(200, "OK", headers, body))


def packument(abbreviated: bool = False) -> bytes:
    releases = {"1.0.0": NOW - 300 * DAY, "1.1.0": NOW - 10 * DAY, "2.0.0": NOW - 3600}
    versions = {
        v: {
            "name": "kilo",
            "version": v,
            "dist": {"tarball": f"{REG}/kilo/-/kilo-{v}.tgz", "integrity": "sha512-x"},
        }
        for v in releases
    }
    doc: dict[str, Any] = {"name": "kilo", "dist-tags": {"latest": "2.0.0"}, "versions": versions}
    if not abbreviated:
        doc["time"] = {"modified": format_time(NOW), **{v: format_time(t) for v, t in releases.items()}}
    return json.dumps(doc).encode()


def pypi_page(status: str = "active") -> bytes:
    files = [
        {
            "filename": f"alpha-{v}-py3-none-any.whl",
            "url": f"{FILES}/p/alpha-{v}-py3-none-any.whl",
            "hashes": {"sha256": "00"},
            "upload-time": format_time(t),
        }
        for v, t in (("1.0.0", NOW - 300 * DAY), ("2.0.0", NOW - 60))
    ]
    doc = {"meta": {"api-version": "1.4"}, "name": "alpha", "files": files, "versions": ["1.0.0", "2.0.0"]}
    if status != "active":
        doc["project-status"] = {"status": status}
    return json.dumps(doc).encode()


def html_page() -> bytes:
    return (
        b"<html><body>\n"
        + b"".join(
            f'<a href="{FILES}/p/{name}#sha256=00">{name}</a><br/>\n'.encode()
            for name in ("alpha-1.0.0-py3-none-any.whl", "alpha-2.0.0-py3-none-any.whl")
        )
        + b"</body></html>\n"
    )


def guard(clock: list[float] | None = None, **opts: object) -> Guard:
    s = options.from_options(
        {**options.defaults(), "cache_min_release_age": "3d", **opts}, env={"HOME": "/h"}
    )
    now = clock if clock is not None else [NOW]
    return Guard(s, clock=lambda: now[0])


def ask(g: Guard, cache: Cache, url: str, accept: str = "*", method: str = "GET", **headers: str) -> Reply:
    request = RequestView(method, url, {"accept": accept, **headers})
    return asyncio.run(g.answer(cache, request, url, url.split("/", 3)[0] + "//" + url.split("/")[2]))


def body(reply: Reply) -> Any:
    assert reply.response is not None
    return json.loads(reply.response.raw_content or b"")


@pytest.fixture
def cache() -> Cache:
    c = Cache()
    c.put(f"{REG}/kilo", "application/json", "application/json", packument(), ("Last-Modified", "x"))
    c.put(f"{REG}/kilo", ABBREVIATED, ABBREVIATED, packument(abbreviated=True))
    c.put(f"{PYPI}/simple/alpha/", PYPI_JSON, PYPI_JSON, pypi_page())
    c.put(f"{PYPI}/simple/alpha/", "text/html", "text/html", html_page())
    c.put(f"{REG}/kilo/-/kilo-1.0.0.tgz", "*", "application/octet-stream", b"tarball")
    return c


def test_a_filtered_document_has_validators_of_its_own_and_says_what_was_filtered(cache: Cache) -> None:
    reply = ask(guard(), cache, f"{REG}/kilo", "application/json")
    assert reply.response is not None
    doc = body(reply)
    assert list(doc["versions"]) == ["1.0.0", "1.1.0"] and doc["dist-tags"] == {"latest": "1.1.0"}
    headers = reply.response.headers
    assert headers["etag"].startswith('"guard-') and "last-modified" not in headers
    assert headers["x-cache"] == "HIT" and headers["age"] == "7"
    assert headers["x-cache-detail"] == "fresh; filtered: 1 version younger than 3d, latest 2.0.0 -> 1.1.0"
    assert headers["content-length"] == str(len(reply.response.raw_content or b""))
    statuses = [v for k, v in headers.items(multi=True) if k.lower() == "cache-status"]
    assert statuses == ['upstream-cdn; hit', f'cacheaddon; hit; detail="{headers["x-cache-detail"]}"']
    other = ask(guard(cache_min_release_age="4d"), cache, f"{REG}/kilo", "application/json")
    assert other.response is not None and body(other) == doc
    assert other.response.headers["etag"] != headers["etag"]  # same bytes, other settings: other validator


def test_the_upstreams_validator_never_keeps_a_client_on_a_document_filtered_otherwise(cache: Cache) -> None:
    g = guard()
    stale = ask(g, cache, f"{REG}/kilo", "application/json", **{"if-none-match": '"upstream"'})
    assert stale.response is not None and stale.response.status_code == 200
    etag = stale.response.headers["etag"]
    assert all(method == "GET" and url == f"{REG}/kilo" for method, url, _ in cache.asked)
    same = ask(g, cache, f"{REG}/kilo", "application/json", **{"if-none-match": etag})
    assert same.response is not None and same.response.status_code == 304
    assert same.response.headers["etag"] == etag and not same.response.raw_content


def test_an_unfiltered_document_is_the_upstreams_and_answers_its_validators(cache: Cache) -> None:
    g = guard(cache_min_release_age="1m")
    reply = ask(g, cache, f"{REG}/kilo", "application/json")
    assert reply.response is not None and reply.response.raw_content == packument()
    assert reply.response.headers["etag"] == '"upstream"'
    again = ask(g, cache, f"{REG}/kilo", "application/json", **{"if-none-match": '"upstream"'})
    assert again.response is not None and again.response.status_code == 304


def test_versions_appear_once_old_enough_from_the_same_cached_document(cache: Cache) -> None:
    clock = [NOW]
    g = guard(clock)
    assert list(body(ask(g, cache, f"{REG}/kilo", "application/json"))["versions"]) == ["1.0.0", "1.1.0"]
    clock[0] = NOW + 3 * DAY
    later = body(ask(g, cache, f"{REG}/kilo", "application/json"))
    assert list(later["versions"]) == ["1.0.0", "1.1.0", "2.0.0"] and later["dist-tags"]["latest"] == "2.0.0"


def test_an_abbreviated_document_learns_its_dates_from_the_full_one_once(cache: Cache) -> None:
    g = guard()
    reply = ask(g, cache, f"{REG}/kilo", ABBREVIATED)
    assert list(body(reply)["versions"]) == ["1.0.0", "1.1.0"]
    assert cache.asked == [("GET", f"{REG}/kilo", ABBREVIATED), ("GET", f"{REG}/kilo", "application/json")]
    cache.asked.clear()
    ask(g, cache, f"{REG}/kilo", ABBREVIATED)
    assert cache.asked == [("GET", f"{REG}/kilo", ABBREVIATED)]


def test_a_version_the_cached_full_document_does_not_list_yet_is_young(cache: Cache) -> None:
    full = json.loads(packument())
    del full["versions"]["2.0.0"], full["time"]["2.0.0"]  # cached an hour before 2.0.0 came out
    cache.put(
        f"{REG}/kilo", "application/json", "application/json", json.dumps(full).encode(), ("Age", "3600")
    )
    g = guard()
    assert list(body(ask(g, cache, f"{REG}/kilo", ABBREVIATED))["versions"]) == ["1.0.0", "1.1.0"]
    refused = ask(g, cache, f"{REG}/kilo/-/kilo-2.0.0.tgz")
    assert refused.response is not None and refused.response.status_code == 403
    assert b"not yet listed by the registry at" in (refused.response.raw_content or b"")


def test_without_its_sibling_an_abbreviated_document_follows_the_missing_policy(cache: Cache) -> None:
    del cache.docs[(f"{REG}/kilo", "application/json")]
    reply = ask(guard(), cache, f"{REG}/kilo", ABBREVIATED)
    assert reply.response is not None and reply.response.raw_content == packument(abbreviated=True)
    refused = ask(guard(cache_release_age_missing="refuse"), cache, f"{REG}/kilo", ABBREVIATED)
    assert body(refused)["versions"] == {} and body(refused)["dist-tags"] == {}


def test_a_young_tarball_is_refused_naming_package_version_time_and_option(cache: Cache) -> None:
    g = guard()
    reply = ask(g, cache, f"{REG}/kilo/-/kilo-2.0.0.tgz")
    assert reply.response is not None and reply.response.status_code == 403
    text = (reply.response.raw_content or b"").decode()
    assert "kilo 2.0.0" in text and format_time(NOW - 3600) in text and "cache_min_release_age (3d)" in text
    assert ("GET", f"{REG}/kilo/-/kilo-2.0.0.tgz", "*") not in cache.asked  # never fetched
    ok = ask(g, cache, f"{REG}/kilo/-/kilo-1.0.0.tgz")
    assert ok.response is not None and ok.response.raw_content == b"tarball"


def test_an_exempt_package_gets_its_newest(cache: Cache) -> None:
    g = guard(cache_release_age_exempt=["npm:kilo"])
    assert list(body(ask(g, cache, f"{REG}/kilo", "application/json"))["versions"])[-1] == "2.0.0"
    cache.put(f"{REG}/kilo/-/kilo-2.0.0.tgz", "*", "application/octet-stream", b"new")
    assert ask(g, cache, f"{REG}/kilo/-/kilo-2.0.0.tgz").response.status_code == 200  # type: ignore[union-attr]


def test_pypi_html_takes_dates_from_the_json_form_and_files_follow(cache: Cache) -> None:
    g = guard()
    reply = ask(g, cache, f"{PYPI}/simple/alpha/", "text/html")
    assert reply.response is not None
    page = reply.response.raw_content or b""
    assert b"alpha-1.0.0" in page and b"alpha-2.0.0" not in page
    assert ("GET", f"{PYPI}/simple/alpha/", PYPI_JSON) in cache.asked
    # the files host is now known to belong to this index: its young file is refused, metadata too
    for suffix in ("", ".metadata"):
        refused = ask(g, cache, f"{FILES}/p/alpha-2.0.0-py3-none-any.whl{suffix}")
        assert refused.response is not None and refused.response.status_code == 403


def test_a_file_on_a_host_no_index_named_is_judged_by_advisories_only(cache: Cache, tmp_path: Path) -> None:
    kilo = {"package": {"ecosystem": "PyPI", "name": "alpha"}, "versions": ["1.0.0"]}
    (tmp_path / "MAL-1.json").write_text(json.dumps({"id": "MAL-1", "affected": [kilo]}))
    g = guard(cache_block_advisories=str(tmp_path))
    g.feed = AdvisoryFeed(tmp_path, include_all=False)
    for version, status in (("2.0.0", 200), ("1.0.0", 403)):
        url = f"https://elsewhere.example/alpha-{version}.tar.gz"
        cache.put(url, "*", "application/octet-stream", b"sdist")
        reply = ask(g, cache, url)
        assert reply.response is not None and reply.response.status_code == status


def test_a_quarantined_project_offers_no_files_even_cached_ones(cache: Cache) -> None:
    g = guard()
    cache.put(f"{FILES}/p/alpha-1.0.0-py3-none-any.whl", "*", "application/octet-stream", b"wheel")
    ask(g, cache, f"{PYPI}/simple/alpha/", PYPI_JSON)
    assert ask(g, cache, f"{FILES}/p/alpha-1.0.0-py3-none-any.whl").response.status_code == 200  # type: ignore[union-attr]
    cache.put(f"{PYPI}/simple/alpha/", PYPI_JSON, PYPI_JSON, pypi_page("quarantined"))
    page = body(ask(g, cache, f"{PYPI}/simple/alpha/", PYPI_JSON))
    assert page["files"] == [] and page["project-status"] == {"status": "quarantined"}
    refused = ask(g, cache, f"{FILES}/p/alpha-1.0.0-py3-none-any.whl")
    assert refused.response is not None and refused.response.status_code == 403
    assert b"quarantined upstream" in (refused.response.raw_content or b"")


def test_head_of_a_document_is_answered_as_the_filtered_get(cache: Cache) -> None:
    reply = ask(guard(), cache, f"{REG}/kilo", "application/json", method="HEAD")
    assert cache.asked[0][0] == "GET"
    assert reply.response is not None and reply.response.headers["etag"].startswith('"guard-')


def test_encoded_documents_are_decoded_and_served_unencoded(cache: Cache) -> None:
    cache.put(
        f"{REG}/kilo",
        "application/json",
        "application/json",
        gzip.compress(packument()),
        ("Content-Encoding", "gzip"),
    )
    reply = ask(guard(), cache, f"{REG}/kilo", "application/json")
    assert reply.response is not None and "content-encoding" not in reply.response.headers
    assert list(body(reply)["versions"]) == ["1.0.0", "1.1.0"]


def test_each_version_is_logged_once_and_everything_counted(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    g = guard()
    g.counters = c.Counters(None)
    with caplog.at_level(logging.INFO, logger="cacheaddon.guard"):
        for _ in range(3):
            ask(g, cache, f"{REG}/kilo", "application/json")
            ask(g, cache, f"{REG}/kilo/-/kilo-2.0.0.tgz")
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "hid from metadata" in line and "kilo 2.0.0" in line]) == 1
    assert len([line for line in lines if "refused a download" in line and "kilo 2.0.0" in line]) == 1
    totals = g.counters.totals()
    assert totals[c.series(c.GUARD_FILTERED, ecosystem="npm")] == 3
    assert totals[c.series(c.GUARD_REFUSALS, ecosystem="npm", reason="young")] == 3
    assert totals[c.series(c.GUARD_HIDDEN, ecosystem="npm", reason="young")] == 3


def test_a_file_asked_for_with_escaped_characters_is_judged_by_its_name(cache: Cache) -> None:
    """One cache key for both spellings, so one judgement: the young file is known by its index's date,
    even when the page was fetched long enough ago that an unlisted file would pass as undated."""
    cache.put(f"{PYPI}/simple/alpha/", PYPI_JSON, PYPI_JSON, pypi_page(), ("Age", str(int(5 * DAY))))
    g = guard()
    assert ask(g, cache, f"{PYPI}/simple/alpha/", PYPI_JSON).response is not None
    wheel = "alpha-2.0.0-py3-none-any"
    for name in (f"{wheel}.whl", f"{wheel}%2Ewhl", f"{wheel.replace('-', '%2D', 1)}.whl"):
        for suffix in ("", ".metadata", "%2Emetadata"):
            refused = ask(g, cache, f"{FILES}/p/{name}{suffix}")
            assert refused.response is not None and refused.response.status_code == 403, (name, suffix)
            assert b"was published" in (refused.response.content or b"")
