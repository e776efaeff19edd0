"""The Prometheus metrics, built from the shared counters (counters.py) with prometheus-client's own metric
families and exposition: every process on a cache directory shows the directory's totals."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from cacheaddon import counters as c

CONTENT_TYPE = CONTENT_TYPE_LATEST
PATH = "/_cacheaddon/metrics"


@dataclass(frozen=True)
class Snapshot:
    totals: c.Totals
    entries: int
    disk_bytes: int


def _label_sum(totals: c.Totals, name: str, keep: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Sums series `name` over every label but `keep`."""
    out: dict[tuple[str, ...], float] = {}
    for (series_name, labels), value in totals.items():
        if series_name == name:
            values = dict(labels)
            key = tuple(values.get(label, "") for label in keep)
            out[key] = out.get(key, 0) + value
    return out


def _counter(
    totals: c.Totals, series: str, name: str, doc: str, labels: tuple[str, ...] = ()
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in sorted(_label_sum(totals, series, labels).items()):
        family.add_metric(list(key), value)
    return family


def families(snapshot: Snapshot) -> Iterator[Metric]:
    t = snapshot.totals
    yield _counter(
        t,
        c.ANSWERS,
        "cacheaddon_answers",
        "Answers by X-Cache outcome and ecosystem.",
        ("outcome", "ecosystem"),
    )
    source = CounterMetricFamily(
        "cacheaddon_body_bytes",
        "Body bytes answered from the cache, and read from upstreams.",
        labels=["source"],
    )
    source.add_metric(["cache"], sum(_label_sum(t, c.CACHE_BYTES, ()).values()))
    source.add_metric(["upstream"], sum(_label_sum(t, c.UPSTREAM_BYTES, ()).values()))
    yield source
    yield _counter(
        t,
        c.UPSTREAM_FAILURES,
        "cacheaddon_upstream_failures",
        "Failed upstream requests by origin and kind.",
        ("origin", "kind"),
    )
    yield _counter(t, c.STALE, "cacheaddon_stale_answers", "STALE answers by reason.", ("reason",))
    yield _counter(
        t, c.INTEGRITY, "cacheaddon_integrity_failures", "Bodies that did not match their digest.", ("kind",)
    )
    yield _counter(t, c.EVICTIONS, "cacheaddon_evictions", "Rows evicted to stay under cache_size_limit.")
    yield _counter(t, c.EVICTED_BYTES, "cacheaddon_evicted_bytes", "Bytes evicted.")
    yield _counter(
        t,
        c.INTERRUPTED,
        "cacheaddon_interrupted_answers",
        "Answers cut short (client gone, upstream broke off midway).",
        ("outcome",),
    )
    yield _counter(
        t,
        c.GUARD_REFUSALS,
        "cacheaddon_guard_refusals",
        "Package downloads the supply-chain guard refused (403), by reason and ecosystem.",
        ("reason", "ecosystem"),
    )
    yield _counter(
        t,
        c.GUARD_HIDDEN,
        "cacheaddon_guard_hidden_versions",
        "Versions the supply-chain guard took out of the metadata it served, by reason and ecosystem.",
        ("reason", "ecosystem"),
    )
    yield _counter(
        t,
        c.GUARD_FILTERED,
        "cacheaddon_guard_filtered_documents",
        "Metadata documents the supply-chain guard served filtered.",
        ("ecosystem",),
    )
    yield _counter(
        t,
        c.GUARD_UNDATED,
        "cacheaddon_guard_undated_versions",
        "Versions let through without a known publish time (cache_release_age_missing=allow).",
        ("ecosystem",),
    )
    yield GaugeMetricFamily("cacheaddon_entries", "Cached responses (records).", value=snapshot.entries)
    yield GaugeMetricFamily(
        "cacheaddon_disk_bytes", "Size of the cache on disk (database and bodies).", value=snapshot.disk_bytes
    )
    yield _histogram(t)


def _histogram(totals: c.Totals) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "cacheaddon_request_duration_seconds",
        "Time from the request's first byte to the end of the answer, by outcome.",
        labels=["outcome"],
    )
    counts = _label_sum(totals, c.DURATION, ("outcome", "le"))
    sums = _label_sum(totals, c.DURATION_SUM, ("outcome",))
    for outcome in sorted({o for o, _ in counts}):
        buckets, running = [], 0.0
        for bound in [*map(str, c.DURATION_BUCKETS), c.INF]:
            running += counts.get((outcome, bound), 0)
            buckets.append((bound, running))
        family.add_metric([outcome], buckets, sums.get((outcome,), 0.0))
    return family


class _Collector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return families(self.snapshot)


def exposition(snapshot: Snapshot) -> bytes:
    """The text exposition format, as prometheus-client writes it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))
    return generate_latest(registry)
