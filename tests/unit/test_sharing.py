"""What the shared tier may hold, which of its records is used, and how its answers are named."""

from __future__ import annotations

import pytest

from cacheaddon import sharing
from cacheaddon.entry import Entry
from cacheaddon.policy import Action, Decision, Outcome

URL = "https://files.example/packages/demo-1.0.tar.gz"
KEY = f"{URL}\naccept=*/*\nany-coding"


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
    assert sharing.newest([(KEY, older), (coded, newer)], None) == (coded, newer)
    assert sharing.newest([(KEY, older), (coded, None)], None) == (KEY, older)
    assert sharing.newest([(KEY, older)], entry(5.0)) == (KEY, older)
    assert sharing.newest([(KEY, older)], entry(10.0)) is None  # as new as ours: nothing to add
    assert sharing.newest([(KEY, None), (coded, None)], None) is None
    assert sharing.newest([], None) is None


def test_private_or_varying_records_are_never_chosen() -> None:
    varying = entry(30.0, vary=(("x-flavour", "d1g3st"),))
    assert sharing.newest([(KEY, varying)], None) is None
    assert sharing.newest([(f"{KEY}\ncred=00ff", entry(30.0))], None) is None


def test_an_answer_from_the_tier_says_so() -> None:
    decision = sharing.from_tier(Decision(Action.SERVE, Outcome.HIT, "fresh"))
    assert (decision.action, decision.outcome, decision.reason) == (
        Action.SERVE,
        Outcome.HIT,
        "fresh (shared tier)",
    )
