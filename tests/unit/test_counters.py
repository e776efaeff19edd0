"""counters.py: labels from failures, answers and URLs; the shared stats database."""

from __future__ import annotations

from pathlib import Path

import pytest

from cacheaddon import counters as c


@pytest.mark.parametrize(
    ("detail", "reason"),
    [
        ("stale: upstream connection refused", "upstream connection refused"),
        ("stale: upstream TLS failure (CERTIFICATE_VERIFY_FAILED)", "upstream TLS failure"),
        ("stale: offline mode", "offline mode"),
        ("stale: new body could not be held (disk full)", "new body could not be held"),
        ("", "unknown"),
    ],
)
def test_stale_reasons_have_no_variable_parts(detail: str, reason: str) -> None:
    assert c.stale_reason(detail) == reason


@pytest.mark.parametrize(
    ("url", "content_type", "ecosystem"),
    [
        ("https://pypi.org/simple/requests/", "", "pypi"),
        ("https://files.pythonhosted.org/packages/ab/x-1.0.tar.gz", "", "pypi"),
        ("https://registry.npmjs.org/left-pad", "", "npm"),
        ("https://127.0.0.2:4443/simple/alpha/", "", "pypi"),
        ("https://127.0.0.3:4444/packages/alpha-1.0-py3-none-any.whl", "", "pypi"),
        ("https://localhost:5555/papa", "application/vnd.npm.install-v1+json", "npm"),
        ("https://localhost:5555/papa/-/papa-1.0.0.tgz", "", "npm"),
        ("https://localhost:5555/@fake%2fquebec", "application/json", "npm"),
        ("https://repo.example/maven2/org/x/x/1.0/x-1.0.jar", "", "maven"),
        ("https://gems.example/gems/rake-13.0.gem", "", "rubygems"),
        ("https://nuget.example/v3/index.json", "", "nuget"),
        ("https://crates.example/config.json", "", "crates"),
        ("https://goproxy.example/golang.org/x/text/@v/list", "", "golang"),
        ("https://example.org/something", "text/html", "other"),
    ],
)
def test_ecosystems(url: str, content_type: str, ecosystem: str) -> None:
    assert c.ecosystem(url, content_type) == ecosystem


def test_duration_buckets() -> None:
    assert c.duration_bucket(0.001) == "0.005"
    assert c.duration_bucket(0.005) == "0.005"
    assert c.duration_bucket(0.3) == "0.5"
    assert c.duration_bucket(1000) == c.INF


def test_two_processes_counts_add_up_and_survive(tmp_path: Path) -> None:
    first, second = c.Counters(tmp_path), c.Counters(tmp_path)
    first.answered("HIT", "pypi", "pypi.org", 100, 0.01)
    second.answered("HIT", "pypi", "pypi.org", 50, 0.02)
    second.answered("MISS", "npm", "registry.npmjs.org", 0, 2.0)
    second.fetched("https://registry.npmjs.org", 700)
    assert c.StatsDB(tmp_path).totals() == {}, "nothing is written before a flush"
    first.close()
    second.close()
    totals = c.StatsDB(tmp_path).totals()
    assert totals[c.series(c.ANSWERS, outcome="HIT", ecosystem="pypi", host="pypi.org")] == 2
    assert totals[c.series(c.CACHE_BYTES, host="pypi.org")] == 150
    assert totals[c.series(c.UPSTREAM_BYTES, origin="https://registry.npmjs.org")] == 700
    assert totals[c.series(c.DURATION, outcome="MISS", le="2.5")] == 1
    third = c.Counters(tmp_path)  # a restart: reads what the others left, adds to it
    third.answered("HIT", "pypi", "pypi.org", 1, 0.01)
    assert third.totals()[c.series(c.ANSWERS, outcome="HIT", ecosystem="pypi", host="pypi.org")] == 3
    third.close()


def test_since_and_compaction_keep_the_sums(tmp_path: Path) -> None:
    db = c.StatsDB(tmp_path)
    day = 86400
    now = 100 * day
    key = c.series(c.ANSWERS, outcome="HIT", ecosystem="pypi", host="h")
    for age in (40 * day, 3 * day, 3 * day - 61, 2 * 3600, 30):
        db.add({key: 1}, now - age)
    assert db.totals()[key] == 5
    assert db.totals(since=now - 3600)[key] == 1
    db.compact(now)
    assert db.totals()[key] == 5
    assert db.totals(since=now - 3600)[key] == 1
    assert db.totals(since=now - 4 * day)[key] == 4


def test_a_failed_flush_keeps_the_counts(tmp_path: Path) -> None:
    counters = c.Counters(tmp_path / "gone")  # no such directory: SQLite cannot open the file
    counters.upstream_failed("https://x", "timeout")
    counters.flush()
    assert counters.totals() == {c.series(c.UPSTREAM_FAILURES, origin="https://x", kind="timeout"): 1}
    (tmp_path / "gone").mkdir()
    counters.flush()
    assert c.StatsDB(tmp_path / "gone").totals() == counters.totals()


def test_label_values_from_requests_are_bounded() -> None:
    """A client asking for a cached host on every port (or every name under a *.domain pattern) must not grow
    the series without end: past LABEL_LIMIT distinct values, the rest are counted as 'other'."""
    counters = c.Counters(None)
    extra = 50
    for port in range(1000, 1000 + c.LABEL_LIMIT + extra):
        counters.answered("MISS", "pypi", f"pypi.org:{port}", 10, 0.01)
        counters.upstream_failed(f"https://pypi.org:{port}", "refused")
        counters.add(c.STALE, reason=f"upstream RuntimeError at {port}")
    totals = counters.totals()
    for name, label in ((c.ANSWERS, "host"), (c.UPSTREAM_FAILURES, "origin"), (c.STALE, "reason")):
        values = [dict(labels)[label] for (n, labels), _ in totals.items() if n == name]
        assert len(values) == c.LABEL_LIMIT + 1, name
        assert totals[next(k for k in totals if k[0] == name and dict(k[1])[label] == c.OTHER)] == extra
        assert sum(v for (n, _), v in totals.items() if n == name) == c.LABEL_LIMIT + extra
    assert totals[c.series(c.ANSWERS, outcome="MISS", ecosystem="pypi", host="pypi.org:1000")] == 1
