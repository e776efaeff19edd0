"""The guard's ruling on one version: release age, exemptions, missing dates, advisories."""

from __future__ import annotations

import dataclasses

import pytest

from cacheaddon import advisories, settings
from cacheaddon.rulings import Reason, Rules, Screened, parse_time, quarantined
from cacheaddon.versions import NPM, PYPI

NOW = 1_800_000_000.0
DAY = 86400.0


def rules(**options: object) -> Rules:
    opts = {**settings.defaults(), "cache_min_release_age": "3d", **options}
    return Rules.of(settings.from_options(opts, env={"HOME": "/h"}), NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-01-01T00:00:00.000Z", 1577836800.0),
        ("2020-01-01T00:00:00Z", 1577836800.0),
        ("2020-01-01T00:00:00.123456Z", 1577836800.123456),
        ("2020-01-01T01:00:00+01:00", 1577836800.0),
        ("2020-01-01T00:00:00", 1577836800.0),  # no zone: UTC, as registries mean it
        ("yesterday", None),
        ("", None),
        (None, None),
        (12345, None),
        ("9999-12-31T23:59:59-14:00", None),  # past year 9999 in UTC: no time to judge or to print
        ("0001-01-01T00:00:00+14:00", None),  # before year 1 in UTC
    ],
)
def test_parse_time(text: object, expected: float | None) -> None:
    assert parse_time(text) == expected


def test_young_versions_are_refused_naming_package_version_time_and_option() -> None:
    ruling = rules().judge(NPM, "kilo", "2.0.0", NOW - 60)
    assert ruling is not None and ruling.refused and ruling.reason is Reason.YOUNG
    assert "kilo" in ruling.detail and "2.0.0" in ruling.detail
    assert "cache_min_release_age (3d)" in ruling.detail
    assert "2027-01-15T07:59:00Z" in ruling.detail  # NOW - 60 s


@pytest.mark.parametrize(("age", "refused"), [(3 * DAY + 1, False), (3 * DAY, False), (3 * DAY - 1, True)])
def test_the_cutoff(age: float, refused: bool) -> None:
    ruling = rules().judge(PYPI, "alpha", "1.0", NOW - age)
    assert (ruling is not None and ruling.refused) is refused


def test_off_means_no_age_check_at_all() -> None:
    assert rules(cache_min_release_age="").judge(NPM, "kilo", "2.0.0", NOW) is None
    assert rules(cache_min_release_age="0").judge(NPM, "kilo", "2.0.0", None) is None


@pytest.mark.parametrize(
    ("exempt", "ecosystem", "name", "spared"),
    [
        ("npm:@mycorp/*", NPM, "@mycorp/tool", True),
        ("npm:@mycorp/*", NPM, "@other/tool", False),
        ("npm:@mycorp/*", PYPI, "@mycorp/tool", False),  # per ecosystem
        ("pypi:mycorp-*", PYPI, "MyCorp_Utils", True),  # PyPI names and patterns normalised
        ("pypi:MyCorp.*", PYPI, "mycorp-utils", True),
        ("npm:kilo", NPM, "kilo", True),
        ("npm:Kilo", NPM, "kilo", False),  # npm names exact
    ],
)
def test_exempt_packages_get_their_newest(exempt: str, ecosystem: str, name: str, spared: bool) -> None:
    ruling = rules(cache_release_age_exempt=[exempt]).judge(ecosystem, name, "2.0.0", NOW)
    assert (ruling is None) is spared


def test_a_missing_publish_time_is_let_through_and_noted_or_refused() -> None:
    noted = rules().judge(NPM, "kilo", "2.0.0", None)
    assert noted is not None and not noted.refused and noted.reason is Reason.MISSING
    refused = rules(cache_release_age_missing="refuse").judge(NPM, "kilo", "2.0.0", None)
    assert refused is not None and refused.refused and "cache_release_age_missing=refuse" in refused.detail


def test_a_version_not_yet_listed_by_a_recent_document_is_young() -> None:
    ruling = rules().judge(NPM, "kilo", "2.0.0", None, after=NOW - DAY)
    assert ruling is not None and ruling.refused and ruling.reason is Reason.YOUNG
    assert "not yet listed by the registry at 2027-01-14T08:00:00Z" in ruling.detail
    older = rules().judge(NPM, "kilo", "2.0.0", None, after=NOW - 4 * DAY)  # published any time since
    assert older is not None and not older.refused and older.reason is Reason.MISSING


def test_a_file_without_a_version_is_labelled_by_its_name() -> None:
    ruling = rules().judge(PYPI, "alpha", None, NOW, label="alpha-weird.egg")
    assert ruling is not None and ruling.version == "alpha-weird.egg"


def test_advisories_apply_even_to_exempt_and_old_versions() -> None:
    kilo = {"package": {"ecosystem": "npm", "name": "kilo"}, "versions": ["1.0.0"]}
    index = advisories.build_index([{"id": "MAL-9", "affected": [kilo]}], include_all=False)
    r = dataclasses.replace(rules(cache_release_age_exempt=["npm:kilo"]), advisories=index)
    ruling = r.judge(NPM, "kilo", "1.0.0", NOW - 400 * DAY)
    assert ruling is not None and ruling.refused and ruling.advisory == "MAL-9"
    assert "MAL-9" in ruling.detail and "cache_block_advisories" in ruling.detail
    assert r.judge(NPM, "kilo", "1.0.1", NOW - 400 * DAY) is None


def test_fingerprints_follow_the_settings_not_the_clock() -> None:
    base = rules()
    assert base.fingerprint() == dataclasses.replace(base, now=NOW + 5).fingerprint()
    assert base.fingerprint() != rules(cache_min_release_age="4d").fingerprint()
    assert base.fingerprint() != rules(cache_release_age_exempt=["npm:x"]).fingerprint()
    assert base.fingerprint() != rules(cache_release_age_missing="refuse").fingerprint()
    assert base.fingerprint() != dataclasses.replace(base, generation=2).fingerprint()


def test_summary_counts_versions_per_reason_and_moved_tags() -> None:
    r = rules()
    young = [r.judge(NPM, "kilo", v, NOW) for v in ("2.0.0", "2.1.0")]
    files = [r.judge(PYPI, "alpha", "2.0", NOW, label=f) for f in ("a.whl", "a.tar.gz")]
    gone = quarantined(PYPI, "alpha", "1.0")
    screened = Screened(b"", tuple(v for v in [*young, *files, gone] if v), (("latest", "2.1.0", "1.1.0"),))
    assert screened.summary(r) == (
        "filtered: 3 versions younger than 3d, 1 version of a project quarantined upstream, "
        "latest 2.1.0 -> 1.1.0"
    )
    assert Screened(None).summary(r) == ""
