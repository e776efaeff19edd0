"""Counters, metrics and Cache-Status on real traffic: `cacheaddon stats` adds up across two processes on
one cache_dir and across restarts, the Prometheus endpoint agrees with it, every answer says Cache-Status."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from .clients import ProxyFactory, client_env, fetch, pip_install, report
from .fakeregistry import FakeRegistry
from .ops import cli, cli_json, metric_sum, metrics_url, scrape, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_counters_add_up_across_processes_and_survive_restarts(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    shared = tmp_path / "shared-cache"
    first = proxy_factory(cache_dir=shared)
    second = proxy_factory(cache_dir=shared)
    wheel = registry.wheel("alpha")
    url = registry.file_url(wheel.filename)
    page = f"{registry.pypi_url}bravo/"

    assert fetch(first, url)[1]["x-cache"] == "MISS"
    assert fetch(second, url)[1]["x-cache"] == "HIT"
    assert fetch(second, page)[1]["x-cache"] == "MISS"
    assert fetch(first, page)[1]["x-cache"] == "HIT"

    # Both processes are still running: their counts reach the directory within a few seconds.
    stats = wait_for(
        lambda: (s := cli_json("stats", cache_dir=shared))["total_answers"] == 4 and s,
        what="counts of both running proxies in stats",
    )
    assert stats["answers"] == {"HIT": 2, "MISS": 2, "REVALIDATED": 0, "STALE": 0}
    assert stats["entries"] == 2
    assert stats["bytes_from_upstream"] == registry.body_bytes_sent
    assert stats["bytes_from_cache"] == stats["bytes_from_upstream"]  # each body served once more from cache
    assert stats["hit_ratio"] == 0.5

    # A clean stop keeps what was counted last; a restarted proxy adds to it.
    first.stop()
    second.stop()
    first.start()
    assert fetch(first, url)[1]["x-cache"] == "HIT"
    first.stop()
    stats = cli_json("stats", cache_dir=shared)
    assert stats["answers"]["HIT"] == 3 and stats["answers"]["MISS"] == 2
    hosts = {h["host"]: h["answers"] for h in stats["top_hosts"]}
    assert hosts == {
        registry.files.url.removeprefix("https://"): 3,
        registry.index.url.removeprefix("https://"): 2,
    }

    # Even a killed proxy loses at most the last few seconds: what it counted earlier was flushed.
    first.start()
    assert fetch(first, url)[1]["x-cache"] == "HIT"
    wait_for(lambda: cli_json("stats", cache_dir=shared)["answers"]["HIT"] == 4, what="periodic flush")
    assert first.pid is not None
    os.killpg(first.pid, signal.SIGKILL)
    first.stop()
    assert cli_json("stats", cache_dir=shared)["answers"]["HIT"] == 4

    # --since counts only what came after (to the minute); a bad --since is a usage error naming the option.
    assert cli_json("stats", "--since", "1h", cache_dir=shared)["total_answers"] == 6
    assert cli_json("stats", "--since", "2999-01-01", cache_dir=shared)["total_answers"] == 0
    bad = cli("stats", "--since", "yesterdayish", cache_dir=shared)
    assert bad.returncode == 2 and "--since" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.slow
def test_metrics_scraped_during_traffic_match_stats(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    env = client_env(proxy)
    scrapes: list[dict[str, float]] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            scrapes.append(scrape(metrics_url(proxy)))
            done.wait(0.2)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        cold = pip_install(tmp_path, ["foxtrot", "alpha"], registry.pypi_url, env)
        warm = pip_install(tmp_path, ["foxtrot", "alpha"], registry.pypi_url, env)
    finally:
        done.set()
        thread.join(30)
    assert cold.returncode == 0, report(cold, proxy)
    assert warm.returncode == 0, report(warm, proxy)
    assert len(scrapes) >= 2
    answers = [metric_sum(s, "cacheaddon_answers_total") for s in scrapes]
    assert answers == sorted(answers), "a counter went down between scrapes"

    logged = [outcome for outcome, _ in proxy.cache_log()]
    stats = wait_for(
        lambda: (s := cli_json("stats", cache_dir=proxy.cache_dir))["total_answers"] == len(logged) and s,
        what="stats counting every logged answer",
    )
    samples = scrape(metrics_url(proxy))
    for outcome in ("HIT", "MISS", "REVALIDATED", "STALE"):
        assert stats["answers"][outcome] == logged.count(outcome)
        assert metric_sum(samples, "cacheaddon_answers_total", outcome=outcome) == logged.count(outcome)
    assert metric_sum(samples, "cacheaddon_answers_total", ecosystem="pypi") == len(logged)
    assert metric_sum(samples, "cacheaddon_body_bytes_total", source="cache") == stats["bytes_from_cache"]
    assert (
        metric_sum(samples, "cacheaddon_body_bytes_total", source="upstream") == stats["bytes_from_upstream"]
    )
    assert stats["bytes_from_upstream"] == registry.body_bytes_sent
    assert metric_sum(samples, "cacheaddon_entries") == stats["entries"] > 0
    assert metric_sum(samples, "cacheaddon_request_duration_seconds_count") == len(logged)
    assert metric_sum(samples, "cacheaddon_disk_bytes") > 0

    # The same metrics on a registry endpoint; a plain request elsewhere is not mistaken for them.
    assert (
        metric_sum(scrape(f"{proxy.endpoint()}/_cacheaddon/metrics"), "cacheaddon_entries")
        == stats["entries"]
    )
    assert (
        "cacheaddon_answers_total"
        not in httpx.get(f"{proxy.url}/_cacheaddon/metricsX", trust_env=False, timeout=30).text
    )


def test_every_answer_carries_cache_status(registry: FakeRegistry, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory()
    url = registry.file_url(registry.wheel("golf").filename)
    assert fetch(proxy, url)[1]["cache-status"] == 'cacheaddon; fwd=miss; stored; detail="miss"'
    assert fetch(proxy, url)[1]["cache-status"] == 'cacheaddon; hit; detail="fresh"'
    registry.mode = "503"
    page = f"{registry.pypi_url}golf/"
    status, headers, _ = fetch(proxy, page)
    assert status == 503 and headers["cache-status"] == 'cacheaddon; fwd=miss; detail="upstream answered 503"'
    stats = wait_for(
        lambda: (s := cli_json("stats", cache_dir=proxy.cache_dir))["upstream_failures"] and s,
        what="the failure counted",
    )
    assert stats["upstream_failures"] == [{"origin": registry.index.url, "kind": "http_5xx", "count": 1}]
