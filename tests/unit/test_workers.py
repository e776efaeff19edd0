"""The pure parts of `cacheaddon run --workers`: the count and the confdir the supervisor prepares."""

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


@pytest.mark.parametrize(
    ("args", "confdir"),
    [
        ([], "/default"),
        (["--set", "confdir=/a"], "/a"),
        (["--set=confdir=/b", "-p", "1"], "/b"),
        (["--set", "confdir=/a", "--set", "confdir=/c"], "/c"),
        (["--set", "cache_dir=/x"], "/default"),
    ],
)
def test_confdir_of(args: list[str], confdir: str) -> None:
    assert workers.confdir_of(args, "/default") == confdir
