"""Host back-off after upstream failures, with time passed in, and one probe at a time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon.health import HostHealth


def test_an_unknown_host_is_not_backing_off() -> None:
    assert not HostHealth().backing_off("pypi.org", 0.0)


@pytest.mark.parametrize(
    ("now", "backing_off"),
    [(100.0, True), (115.0, True), (129.999, True), (130.0, False), (1e9, False)],
)
def test_the_back_off_window(now: float, backing_off: bool) -> None:
    health = HostHealth()
    health.failed("pypi.org", 100.0, 30)
    assert health.backing_off("pypi.org", now) is backing_off


def test_the_window_ends_for_good() -> None:
    health = HostHealth()
    health.failed("pypi.org", 100.0, 30)
    assert not health.backing_off("pypi.org", 130.0)
    assert not health.backing_off("pypi.org", 110.0)  # expired once: forgotten


def test_a_zero_back_off_never_backs_off() -> None:
    health = HostHealth()
    health.failed("pypi.org", 100.0, 0)
    assert not health.backing_off("pypi.org", 100.0)


def test_success_ends_the_back_off() -> None:
    health = HostHealth()
    health.failed("pypi.org", 100.0, 30)
    health.succeeded("pypi.org")
    assert not health.backing_off("pypi.org", 101.0)
    health.succeeded("never-failed.org")  # harmless


def test_another_failure_extends_the_window() -> None:
    health = HostHealth()
    health.failed("pypi.org", 100.0, 30)
    health.failed("pypi.org", 125.0, 30)
    assert health.backing_off("pypi.org", 150.0)
    assert not health.backing_off("pypi.org", 155.0)


def test_hosts_back_off_independently() -> None:
    health = HostHealth()
    health.failed("pypi.org", 100.0, 30)
    assert health.backing_off("pypi.org", 101.0)
    assert not health.backing_off("files.pythonhosted.org", 101.0)


@given(st.floats(0, 1e9), st.integers(0, 10_000), st.floats(0, 2e4))
def test_backing_off_iff_within_the_window(failed_at: float, backoff: int, elapsed: float) -> None:
    health = HostHealth()
    health.failed("h", failed_at, backoff)
    now = failed_at + elapsed
    assert health.backing_off("h", now) is (now < failed_at + backoff)


def test_one_probe_at_a_time_per_host() -> None:
    health = HostHealth()
    assert health.start_probe("pypi.org")
    assert not health.start_probe("pypi.org")
    assert not health.start_probe("pypi.org")
    assert health.start_probe("registry.npmjs.org")  # another host probes independently
    health.end_probe("pypi.org")
    assert health.start_probe("pypi.org")
    assert not health.start_probe("registry.npmjs.org")


def test_ending_a_probe_that_never_started_is_harmless() -> None:
    health = HostHealth()
    health.end_probe("pypi.org")
    assert health.start_probe("pypi.org")


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = HostHealth()
    with caplog.at_level("INFO", logger="cacheaddon.health"):
        for now in (100.0, 101.0, 140.0):  # three failed requests, one after the back-off ran out
            health.failed("https://pypi.org:443", now, 30, "connection refused")
        health.succeeded("https://pypi.org:443")
        health.succeeded("https://pypi.org:443")
        health.failed("https://files.example:443", 150.0, 30)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("https://pypi.org:443 is failing (connection refused): answering from")
    assert lines[1] == "https://pypi.org:443 answers again"
    assert lines[2].startswith("https://files.example:443 is failing: ")
