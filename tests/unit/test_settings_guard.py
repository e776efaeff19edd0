"""The supply-chain guard's options -> Settings: durations, exemptions, the missing-date policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cacheaddon import settings


def build(**overrides: Any) -> settings.Settings:
    return settings.from_options({**settings.defaults(), **overrides}, env={"HOME": "/home/builder"})


def test_the_guard_is_off_by_default() -> None:
    s = build()
    assert (s.min_release_age, s.release_age_exempt, s.release_age_missing) == (0.0, (), "allow")
    assert (s.block_advisories, s.block_advisories_all, s.guard_active) == (None, False, False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3d", 259200.0),
        ("72h", 259200.0),
        ("1d12h", 129600.0),
        ("90m", 5400.0),
        ("1w", 604800.0),
        ("45s", 45.0),
        ("120", 120.0),
        (" 3D ", 259200.0),
        ("1.5d", 129600.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    s = build(cache_min_release_age=text)
    assert s.min_release_age == seconds
    assert s.guard_active
    assert s.min_release_age_text == text.strip()


@pytest.mark.parametrize("text", ["", "0", "0d"])
def test_empty_or_zero_turns_the_age_off(text: str) -> None:
    s = build(cache_min_release_age=text)
    assert (s.min_release_age, s.guard_active) == (0.0, False)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cache_min_release_age", "3 days"),
        ("cache_min_release_age", "-1d"),
        ("cache_min_release_age", "d"),
        ("cache_min_release_age", "3x"),
        ("cache_release_age_exempt", ["mycorp-*"]),
        ("cache_release_age_exempt", ["maven:org.x:*"]),
        ("cache_release_age_exempt", ["npm:"]),
        ("cache_release_age_missing", "maybe"),
    ],
)
def test_bad_values_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{option}: "):
        build(**{option: value})


def test_exemptions_per_ecosystem_with_pypi_patterns_normalised() -> None:
    s = build(cache_release_age_exempt=["npm:@mycorp/*, PyPI:MyCorp_*", "pypi:tool.x"])
    assert s.release_age_exempt == (("npm", "@mycorp/*"), ("PyPI", "mycorp-*"), ("PyPI", "tool-x"))


def test_missing_policy_and_advisories() -> None:
    s = build(
        cache_release_age_missing="Refuse", cache_block_advisories="~/osv", cache_block_advisories_all=True
    )
    assert s.release_age_missing == "refuse"
    assert s.block_advisories == Path.home() / "osv"
    assert s.block_advisories_all and s.guard_active
