"""What the proxy answered, counted: kept in the cache directory so that the counts survive restarts and add
up across every process sharing the directory.

Each process counts in memory (a lock and a dict: cheap on the hit path) and a background thread adds the
counts to `stats.db` (SQLite, one upsert transaction) every FLUSH_INTERVAL seconds and when the process stops
cleanly. Rows are per minute, so `cacheaddon stats --since` can ask for a window; rows older than a day are
folded into hours, older than 30 days into days, so the file stays small.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from cacheaddon import registries

logger = logging.getLogger(__name__)

DB_NAME = "stats.db"
FLUSH_INTERVAL = 2.0  # seconds
_MINUTE, _HOUR, _DAY = 60, 3600, 86400
# (rows older than this many seconds, are folded into buckets of this many seconds)
_ROLLUPS = ((_DAY, _HOUR), (30 * _DAY, _DAY))
_COMPACT_EVERY = _HOUR
# Upper bounds (seconds) of the request duration histogram's buckets; the last one is +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INF = "+Inf"

Labels = tuple[tuple[str, str], ...]
Series = tuple[str, Labels]  # (name, sorted label pairs)
Totals = dict[Series, float]

# Series names (the metrics and `stats` are built from these).
ANSWERS = "answers"  # outcome, ecosystem, host
CACHE_BYTES = "cache_bytes"  # host: body bytes answered from the cache
UPSTREAM_BYTES = "upstream_bytes"  # origin: body bytes read from upstreams
UPSTREAM_FAILURES = "upstream_failures"  # origin, kind
STALE = "stale"  # reason
INTEGRITY = "integrity_failures"  # kind
EVICTIONS = "evictions"
EVICTED_BYTES = "evicted_bytes"
INTERRUPTED = "interrupted"  # outcome: answers whose client or upstream went away midway
DURATION = "duration"  # outcome, le: observations in that bucket (not cumulative)
DURATION_SUM = "duration_sum"  # outcome
# The supply-chain guard (guard.py); ecosystem: pypi or npm, reason: young, advisory, missing, quarantined.
GUARD_REFUSALS = "guard_refusals"  # reason, ecosystem: package downloads answered 403
GUARD_HIDDEN = "guard_hidden_versions"  # reason, ecosystem: versions taken out of the metadata served
GUARD_FILTERED = "guard_filtered_documents"  # ecosystem: metadata documents served filtered
GUARD_UNDATED = "guard_undated_versions"  # ecosystem: versions let through without a known publish time


# Label values that come from requests or upstreams (a cached host on any port, any name a *.domain pattern
# admits, a failure's reason): each process keeps this many distinct values of each such label, and counts
# the rest under OTHER, so that no client can grow stats.db and the metrics without bound.
LABEL_LIMIT = 200
BOUNDED_LABELS = ("host", "origin", "reason")
OTHER = "other"


def series(name: str, **labels: str) -> Series:
    return name, tuple(sorted(labels.items()))


def duration_bucket(seconds: float) -> str:
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return str(bound)
    return INF


class Counters:
    """Counts of one process; `directory` None counts without persisting (tests, a store-less addon)."""

    def __init__(self, directory: Path | None, interval: float = FLUSH_INTERVAL) -> None:
        self.db = StatsDB(directory) if directory is not None else None
        self.interval = interval
        self._pending: dict[Series, float] = {}
        self._lock = threading.Lock()  # guards _pending: taken on the event loop, never held for I/O
        self._flush_lock = threading.Lock()  # one flush at a time, and reads see a flush whole
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._compacted = 0.0
        self._warned = False
        self._seen: dict[str, set[str]] = {label: set() for label in BOUNDED_LABELS}  # under _lock

    def _series(self, name: str, labels: dict[str, str]) -> Series:
        """The series for these labels, request-made values bounded (LABEL_LIMIT); called under _lock."""
        for label, seen in self._seen.items():
            value = labels.get(label)
            if value is not None and value not in seen:
                if len(seen) < LABEL_LIMIT:
                    seen.add(value)
                else:
                    labels[label] = OTHER
        return series(name, **labels)

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        with self._lock:
            key = self._series(name, labels)
            self._pending[key] = self._pending.get(key, 0) + value

    # what the fetch path, the store and the hooks report

    def fetched(self, origin: str, nbytes: int) -> None:
        """Body bytes read from an upstream (scheme://host:port)."""
        if nbytes:
            self.add(UPSTREAM_BYTES, nbytes, origin=origin)

    def upstream_failed(self, origin: str, kind: str) -> None:
        self.add(UPSTREAM_FAILURES, origin=origin, kind=kind)

    def integrity_failed(self, kind: str) -> None:
        self.add(INTEGRITY, kind=kind)

    def evicted(self, count: int, nbytes: int) -> None:
        self.add(EVICTIONS, count)
        self.add(EVICTED_BYTES, nbytes)

    def answered(
        self,
        outcome: str,
        ecosystem: str,
        host: str,
        cache_bytes: int,
        seconds: float,
        stale_reason: str | None = None,
    ) -> None:
        with self._lock:
            for key, value in (
                (self._series(ANSWERS, {"outcome": outcome, "ecosystem": ecosystem, "host": host}), 1.0),
                (self._series(CACHE_BYTES, {"host": host}), float(cache_bytes)),
                (series(DURATION, outcome=outcome, le=duration_bucket(seconds)), 1.0),
                (series(DURATION_SUM, outcome=outcome), seconds),
            ):
                if value:
                    self._pending[key] = self._pending.get(key, 0) + value
        if stale_reason is not None:
            self.add(STALE, reason=stale_reason)

    def interrupted(self, outcome: str) -> None:
        self.add(INTERRUPTED, outcome=outcome)

    def guarded(self, name: str, ecosystem: str, reason: str | None = None) -> None:
        """One of the guard's GUARD_* events; ecosystem as the guard spells it (PyPI, npm)."""
        labels = {"ecosystem": ecosystem.lower(), **({"reason": reason} if reason is not None else {})}
        self.add(name, 1, **labels)

    # persistence

    def start(self) -> None:
        if self.db is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="cacheaddon-counters", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        """Stops the flushing thread and flushes what is left (a clean stop loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def flush(self, now: float | None = None) -> None:
        if self.db is None:
            return
        now = time.time() if now is None else now
        with self._flush_lock:
            with self._lock:
                deltas, self._pending = self._pending, {}
            if not deltas:
                return
            try:
                self.db.add(deltas, now)
                if now - self._compacted >= _COMPACT_EVERY:
                    self._compacted = now
                    self.db.compact(now)
                self._warned = False
            except sqlite3.Error as exc:
                with self._lock:  # kept for the next flush: counts are never dropped for a busy disk
                    for key, value in deltas.items():
                        self._pending[key] = self._pending.get(key, 0) + value
                if not self._warned:
                    logger.warning("could not save the counters to %s: %s", self.db.path, exc)
                    self._warned = True

    def totals(self) -> Totals:
        """Every process's saved counts plus this process's unsaved ones (what the metrics endpoint shows)."""
        with self._flush_lock:
            saved = self.db.totals() if self.db is not None else {}
            with self._lock:
                pending = dict(self._pending)
        for key, value in pending.items():
            saved[key] = saved.get(key, 0) + value
        return saved


class StatsError(Exception):
    """stats.db cannot be read (damaged, not a database, unreadable); str() names the file."""


class StatsDB:
    """The counts table in DIR/stats.db, shared by every process on the directory."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / DB_NAME

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per use: the flushing thread and the metrics reader never share one, and a proxy
        # whose directory is replaced under it does not keep writing to the old file.
        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as con:
            con.execute("PRAGMA journal_mode=WAL")  # readers (stats, metrics) never block a flush
            con.execute(
                "CREATE TABLE IF NOT EXISTS counts (bucket INTEGER NOT NULL, name TEXT NOT NULL, "
                "labels TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (bucket, name, labels)) WITHOUT ROWID"
            )
            yield con

    def add(self, deltas: Mapping[Series, float], now: float) -> None:
        bucket = int(now) // _MINUTE * _MINUTE
        rows = [(bucket, name, json.dumps(dict(labels)), value) for (name, labels), value in deltas.items()]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(_UPSERT, rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def totals(self, since: float | None = None) -> Totals:
        """Counts summed over every bucket that starts at or after `since` (None: ever)."""
        if not self.path.exists():
            return {}
        try:
            with self._connect() as con:
                rows = con.execute(
                    "SELECT name, labels, SUM(value) FROM counts WHERE bucket >= ? GROUP BY name, labels",
                    (int(since or 0) // _MINUTE * _MINUTE,),
                ).fetchall()
            return {(name, tuple(sorted(json.loads(labels).items()))): value for name, labels, value in rows}
        except (sqlite3.Error, ValueError, AttributeError) as exc:  # AttributeError: labels not an object
            raise StatsError(f"cannot read the counters in {self.path}: {exc}") from None

    def compact(self, now: float) -> None:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for age, size in _ROLLUPS:
                    cutoff = int(now) - age
                    folded = con.execute(
                        "SELECT bucket / ? * ?, name, labels, SUM(value) FROM counts "
                        "WHERE bucket < ? AND bucket % ? != 0 GROUP BY 1, 2, 3",
                        (size, size, cutoff, size),
                    ).fetchall()
                    con.execute("DELETE FROM counts WHERE bucket < ? AND bucket % ? != 0", (cutoff, size))
                    con.executemany(_UPSERT, folded)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise


_UPSERT = (
    "INSERT INTO counts (bucket, name, labels, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (bucket, name, labels) DO UPDATE SET value = value + excluded.value"
)


# --- labels -------------------------------------------------------------------------------------------------

def stale_reason(detail: str) -> str:
    """The reason a STALE answer gives (its X-Cache-Detail), with variable parts dropped: 'upstream timed
    out', 'upstream answered 503', 'upstream failing recently', 'offline mode'."""
    reason = detail.removeprefix("stale: ").split(" (", 1)[0].strip()
    return reason or "unknown"


# (ecosystem, path patterns): for registries on hosts no preset names (mirrors, the tests' fakes).
_ECOSYSTEM_PATHS = (
    ("pypi", re.compile(r"^/(simple|pypi)/|\.whl(\.metadata)?$|/packages/")),
    ("npm", re.compile(r"/-/[^/]+\.tgz$|^/@[^/]+(/|%2[fF])")),
    ("maven", re.compile(r"\.(jar|pom|module)(\.sha1|\.md5|\.asc)?$|/maven-metadata\.xml")),
    ("rubygems", re.compile(r"\.gem$|^/(api/v1/dependencies|info/|versions$|specs\.)")),
    ("nuget", re.compile(r"\.nupkg$|^/v3(-flatcontainer)?/")),
    ("crates", re.compile(r"\.crate$|^/config\.json$|/crates/")),
    ("golang", re.compile(r"/@v/|/@latest$")),
)
_PRESET_HOSTS = {host: preset.name for preset in registries.PRESETS.values() for host in preset.hosts}
_PRESET_HOSTS["registry.yarnpkg.com"] = "npm"


def ecosystem(url: str, content_type: str = "") -> str:
    """The package ecosystem a URL belongs to (pypi, npm, maven, rubygems, nuget, crates, golang), else
    'other': by its host when a preset names it, else by the answer's media type or the URL's path."""
    parts = urlsplit(url)
    known = _PRESET_HOSTS.get((parts.hostname or "").lower())
    if known is not None:
        return known
    for name, media in (("npm", "vnd.npm."), ("pypi", "vnd.pypi.")):
        if media in content_type:
            return name
    for name, pattern in _ECOSYSTEM_PATHS:
        if pattern.search(parts.path):
            return name
    return "other"
