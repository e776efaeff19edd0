"""The pure part of `cacheaddon run --workers`: the count."""

from __future__ import annotations

import os

import pytest

from cacheaddon import workers


@pytest.mark.parametrize(("text", "count"), [("1", 1), ("2", 2), ("16", 16), ("auto", os.cpu_count() or 1)])
def test_worker_count(text: str, count: int) -> None:
    assert workers.worker_count(text) == count


@pytest.mark.parametrize("text", ["0", "-1", "two", "", "1.5", "AUTO"])
def test_worker_count_refuses_what_is_not_a_count(text: str) -> None:
    with pytest.raises(ValueError, match=r"^--workers: "):
        workers.worker_count(text)
