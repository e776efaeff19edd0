"""The cache's own error answers: the reason phrase and the problem-details body both say why."""

from __future__ import annotations

import json

import pytest

from cacheaddon import responses
from cacheaddon.policy import Outcome


@pytest.mark.parametrize("status", [400, 502, 503, 504])
def test_an_error_says_why_in_its_reason_phrase_and_its_problem_details(status: int) -> None:
    answer = responses.error(status, "https://pypi.org/simple/delta/", "offline: not in cache", Outcome.MISS)
    assert answer.status_code == status
    assert answer.reason.endswith(" (cacheaddon: offline: not in cache)")
    assert answer.headers["content-type"] == "application/problem+json"
    problem = json.loads(answer.content or b"")
    assert problem["status"] == status and problem["title"] == answer.reason.split(" (")[0]
    assert problem["detail"] == "cacheaddon: offline: not in cache"
    assert problem["url"] == "https://pypi.org/simple/delta/"
    assert answer.headers["x-cache-detail"] == "offline: not in cache"


def test_a_reason_phrase_stays_one_short_printable_line() -> None:
    answer = responses.error(502, "https://x/", "upstream said \r\nX-Evil: 1 \u00e9" + "x" * 500)
    assert answer.reason.isprintable() and answer.reason.isascii()
    assert len(answer.reason) <= 200


def test_a_status_without_a_standard_phrase_still_gets_an_answer() -> None:
    answer = responses.error(599, "https://x/", "odd")
    assert (answer.status_code, answer.reason) == (599, "Error (cacheaddon: odd)")
