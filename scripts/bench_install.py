"""Install times of real pip and npm: straight to a fake registry, and through cacheaddon cold, warm and
during an outage of the registry while the index entries are stale.

Each install is `pip install --no-cache-dir` of six wheels into a fresh venv, or `npm install` of six packages
into a fresh project with an empty npm cache, against the e2e tests' fake registry (HTTPS with a test CA, on
127.0.0.x). Scenarios, per client and per round:
  direct          the client talks to the registry itself (pip --cert, npm --cafile: the test CA)
  cold            through a new proxy with an empty cache: every answer must be a MISS
  warm            again through that proxy: every answer must be a HIT and the registry must see no request
  outage-hang     a new proxy with cache_ttl=1, cache_upstream_timeout=5: one install warms it, 1.5 s later
                  the registry hangs (accepts, never answers) and the install is timed
  outage-refused  the same with the registry stopped (connections refused)
Medians of one run over --rounds rounds; ratios are to `direct` of the same run. Installs are checked (exit
status, installed versions, X-Cache outcomes, registry requests), timings never are.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import benchlib

# The e2e tests' fake registry and client helpers, reused as they are.
sys.path.insert(0, str(benchlib.ROOT))
from tests.e2e import clients  # noqa: E402
from tests.e2e.clients import ClientResult, MitmConf, Proxy  # noqa: E402
from tests.e2e.fakeregistry import NPM_INDEX_HOSTNAME, NPM_INDEX_IP, FakeRegistry, make_ca  # noqa: E402

# The fake registry's default sets (foxtrot needs echo, papa needs oscar): name -> the version that must land.
PIP_EXPECTED = {
    "alpha": "1.1.0",
    "bravo": "2.0.0",
    "charlie": "0.3.0",
    "delta": "1.2.3",
    "echo": "3.1.0",
    "foxtrot": "1.0.0",
}
NPM_EXPECTED = {
    "kilo": "1.1.0",
    "lima": "2.0.0",
    "mike": "0.3.0",
    "november": "1.2.3",
    "oscar": "3.1.0",
    "papa": "1.0.0",
}
SCENARIOS = ("direct", "cold", "warm", "outage-hang", "outage-refused")
OUTAGE_OPTIONS = {"cache_ttl": 1, "cache_upstream_timeout": 5}  # 5 is the default, spelled out
STALE_WAIT = 1.5  # seconds after warming: the index entries (cache_ttl=1) are stale, the files immutable
INSTALL_TIMEOUT = 120.0  # per install; a proxy paying 5 s on each of the 12 requests would need 60 s
LOG_WAIT = 2.0  # at most this long for the proxy's log lines of an install that has just finished
# The classic Apache set-up, 5 packages against a hanging registry: its figure, not measured here.
APACHE_HANG_S = 26.0


@dataclass
class Sample:
    elapsed: float
    requests: int
    outcomes: Counter[str]


@dataclass
class Client:
    name: str
    registry: FakeRegistry
    expected: Mapping[str, str]
    run: Callable[[Path, dict[str, str]], ClientResult]
    installed: Callable[[Path, str], str | None]
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def pip_client(registry: FakeRegistry, ca: Path) -> Client:
    def run(tmp: Path, env: dict[str, str]) -> ClientResult:
        extra = ["--cert", str(ca)] if "HTTPS_PROXY" not in env else []
        return clients.pip_install(
            tmp, list(PIP_EXPECTED), registry.pypi_url, env, INSTALL_TIMEOUT, extra_args=extra
        )

    return Client("pip", registry, PIP_EXPECTED, run, clients.installed_version)


def npm_client(registry: FakeRegistry) -> Client:
    def run(tmp: Path, env: dict[str, str]) -> ClientResult:
        return clients.npm_install(tmp, list(NPM_EXPECTED), registry.npm_url, env, INSTALL_TIMEOUT)

    return Client("npm", registry, NPM_EXPECTED, run, clients.npm_installed_version)


class Bench:
    def __init__(self, work: Path, ca: Path, mitm: MitmConf) -> None:
        self.work, self.ca, self.mitm = work, ca, mitm
        self.failures: list[str] = []
        self._serial = 0

    @contextlib.contextmanager
    def proxy(self, label: str, **options: object) -> Iterator[Proxy]:
        """A new mitmdump + cacheaddon with an empty cache of its own, stopped by its PID on the way out."""
        self._serial += 1
        name = f"{self._serial:03d}-{label}"
        proxy = Proxy(
            self.mitm, self.ca, self.work / f"cache-{name}", self.work / f"mitmdump-{name}.log", options
        )
        try:
            yield proxy.start()
        finally:
            proxy.stop()

    def install(self, client: Client, scenario: str, proxy: Proxy | None, *, record: bool = True) -> Sample:
        """One install, checked; recorded under `scenario` unless it only prepares the next one."""
        env = clients.client_env(proxy) if proxy else clients.client_env(bundle=self.ca)
        client.registry.clear_requests()
        mark = proxy.log_size() if proxy else 0
        tmp = Path(tempfile.mkdtemp(prefix=f"{client.name}-{scenario}-", dir=self.work))
        try:
            result = client.run(tmp, env)
            got = {n: client.installed(result.dir, n) for n in client.expected} if result.dir else {}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        requests = len(client.registry.requests)
        outcomes: Counter[str] = Counter()
        deadline = time.monotonic() + LOG_WAIT
        while proxy is not None:  # bounded by LOG_WAIT
            outcomes = Counter(outcome for outcome, _ in proxy.cache_log(mark))
            if outcomes.total() >= 2 * len(client.expected) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        sample = Sample(result.elapsed, requests, outcomes)
        what = f"{client.name} {scenario}" + ("" if record else " (warming)")
        if result.returncode != 0 or got != dict(client.expected):
            tail = "\n".join(result.output.splitlines()[-25:])
            log = f"\n--- proxy log tail\n{proxy.log_tail(15)}" if proxy else ""
            self.failure(f"{what}: exit {result.returncode}, installed {got}\n{tail}{log}")
        self.check(what, scenario if record else "cold", sample)
        if record:
            client.samples.setdefault(scenario, []).append(sample)
        return sample

    def check(self, what: str, scenario: str, s: Sample) -> None:
        if scenario == "cold" and (set(s.outcomes) != {"MISS"} or s.requests == 0):
            self.failure(f"{what}: expected all MISS, got {dict(s.outcomes)}, {s.requests} registry requests")
        if scenario == "warm" and (set(s.outcomes) != {"HIT"} or s.requests != 0):
            self.failure(
                f"{what}: expected all HIT and 0 registry requests, got {dict(s.outcomes)}, "
                f"{s.requests} registry requests"
            )
        if scenario.startswith("outage") and (not s.outcomes or set(s.outcomes) - {"HIT", "STALE"}):
            self.failure(f"{what}: expected HIT and STALE only, got {dict(s.outcomes)}")

    def failure(self, text: str) -> None:
        self.failures.append(text)
        print(f"  problem: {text.splitlines()[0]}", flush=True)

    def round(self, client: Client) -> None:
        self.install(client, "direct", None)
        with self.proxy(f"{client.name}-cold") as proxy:
            self.install(client, "cold", proxy)
            self.install(client, "warm", proxy)
        for failure in ("hang", "refused"):
            with self.proxy(f"{client.name}-{failure}", **OUTAGE_OPTIONS) as proxy:
                self.install(client, f"outage-{failure}", proxy, record=False)
                time.sleep(STALE_WAIT)
                try:
                    if failure == "hang":
                        client.registry.mode = "hang"
                    else:
                        client.registry.stop()
                    self.install(client, f"outage-{failure}", proxy)
                finally:
                    proxy.stop()  # before the registry is back, so no late probe of the proxy reaches it
                    client.registry.mode = "ok"
                    client.registry.restart()  # same ports; frees the handlers still hanging


def spread(values: list[int]) -> str:
    low, high = min(values, default=0), max(values, default=0)
    return str(low) if low == high else f"{low}-{high}"


def outcome_text(samples: list[Sample]) -> str:
    texts = sorted({" ".join(f"{k}={v}" for k, v in sorted(s.outcomes.items())) or "-" for s in samples})
    return " | ".join(texts)


def report(bench: Bench, runs: list[Client], rounds_done: int) -> None:
    rows, lines = [], []
    for client in runs:
        base = benchlib.median([s.elapsed for s in client.samples.get("direct", [])])
        for scenario in SCENARIOS:
            samples = client.samples.get(scenario, [])
            times = [s.elapsed for s in samples]
            med = benchlib.median(times)
            ratio = "-" if not samples or base != base else f"{med / base:.2f}x"
            reqs = spread([s.requests for s in samples])
            rows.append(
                [
                    scenario,
                    client.name,
                    f"{med:.2f}",
                    f"{min(times, default=float('nan')):.2f}",
                    f"{max(times, default=float('nan')):.2f}",
                    ratio,
                    reqs,
                    outcome_text(samples) if scenario != "direct" else "-",
                ]
            )
            lines.append(
                f"install {client.name} {scenario} median_s={med:.2f} ratio_direct={ratio} "
                f"registry_requests={reqs}"
            )
    print()
    print(
        benchlib.table(
            ["scenario", "client", "median_s", "min_s", "max_s", "ratio_direct", "registry_reqs", "x_cache"],
            rows,
        )
    )
    print(
        f"\n{rounds_done} round(s); min/max/median over rounds of the client's wall time (the venv or "
        "project is made outside it); registry_reqs: requests the fake registry saw during the timed install "
        "(min-max over rounds); x_cache: the proxy's outcomes per install. Client, proxy and registry share "
        f"{os.cpu_count()} cores."
    )
    hang = [s.elapsed for c in runs if c.name == "pip" for s in c.samples.get("outage-hang", [])]
    print(
        "For comparison (not measured here): the classic Apache set-up paid its timeout on every request; a "
        f"5-package install against a hanging registry took {APACHE_HANG_S:.0f} s there. Here, 6 packages "
        f"with cache_upstream_timeout=5: pip outage-hang median {benchlib.median(hang):.2f} s."
    )
    for line in lines:
        print(line)
    for failure in bench.failures:
        print(f"FAILED {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured installs per scenario, default 5")
    parser.add_argument("--clients", default="pip,npm", help="comma-separated subset of pip,npm")
    parser.add_argument("--max-minutes", type=float, default=60, help="start no round after this, default 60")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches)")
    args = parser.parse_args(argv)
    wanted = [c for c in args.clients.split(",") if c]
    if args.rounds < 1 or not wanted or set(wanted) - {"pip", "npm"}:
        parser.error("--rounds must be >= 1 and --clients a subset of pip,npm")
    if "npm" in wanted and not shutil.which("npm"):
        print("npm is not installed: measuring pip only", flush=True)
        wanted = [c for c in wanted if c != "npm"]

    print(benchlib.versions(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="cacheaddon-bench-install-"))
    registries: list[FakeRegistry] = []
    runs: list[Client] = []
    rounds_done = 0
    try:
        certs = make_ca(work / "certs")
        (work / "mitm-conf").mkdir()
        bench = Bench(work, certs.ca_cert, MitmConf(work / "mitm-conf"))
        for name in wanted:
            if name == "pip":
                registries.append(FakeRegistry(certs).start())
                runs.append(pip_client(registries[-1], certs.ca_cert))
            else:
                # npm behind an HTTPS proxy reaches a registry only by name: fakeregistry.NPM_INDEX_HOSTNAME
                registries.append(
                    FakeRegistry(certs, index_ip=NPM_INDEX_IP, index_hostname=NPM_INDEX_HOSTNAME).start()
                )
                runs.append(npm_client(registries[-1]))
        print(
            "registries: "
            + ", ".join(f"{c.name} {c.registry.index.url} + {c.registry.files.url}" for c in runs)
        )
        print(f"{args.rounds} round(s) of: " + ", ".join(SCENARIOS), flush=True)
        started = time.monotonic()
        for round_no in range(args.rounds):
            if time.monotonic() - started > args.max_minutes * 60:
                bench.failure(f"stopped after {round_no} round(s): --max-minutes {args.max_minutes:g} passed")
                break
            try:
                # Alternate which client goes first, so neither always runs on a freshly idle machine.
                for client in runs if round_no % 2 == 0 else runs[::-1]:
                    bench.round(client)
            except Exception as exc:  # report what was measured; the finally blocks have stopped everything
                bench.failure(f"round {round_no + 1} aborted: {type(exc).__name__}: {exc}")
                break
            rounds_done += 1
            print(f"round {round_no + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        for registry in registries:
            registry.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(bench, runs, rounds_done)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
