"""cache_block_advisories on disk: a directory or zip of OSV files, read again when it changes."""

from __future__ import annotations

import asyncio
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from cacheaddon import advisoryfeed
from cacheaddon.advisoryfeed import AdvisoryFeed
from cacheaddon.versions import NPM, PYPI


@pytest.fixture(autouse=True)
def checks_never_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    # A check that took over _SLOW_CHECK seconds (a loaded machine) would space the next ones out, and a
    # test expecting its change to be seen at once would fail by timing alone.
    monkeypatch.setattr(advisoryfeed, "_SLOW_CHECK", float("inf"))


def osv(ident: str, ecosystem: str, name: str, *listed: str) -> dict[str, Any]:
    return {
        "id": ident,
        "affected": [{"package": {"ecosystem": ecosystem, "name": name}, "versions": list(listed)}],
    }


def write(path: Path, record: dict[str, Any], mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_a_directory_tree_is_read_recursively(tmp_path: Path) -> None:
    write(tmp_path / "osv" / "npm" / "evil" / "MAL-1.json", osv("MAL-1", "npm", "evil", "1.0.1"))
    write(tmp_path / "osv" / "pypi" / "MAL-2.json", osv("MAL-2", "PyPI", "bad-thing", "0.2"))
    (tmp_path / "osv" / "README.md").write_text("not json")
    (tmp_path / "osv" / "broken.json").write_text("{")
    index, _ = advisoryfeed.load(tmp_path / "osv", include_all=False)
    assert index.advisory_for(NPM, "evil", "1.0.1") == "MAL-1"
    assert index.advisory_for(PYPI, "Bad_Thing", "0.2") == "MAL-2"
    assert (len(index), index.skipped) == (2, 1)


def test_a_zip_as_osv_dev_publishes_it(tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("MAL-1.json", json.dumps(osv("MAL-1", "npm", "evil", "1.0.1")))
        zf.writestr("GHSA-1.json", json.dumps(osv("GHSA-1", "npm", "vuln", "2.0.0")))
    index, _ = advisoryfeed.load(archive, include_all=False)
    assert index.advisory_for(NPM, "evil", "1.0.1") == "MAL-1"
    assert index.advisory_for(NPM, "vuln", "2.0.0") is None
    index, _ = advisoryfeed.load(archive, include_all=True)
    assert index.advisory_for(NPM, "vuln", "2.0.0") == "GHSA-1"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_path_that_is_no_directory_or_zip_is_refused_naming_the_option(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "advisories"
    if kind == "file":
        path.write_text("{}")
    with pytest.raises(ValueError, match="^cache_block_advisories: "):
        advisoryfeed.check_source(path)


def test_a_change_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "osv"
    write(directory / "MAL-1.json", osv("MAL-1", "npm", "evil", "1.0.1"), mtime=1_000_000)

    async def scenario() -> None:
        feed = AdvisoryFeed(directory, include_all=False, interval=0)
        first = await feed.current()
        assert first.advisory_for(NPM, "evil", "1.0.1") == "MAL-1"
        assert await feed.current() is first  # nothing changed: not read again
        assert feed.generation == 1
        write(directory / "MAL-1.json", osv("MAL-1", "npm", "evil", "1.0.2"), mtime=2_000_000)
        second = await feed.current()
        assert second.advisory_for(NPM, "evil", "1.0.1") is None
        assert second.advisory_for(NPM, "evil", "1.0.2") == "MAL-1"
        write(directory / "sub" / "MAL-3.json", osv("MAL-3", "npm", "worse", "3.0.0"), mtime=1_000_000)
        third = await feed.current()  # a new file with an old mtime still changes the signature
        assert third.advisory_for(NPM, "worse", "3.0.0") == "MAL-3"
        assert feed.generation == 3

    asyncio.run(scenario())


def test_checks_are_throttled_and_concurrent_requests_share_one_load(tmp_path: Path) -> None:
    directory = tmp_path / "osv"
    write(directory / "MAL-1.json", osv("MAL-1", "npm", "evil", "1.0.1"))

    async def scenario() -> None:
        feed = AdvisoryFeed(directory, include_all=False, interval=3600)
        results = await asyncio.gather(*(feed.current() for _ in range(5)))
        assert all(r is results[0] for r in results)
        assert feed.generation == 1
        write(directory / "MAL-2.json", osv("MAL-2", "npm", "evil", "9.9.9"))
        assert (await feed.current()).advisory_for(NPM, "evil", "9.9.9") is None  # not checked yet

    asyncio.run(scenario())


def test_an_unreadable_source_keeps_what_was_loaded(tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("MAL-1.json", json.dumps(osv("MAL-1", "npm", "evil", "1.0.1")))

    async def scenario() -> None:
        feed = AdvisoryFeed(archive, include_all=False, interval=0)
        assert (await feed.current()).advisory_for(NPM, "evil", "1.0.1") == "MAL-1"
        archive.write_bytes(b"truncated")
        assert (await feed.current()).advisory_for(NPM, "evil", "1.0.1") == "MAL-1"
        archive.unlink()
        assert (await feed.current()).advisory_for(NPM, "evil", "1.0.1") == "MAL-1"

    asyncio.run(scenario())


def test_a_damaged_member_of_a_zip_keeps_out_only_itself(tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MAL-1.json", json.dumps(osv("MAL-1", "npm", "evil", "1.0.1")) * 20)
        zf.writestr("MAL-2.json", json.dumps(osv("MAL-2", "npm", "worse", "2.0.0")))
    data = bytearray(archive.read_bytes())
    start = data.index(b"MAL-1.json") + len("MAL-1.json") + 4  # into the first member's deflate stream
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    index, _ = advisoryfeed.load(archive, include_all=False)
    assert index.advisory_for(NPM, "worse", "2.0.0") == "MAL-2"
    assert index.advisory_for(NPM, "evil", "1.0.1") is None and index.skipped == 1


def test_files_no_parser_can_take_are_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "osv"
    write(directory / "MAL-2.json", osv("MAL-2", "npm", "worse", "2.0.0"))
    (directory / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    odd = [
        {"id": "MAL-3", "affected": 5},
        {"id": "MAL-4", "affected": [{"package": ["worse"], "versions": ["1.0.0"]}]},
        {"id": "MAL-5", "affected": [{"package": {"ecosystem": "npm", "name": "worse"}, "versions": 5}]},
        {"id": "MAL-6", "affected": [{"package": {"ecosystem": "npm", "name": "worse"}, "ranges": 5}]},
        {"id": "GHSA-1", "aliases": 5},
    ]
    for record in odd:
        write(directory / f"{record['id']}.json", record)

    async def scenario() -> None:
        feed = AdvisoryFeed(directory, include_all=True, interval=0)
        index = await feed.current()
        assert index.advisory_for(NPM, "worse", "2.0.0") == "MAL-2"
        assert index.advisory_for(NPM, "worse", "1.0.0") is None

    asyncio.run(scenario())
