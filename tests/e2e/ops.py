"""Running the operator subcommands (`cacheaddon stats | ls | ...`) as a user would, and reading them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .clients import CACHEADDON, Proxy

CLI_TIMEOUT = 120.0


def cli(
    *args: str | Path, cache_dir: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`cacheaddon ARGS --cache-dir DIR`, never raising for its exit status."""
    argv = [str(CACHEADDON), *map(str, args)]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    return subprocess.run(
        argv,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def cli_json(*args: str | Path, cache_dir: Path | None = None) -> Any:
    result = cli(*args, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, (
        f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return json.loads(result.stdout)


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Polls `check` until it returns something true (bounded)."""
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached after {timeout}s (last: {value!r})")


def scrape(url: str) -> dict[str, float]:
    """The metrics at `url` as {'name{label="v",...}': value}, parsed by prometheus-client's own parser."""
    response = httpx.get(url, trust_env=False, timeout=30)
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.split("{", 1)[0] == name and all(w in key for w in wanted)
    )


def metrics_url(proxy: Proxy) -> str:
    return f"{proxy.url}/_cacheaddon/metrics"
