"""OSV advisories: which records count, and which versions they name (lists and ranges, per ecosystem)."""

from __future__ import annotations

from typing import Any

import pytest

from cacheaddon import advisories
from cacheaddon.versions import NPM, PYPI


def record(
    ident: str = "MAL-2025-1",
    ecosystem: str = "npm",
    name: str = "evil",
    listed: list[str] | None = None,
    ranges: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    affected: dict[str, Any] = {"package": {"ecosystem": ecosystem, "name": name}}
    if listed is not None:
        affected["versions"] = listed
    if ranges is not None:
        affected["ranges"] = ranges
    return {"id": ident, "affected": [affected], **extra}


def semver(*events: dict[str, str], kind: str = "SEMVER") -> list[dict[str, Any]]:
    return [{"type": kind, "events": list(events)}]


def index(*records: dict[str, Any] | None, include_all: bool = False) -> advisories.AdvisoryIndex:
    return advisories.build_index(records, include_all)


def test_a_listed_version_is_named_and_its_neighbours_are_not() -> None:
    idx = index(record(listed=["1.0.1"]))
    assert idx.advisory_for(NPM, "evil", "1.0.1") == "MAL-2025-1"
    assert idx.advisory_for(NPM, "evil", "1.0.0") is None
    assert idx.advisory_for(NPM, "evil", "1.0.2") is None


def test_matching_needs_ecosystem_name_and_version_never_the_name_alone() -> None:
    idx = index(record(listed=["1.0.1"]))
    assert idx.advisory_for(PYPI, "evil", "1.0.1") is None
    assert idx.advisory_for(NPM, "evil2", "1.0.1") is None
    assert idx.advisory_for(NPM, "Evil", "1.0.1") is None  # npm names are exact


def test_pypi_names_and_versions_are_normalised() -> None:
    idx = index(record(ecosystem="PyPI", name="Evil_Pkg", listed=["1.0"]))
    assert idx.advisory_for(PYPI, "evil-pkg", "1.0.0") == "MAL-2025-1"
    assert idx.advisory_for(PYPI, "EVIL.pkg", "1.0") == "MAL-2025-1"


@pytest.mark.parametrize(
    ("events", "named", "spared"),
    [
        ([{"introduced": "0"}], ["0.0.1", "1.0.0", "99.0.0-rc.1"], []),
        ([{"introduced": "1.2.0"}, {"fixed": "1.2.5"}], ["1.2.0", "1.2.4"], ["1.1.9", "1.2.5", "2.0.0"]),
        ([{"introduced": "0"}, {"last_affected": "1.0.0"}], ["0.1.0", "1.0.0"], ["1.0.1"]),
        (
            [{"introduced": "1.0.0"}, {"fixed": "1.1.0"}, {"introduced": "2.0.0"}, {"fixed": "2.0.3"}],
            ["1.0.5", "2.0.2"],
            ["1.1.0", "1.5.0", "2.0.3"],
        ),
        ([{"fixed": "2.0.3"}, {"introduced": "2.0.0"}], ["2.0.1"], ["1.0.0", "2.0.3"]),  # unsorted events
        ([{"introduced": "1.0.0-rc.1"}, {"fixed": "1.0.0"}], ["1.0.0-rc.2"], ["1.0.0", "0.9.0"]),
    ],
)
def test_semver_ranges(events: list[dict[str, str]], named: list[str], spared: list[str]) -> None:
    idx = index(record(ranges=semver(*events)))
    for version in named:
        assert idx.advisory_for(NPM, "evil", version) == "MAL-2025-1", version
    for version in spared:
        assert idx.advisory_for(NPM, "evil", version) is None, version


def test_pypi_ecosystem_ranges_order_by_pep_440() -> None:
    events = semver({"introduced": "1.0rc1"}, {"fixed": "1.10"}, kind="ECOSYSTEM")
    idx = index(record(ecosystem="PyPI", name="evil", ranges=events))
    assert idx.advisory_for(PYPI, "evil", "1.0rc2") == "MAL-2025-1"
    assert idx.advisory_for(PYPI, "evil", "1.9") == "MAL-2025-1"  # 1.9 < 1.10 by PEP 440, not as text
    assert idx.advisory_for(PYPI, "evil", "1.10") is None
    assert idx.advisory_for(PYPI, "evil", "0.9") is None


def test_git_ranges_and_unorderable_versions_name_nothing() -> None:
    git = [{"type": "GIT", "repo": "https://example.invalid/x", "events": [{"introduced": "0"}]}]
    idx = index(record(ranges=git))
    assert idx.advisory_for(NPM, "evil", "1.0.0") is None
    idx = index(record(ranges=semver({"introduced": "0"})))
    assert idx.advisory_for(NPM, "evil", "not-semver") is None  # a range needs an ordered version
    idx = index(record(ranges=semver({"introduced": "banana"})))
    assert idx.advisory_for(NPM, "evil", "1.0.0") is None


def test_only_malicious_advisories_count_unless_all_are_asked_for() -> None:
    vuln = record("GHSA-xxxx-yyyy-zzzz", listed=["1.0.0"])
    alias = record("GHSA-aaaa-bbbb-cccc", name="other", listed=["2.0.0"], aliases=["MAL-2024-9"])
    idx = index(vuln, alias)
    assert idx.advisory_for(NPM, "evil", "1.0.0") is None
    assert idx.advisory_for(NPM, "other", "2.0.0") == "GHSA-aaaa-bbbb-cccc"
    assert index(vuln, include_all=True).advisory_for(NPM, "evil", "1.0.0") == "GHSA-xxxx-yyyy-zzzz"


def test_withdrawn_other_ecosystems_and_junk_are_left_out() -> None:
    idx = index(
        record(listed=["1.0.0"], withdrawn="2025-01-01T00:00:00Z"),
        record("MAL-2", ecosystem="crates.io", name="evil", listed=["1.0.0"]),
        {"id": "MAL-3", "affected": "nonsense"},
        {"affected": [{"package": {"ecosystem": "npm", "name": "evil"}, "versions": ["1.0.0"]}]},
        None,
    )
    assert idx.advisory_for(NPM, "evil", "1.0.0") is None
    assert (len(idx), idx.skipped) == (0, 1)


def test_several_packages_in_one_record_and_ecosystem_case() -> None:
    rec = {
        "id": "MAL-7",
        "affected": [
            {"package": {"ecosystem": "NPM", "name": "a"}, "versions": ["1.0.0"]},
            {"package": {"ecosystem": "pypi", "name": "b"}, "versions": ["2.0"]},
        ],
    }
    idx = index(rec)
    assert idx.advisory_for(NPM, "a", "1.0.0") == "MAL-7"
    assert idx.advisory_for(PYPI, "b", "2.0") == "MAL-7"
    assert len(idx) == 1
