"""What the shared tier may hold, which of its records is used, and how its answers are named."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cacheaddon import sharing
from cacheaddon.entry import Entry
from cacheaddon.policy import Action, Decision, Outcome

URL = "https://files.example/packages/demo-1.0.tar.gz"
KEY = f"{URL}\naccept=*/*\nany-coding"
NOW, LIMIT = 1_000.0, 100


def entry(stored_at: float, sha256: str = "a" * 64, vary: tuple[tuple[str, str], ...] = ()) -> Entry:
    return Entry(URL, 200, "OK", (), stored_at=stored_at, size=1, sha256=sha256, vary=vary)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (KEY, None),
        (f"{URL}\naccept=*/*\naccept-encoding=gzip", None),
        (f"{KEY}\ncred=0123456789abcdef", "private: the request carried credentials"),
        (f"{URL}?token=abc\naccept=*/*", "private: the URL carries a token"),
        (f"{URL}?X-Amz-Signature=abc\naccept=*/*", "private: the URL carries a token"),
    ],
)
def test_what_may_be_shared(key: str, why: str | None) -> None:
    assert sharing.why_not_shared(key) == why


def test_an_answer_chosen_by_vary_values_stays_local() -> None:
    assert sharing.why_not_shared(KEY, entry(1.0)) is None
    assert sharing.why_not_shared(KEY, entry(1.0, vary=(("x-flavour", "d1g3st"),))) is not None


def test_the_newest_record_newer_than_the_local_entry_is_chosen() -> None:
    older, newer = entry(10.0), entry(20.0, sha256="b" * 64)
    coded = f"{URL}\naccept=*/*\naccept-encoding=gzip"
    assert sharing.newest([(KEY, older), (coded, newer)], None, NOW, LIMIT) == (coded, newer)
    assert sharing.newest([(KEY, older), (coded, None)], None, NOW, LIMIT) == (KEY, older)
    assert sharing.newest([(KEY, older)], entry(5.0), NOW, LIMIT) == (KEY, older)
    assert sharing.newest([(KEY, older)], entry(10.0), NOW, LIMIT) is None  # as new as ours: nothing to add
    assert sharing.newest([(KEY, None), (coded, None)], None, NOW, LIMIT) is None
    assert sharing.newest([], None, NOW, LIMIT) is None


def test_private_or_varying_records_are_never_chosen() -> None:
    varying = entry(30.0, vary=(("x-flavour", "d1g3st"),))
    assert sharing.newest([(KEY, varying)], None, NOW, LIMIT) is None
    assert sharing.newest([(f"{KEY}\ncred=00ff", entry(30.0))], None, NOW, LIMIT) is None


def test_an_answer_from_the_tier_says_so() -> None:
    decision = sharing.from_tier(Decision(Action.SERVE, Outcome.HIT, "fresh"))
    assert (decision.action, decision.outcome, decision.reason) == (
        Action.SERVE,
        Outcome.HIT,
        "fresh (shared tier)",
    )


@pytest.mark.parametrize(
    "foreign",
    [
        {"status": 500},  # never stored by a proxy
        {"status": 206},
        {"size": 101},  # above this proxy's cache_max_object_size
        {"size": -1},
        {"sha256": "../../records/x"},
        {"sha256": "A" * 64},
        {"headers": (("Content-Type", "text/html\r\nSet-Cookie: session=stolen"),)},
        {"headers": (("X-Bad\r\nName", "v"),)},
        {"headers": (("Content-Type", "text/html\x00"),)},
        {"reason": "OK\r\nSet-Cookie: a=b"},
    ],
)
def test_a_record_this_proxy_would_never_store_is_never_used(foreign: dict[str, object]) -> None:
    bad = replace(entry(30.0), **foreign)  # type: ignore[arg-type]
    assert sharing.admissible(bad, NOW, LIMIT) is None
    assert sharing.newest([(KEY, bad)], None, NOW, LIMIT) is None
    assert sharing.newest([(KEY, bad), (KEY, entry(20.0))], None, NOW, LIMIT) == (KEY, entry(20.0))


def test_a_record_stored_in_the_future_counts_as_stored_now() -> None:
    """A writer whose clock is ahead must not make its copy fresh for longer, nor newer than later ones."""
    ahead = entry(NOW + 86_400)
    assert sharing.admissible(ahead, NOW, LIMIT) == entry(NOW)
    assert sharing.newest([(KEY, ahead)], None, NOW, LIMIT) == (KEY, entry(NOW))
    assert sharing.newest([(KEY, ahead)], entry(NOW), NOW, LIMIT) is None  # not newer than ours
