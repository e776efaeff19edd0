"""metrics.py: the exposition prometheus-client writes from the counters, read back by its own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cacheaddon import counters as c
from cacheaddon import metrics


def _samples(snapshot: metrics.Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition(snapshot).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_exposition() -> None:
    totals = {
        c.series(c.ANSWERS, outcome="HIT", ecosystem="pypi", host="a"): 3,
        c.series(c.ANSWERS, outcome="HIT", ecosystem="pypi", host="b"): 2,
        c.series(c.ANSWERS, outcome="MISS", ecosystem="npm", host="b"): 1,
        c.series(c.CACHE_BYTES, host="a"): 500,
        c.series(c.UPSTREAM_BYTES, origin="https://b"): 70,
        c.series(c.UPSTREAM_FAILURES, origin="https://b", kind="timeout"): 4,
        c.series(c.STALE, reason="offline mode"): 2,
        c.series(c.EVICTIONS): 5,
        c.series(c.DURATION, outcome="HIT", le="0.005"): 4,
        c.series(c.DURATION, outcome="HIT", le="0.5"): 1,
        c.series(c.DURATION_SUM, outcome="HIT"): 0.3,
    }
    samples = _samples(metrics.Snapshot(totals, entries=9, disk_bytes=12345))
    assert samples[("cacheaddon_answers_total", (("ecosystem", "pypi"), ("outcome", "HIT")))] == 5
    assert samples[("cacheaddon_answers_total", (("ecosystem", "npm"), ("outcome", "MISS")))] == 1
    assert samples[("cacheaddon_body_bytes_total", (("source", "cache"),))] == 500
    assert samples[("cacheaddon_body_bytes_total", (("source", "upstream"),))] == 70
    assert (
        samples[("cacheaddon_upstream_failures_total", (("kind", "timeout"), ("origin", "https://b")))] == 4
    )
    assert samples[("cacheaddon_stale_answers_total", (("reason", "offline mode"),))] == 2
    assert samples[("cacheaddon_evictions_total", ())] == 5
    assert samples[("cacheaddon_entries", ())] == 9
    assert samples[("cacheaddon_disk_bytes", ())] == 12345
    hit = (("outcome", "HIT"),)
    assert samples[("cacheaddon_request_duration_seconds_bucket", (("le", "0.005"), *hit))] == 4
    assert samples[("cacheaddon_request_duration_seconds_bucket", (("le", "0.25"), *hit))] == 4
    assert samples[("cacheaddon_request_duration_seconds_bucket", (("le", "+Inf"), *hit))] == 5
    assert samples[("cacheaddon_request_duration_seconds_count", hit)] == 5
    assert samples[("cacheaddon_request_duration_seconds_sum", hit)] == 0.3


def test_empty_counters_still_expose_every_family() -> None:
    text = metrics.exposition(metrics.Snapshot({}, 0, 0)).decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"cacheaddon_answers", "cacheaddon_entries", "cacheaddon_request_duration_seconds"} <= names


def test_the_guards_counts_are_exported() -> None:
    totals = {
        c.series(c.GUARD_REFUSALS, reason="young", ecosystem="npm"): 2,
        c.series(c.GUARD_REFUSALS, reason="advisory", ecosystem="pypi"): 1,
        c.series(c.GUARD_HIDDEN, reason="young", ecosystem="npm"): 5,
        c.series(c.GUARD_FILTERED, ecosystem="npm"): 4,
        c.series(c.GUARD_UNDATED, ecosystem="pypi"): 3,
    }
    samples = _samples(metrics.Snapshot(totals, entries=0, disk_bytes=0))
    young_npm = (("ecosystem", "npm"), ("reason", "young"))
    assert samples[("cacheaddon_guard_refusals_total", young_npm)] == 2
    assert samples[("cacheaddon_guard_refusals_total", (("ecosystem", "pypi"), ("reason", "advisory")))] == 1
    assert samples[("cacheaddon_guard_hidden_versions_total", young_npm)] == 5
    assert samples[("cacheaddon_guard_filtered_documents_total", (("ecosystem", "npm"),))] == 4
    assert samples[("cacheaddon_guard_undated_versions_total", (("ecosystem", "pypi"),))] == 3
