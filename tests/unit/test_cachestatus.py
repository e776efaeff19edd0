"""cachestatus.py: the RFC 9211 Cache-Status value of every kind of answer."""

from __future__ import annotations

import pytest

from cacheaddon.cachestatus import value
from cacheaddon.policy import Outcome


@pytest.mark.parametrize(
    ("outcome", "detail", "expected"),
    [
        (Outcome.HIT, "fresh", 'cacheaddon; hit; detail="fresh"'),
        (Outcome.MISS, "miss", 'cacheaddon; fwd=miss; detail="miss"'),
        (
            Outcome.REVALIDATED,
            "revalidated: 304",
            'cacheaddon; fwd=stale; fwd-status=304; stored; detail="revalidated: 304"',
        ),
        (
            Outcome.STALE,
            "stale: upstream timed out",
            'cacheaddon; fwd=stale; detail="stale: upstream timed out"',
        ),
        (Outcome.STALE, "stale: offline mode", 'cacheaddon; hit; detail="stale: offline mode"'),
        (
            Outcome.STALE,
            "stale: upstream failing recently",
            'cacheaddon; hit; detail="stale: upstream failing recently"',
        ),
        (
            Outcome.STALE,
            "stale: offline mode; negotiated application/json",
            'cacheaddon; hit; detail="stale: offline mode; negotiated application/json"',
        ),
        (
            Outcome.STALE,
            "stale: upstream connection refused; negotiated application/json",
            'cacheaddon; fwd=stale; detail="stale: upstream connection refused; negotiated application/json"',
        ),
        (Outcome.MISS, "not stored: status 500", 'cacheaddon; fwd=miss; detail="not stored: status 500"'),
        (
            Outcome.MISS,
            "not cacheable: method POST",
            'cacheaddon; fwd=method; detail="not cacheable: method POST"',
        ),
        (
            Outcome.MISS,
            "range request: passed to the upstream, not stored",
            'cacheaddon; fwd=partial; detail="range request: passed to the upstream, not stored"',
        ),
        (Outcome.MISS, "offline: not in cache", 'cacheaddon; detail="offline: not in cache"'),
        (
            Outcome.MISS,
            'odd "quoted" \\ détail',
            'cacheaddon; fwd=miss; detail="odd \\"quoted\\" \\\\ d?tail"',
        ),
    ],
)
def test_cache_status(outcome: Outcome, detail: str, expected: str) -> None:
    assert value(outcome, detail) == expected


@pytest.mark.parametrize(
    ("outcome", "detail", "expected"),
    [
        (Outcome.MISS, "miss", 'cacheaddon; fwd=miss; stored; detail="miss"'),
        (
            Outcome.MISS,
            "miss; filtered: 1 version younger than 3d",
            'cacheaddon; fwd=miss; stored; detail="miss; filtered: 1 version younger than 3d"',
        ),
        (
            Outcome.MISS,
            "refreshed: entry was stale",
            'cacheaddon; fwd=stale; stored; detail="refreshed: entry was stale"',
        ),
    ],
)
def test_stored_is_what_the_fetch_path_says_not_what_the_detail_reads(
    outcome: Outcome, detail: str, expected: str
) -> None:
    assert value(outcome, detail, stored=True) == expected
    assert "stored" not in value(outcome, detail, stored=False)
