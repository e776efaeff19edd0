"""cacheaddon next to what it is compared with, in one run: the targets of issue 7.

Setups, all on loopback (every server binds 127.x; each is stopped by its PID): direct to the origin or
registry; Apache mod_cache_disk and nginx proxy_cache as forward proxies (apt, installed when missing); proxpi
(PyPI, into a venv in the data folder); bare mitmproxy (mitmdump with a 5-line addon answering from memory,
reverse mode); cacheaddon (`cacheaddon run`) through a registry endpoint and as a forward proxy, and with
--workers 2 when this revision has it.

Workloads:
  hits      wrk, 8 connections, --seconds each: one 36 KB index page (absolute links; rewritten by the
            endpoint), one 5 MB file; hits/s and MB/s. Every answer is a 200 of the right size, cacheaddon's
            are X-Cache HIT, and the origin is asked nothing during the load.
  pip       `pip download --no-deps` of 26 real wheels from a local registry (absolute links to a files host),
            cold (empty cache, a new server) then warm; sha256 of every file; warm runs reach no registry.
  npm       `npm install` of 8 real packages (36 with their dependencies), empty npm cache, cold and warm.
  npm-large `npm ci` of a lockfile of 500+ real packages (jest, webpack, eslint, babel, mocha): warm.
  herd      8 concurrent misses of one 5 MB file, 200 ms before the origin answers: origin requests, bodies
            identical and right, the last client's time against a lone client's.
  memory    scripts/bench_memory.py: peak RSS growth of the proxy for a 1 GiB miss and a 1 GiB hit.
Writes a markdown table (medians, ratios) and a PNG chart of the ratios; asserts correctness, never timings.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import bench_hits
import benchdata
import benchlib
import benchload
import httpx
from benchlib import MiB, Process

HITS = "36 KB index page, 8 connections"
LARGE = "5 MB file, 8 connections"
PAGE = "/abs" + benchlib.INDEX_PAGE
BIG = benchlib.data_path(5 * MiB, "big-0000.tar.gz")  # listed by the origin's project big-1x5242880
BIG_PROJECT = benchlib.project_name("big", 1, 5 * MiB)
HOSTS = ("127.0.0.2", "127.0.0.3")
CACHEADDON = benchlib.ROOT / ".venv" / "bin" / "cacheaddon"
MITMDUMP = benchlib.ROOT / ".venv" / "bin" / "mitmdump"
CLIENT_TIMEOUT = 600.0


class Failures(list[str]):
    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.append(what)
            print(f"FAILED {what}", flush=True)
        return ok


@dataclass
class Server:
    """One setup's server: `forward` is its proxy URL, `base` its URL as an endpoint (either may be None)."""

    name: str
    procs: list[Process]
    forward: str | None = None
    base: str | None = None
    shares: Server | None = None  # another setup's process (the forward proxy of an endpoint's process)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    failures: Failures = field(default_factory=Failures)
    results: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    nginx: str | None = None
    apache: str | None = None
    proxpi: Path | None = None
    workers: bool = False
    serial: int = 0

    def record(self, workload: str, setup: str, value: float) -> None:
        self.results.setdefault(workload, {}).setdefault(setup, []).append(value)

    def tag(self) -> str:
        self.serial += 1
        return f"-{self.serial:03d}"

    # servers

    def cacheaddon(self, upstream: str, workers: int = 1, name: str = "cacheaddon") -> Server:
        tag = self.tag()
        port, endpoint = benchlib.free_port(), benchlib.free_port()
        argv = [str(CACHEADDON), "run", "-p", str(port), "--registry", f"{upstream}@{endpoint}"]
        argv += [
            "--set",
            f"confdir={self.work / 'conf'}",
            "--set",
            f"cache_dir={self.work / ('cache' + tag)}",
        ]
        argv += ["--set", f"cache_hosts={','.join(HOSTS)}"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        log = self.work / f"{name}{tag}.log"
        proc = Process(name, argv, log, "127.0.0.1", endpoint).start(timeout=90)
        benchlib.wait_port("127.0.0.1", port, proc.proc, 30)  # type: ignore[arg-type]
        return Server(name, [proc], f"http://127.0.0.1:{port}", f"http://127.0.0.1:{endpoint}")

    def bare(self, origin: str) -> Server:
        bodies = self.work / "bare-bodies"
        bodies.mkdir(exist_ok=True)
        with httpx.Client(trust_env=False, timeout=60) as client:
            for path in (PAGE, BIG):
                (bodies / quote(path, safe="")).write_bytes(client.get(origin + path).content)
        port = benchlib.free_port()
        argv = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", str(port), "--mode", f"reverse:{origin}"]
        argv += ["--set", f"confdir={self.work / 'conf'}", "--set", "connection_strategy=lazy"]
        argv += ["-s", str(benchlib.ROOT / "scripts" / "bench_bare_addon.py")]
        env = {"BENCH_BODIES": str(bodies)}
        proc = Process("bare", argv, self.work / "bare.log", "127.0.0.1", port, env=env).start(timeout=60)
        return Server("bare mitmproxy", [proc], None, f"http://127.0.0.1:{port}")

    def nginx_server(self) -> Server:
        assert self.nginx is not None
        proc = bench_hits.start_nginx(self.nginx, self.work, 1, self.tag())
        return Server("nginx", [proc], f"http://127.0.0.1:{proc.port}")

    def apache_server(self) -> Server:
        assert self.apache is not None
        proc = bench_hits.start_apache(self.apache, self.work, 25, self.tag(), HOSTS)
        return Server("apache", [proc], f"http://127.0.0.1:{proc.port}")

    def proxpi_server(self, index: str) -> Server:
        assert self.proxpi is not None
        proc = bench_hits.start_proxpi(self.proxpi, self.work, index, 2, self.tag())
        return Server("proxpi", [proc], None, f"http://127.0.0.1:{proc.port}")


@contextmanager
def started(make: Callable[[], Server]) -> Iterator[Server]:
    server = make()
    try:
        yield server
    finally:
        server.stop()


# --- hits ---------------------------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hit_loads(bench: Bench, origin: str, servers: list[Server]) -> None:
    """wrk on the index page and the 5 MB file through every server; checked before and during the load."""
    origin_host = origin.removeprefix("http://")
    page_sha = _sha(benchlib.simple_page(benchlib.INDEX_PAGE.split("/")[2], origin) or b"")
    big_sha = benchlib.expected_sha256(BIG, 5 * MiB)
    for load, path, sha in ((HITS, PAGE, page_sha), (LARGE, BIG, big_sha)):
        for server in servers:
            label = server.name
            if server.name == "proxpi":
                project = BIG_PROJECT if path == BIG else benchlib.INDEX_PAGE.split("/")[2]
                target = f"/index/{project}/" + ("big-0000.tar.gz" if path == BIG else "")
                connect, host, url, proxy = server.base, server.base, server.base + target, None
            elif server.base is not None and not label.endswith("forward"):
                connect, target, host, url, proxy = server.base, path, server.base, server.base + path, None
            else:
                connect, target, host, url, proxy = (
                    server.forward,
                    origin + path,
                    origin_host,
                    origin + path,
                    None,
                )
                proxy = server.forward
            assert connect is not None
            with httpx.Client(proxy=proxy, trust_env=False, timeout=120) as client:
                for _ in range(3):  # proxpi answers a file it is still fetching with a redirect
                    answer = client.get(url)
                    time.sleep(0.2)
            what = f"{load} {label}"
            exact = server.name in ("nginx", "apache", "bare mitmproxy") or label.endswith("forward")
            ok = answer.status_code == 200 and (_sha(answer.content) == sha if exact else len(answer.content))
            if label.startswith("cacheaddon"):
                ok = ok and answer.headers.get("x-cache", "").startswith("HIT")
            if not bench.failures.check(
                bool(ok), f"{what}: wrong answer after warming: {answer.status_code}"
            ):
                continue
            before = benchlib.origin_requests(origin)
            procs = server.procs or (server.shares.procs if server.shares else [])
            cpu = sum(benchlib.tree_cpu_seconds(p.pid) for p in procs)
            result = benchload.run_wrk(
                connect, target, host.removeprefix("http://"), bench.work, seconds=bench.args.seconds
            )
            reached = benchlib.origin_requests(origin) - before
            cpu = sum(benchlib.tree_cpu_seconds(p.pid) for p in procs) - cpu
            body = int(answer.headers.get("content-length", len(answer.content)))  # as sent: maybe gzip
            bench.failures.check(
                reached == 0, f"{what}: the origin was asked {reached} times during the load"
            )
            bench.failures.check(
                result.non_2xx == 0 and result.socket_errors == 0,
                f"{what}: {result.non_2xx} non-2xx answers, {result.socket_errors} socket errors",
            )
            bench.failures.check(
                result.bytes_read >= 0.95 * result.requests * body,
                f"{what}: answers shorter than {body} bytes",
            )
            value = result.rate if load == HITS else result.requests * body / 1e6 / result.seconds
            bench.record(load, label, value)
            if server.procs or server.shares:
                bench.record(f"{load}: CPU ms per answer", label, 1000 * cpu / max(result.requests, 1))
            print(f"{what}: {value:.0f} ({result.requests} answers of {body} bytes)", flush=True)


# --- herd ---------------------------------------------------------------------------------------------------


def _timed_get(proxy: str, url: str, out: list[tuple[float, str, int]], start: threading.Barrier) -> None:
    with httpx.Client(proxy=proxy, trust_env=False, timeout=120) as client:
        start.wait(30)
        t0 = time.perf_counter()
        try:
            response = client.get(url)
            out.append((time.perf_counter() - t0, _sha(response.content), response.status_code))
        except httpx.HTTPError as exc:
            out.append((float("nan"), f"error {exc}", 0))


def herd(bench: Bench, origin: str, server: Server, rounds: int) -> None:
    assert server.forward is not None
    for r in range(rounds):
        times: dict[str, float] = {}
        for kind, clients in (("lone", 1), ("herd", 8)):
            path = f"/data/{5 * MiB}/herd-{server.name.replace(' ', '-')}-{kind}-{r}.bin"
            slow = "/slow/200" + path
            out: list[tuple[float, str, int]] = []
            barrier = threading.Barrier(clients)
            threads = [
                threading.Thread(target=_timed_get, args=(server.forward, origin + slow, out, barrier))
                for _ in range(clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            sha = benchlib.expected_sha256(path, 5 * MiB)
            what = f"herd {server.name} {kind} round {r + 1}"
            bench.failures.check(
                len(out) == clients and all(s == sha and c == 200 for _, s, c in out),
                f"{what}: not every client got the whole, right body: {[(c, s[:12]) for _, s, c in out]}",
            )
            times[kind] = max((t for t, _, _ in out), default=float("nan"))
            if kind == "herd":
                bench.record("herd upstream requests", server.name, benchlib.origin_requests(origin, slow))
        bench.record("herd last / lone", server.name, times["herd"] / times["lone"])


# --- installs -----------------------------------------------------------------------------------------------


def pip_download(bench: Bench, index: str, proxy: str | None, wheels: dict[str, str]) -> float:
    dest = Path(tempfile.mkdtemp(dir=bench.work, prefix="pip-"))
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q", "-d", str(dest)]
    argv += ["--disable-pip-version-check", "--index-url", index, "--retries", "0", "--timeout", "60"]
    argv += [a for h in ("127.0.0.1", *HOSTS) for a in ("--trusted-host", h)]
    argv += ["--proxy", proxy] if proxy else []
    env = {**benchlib.client_env(), "PIP_CONFIG_FILE": "/dev/null"}
    t0 = time.perf_counter()
    done = subprocess.run(
        argv + benchdata.WHEELS, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
    )
    elapsed = time.perf_counter() - t0
    got = {p.name: _sha(p.read_bytes()) for p in dest.glob("*.whl")}
    shutil.rmtree(dest, ignore_errors=True)
    if done.returncode != 0 or got != wheels:
        raise RuntimeError(
            f"pip download via {proxy or index}: {done.returncode}, {len(got)} of {len(wheels)} "
            f"right: {done.stderr.strip()[-300:]}"
        )
    return elapsed


def npm_install(bench: Bench, workload: str, registry: str, proxy: str | None) -> float:
    source = benchdata.DATA / ("npm-small" if workload == "npm" else workload)
    project = Path(tempfile.mkdtemp(dir=bench.work, prefix="npm-"))
    shutil.copy(source / "package.json", project / "package.json")
    lockfile = workload == "npm-large"
    if lockfile:
        shutil.copy(source / "package-lock.json", project / "package-lock.json")
    argv = ["npm", "ci" if lockfile else "install", "--ignore-scripts", "--no-audit", "--no-fund"]
    argv += ["--registry", registry, "--cache", str(project / ".npm-cache"), "--userconfig", "/dev/null"]
    argv += ["--replace-registry-host", "always", "--fetch-retries", "0", "--loglevel", "error"]
    argv += ["--proxy", proxy, "--noproxy", ""] if proxy else []
    argv += [] if lockfile else ["--no-package-lock"]
    t0 = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=project,
        env=benchlib.client_env(),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    deps = json.loads((source / "package.json").read_text())["dependencies"]
    installed = {}
    for name in deps:
        manifest = project / "node_modules" / name / "package.json"
        installed[name] = json.loads(manifest.read_text())["version"] if manifest.exists() else None
    shutil.rmtree(project, ignore_errors=True)
    if done.returncode != 0 or installed != deps:
        raise RuntimeError(
            f"npm {workload} via {proxy or registry}: {done.returncode}, {installed}: "
            f"{(done.stdout + done.stderr).strip()[-300:]}"
        )
    return elapsed


def registry_requests(urls: tuple[str, str]) -> int:
    return sum(benchlib.origin_requests(u) for u in urls)


def installs(bench: Bench, registry: tuple[str, str], rounds: int, large_rounds: int) -> None:
    index, files = registry
    wheels = {p.name: _sha(p.read_bytes()) for p in (benchdata.DATA / "wheels").glob("*.whl")}
    a = bench.args
    makers: list[tuple[str, Callable[[], Server] | None]] = [("direct", None)]
    if bench.apache:
        makers.append(("apache", bench.apache_server))
    if bench.nginx:
        makers.append(("nginx", bench.nginx_server))
    if bench.proxpi:
        makers.append(("proxpi", lambda: bench.proxpi_server(index)))
    makers += [
        ("cacheaddon endpoint", lambda: bench.cacheaddon(index, name="cacheaddon endpoint")),
        ("cacheaddon forward", lambda: bench.cacheaddon(index, name="cacheaddon forward")),
    ]
    workloads = [w for w in ("pip", "npm", "npm-large") if w in a.workloads]
    for workload in workloads:
        n = large_rounds if workload == "npm-large" else rounds
        for r in range(n):
            for name, make in makers:
                if name == "proxpi" and workload != "pip":
                    continue
                if workload == "npm-large" and name == "apache":
                    continue
                server = make() if make else None
                try:
                    if server is None:
                        proxy, client_index = None, index
                    elif name == "proxpi":
                        proxy, client_index = None, f"{server.base}/index/"
                    elif name == "cacheaddon endpoint":
                        proxy, client_index = None, f"{server.base}/simple/"
                    else:
                        proxy, client_index = server.forward, index + "/simple/"
                    if workload == "pip":
                        client_index = (
                            client_index
                            if name in ("proxpi", "cacheaddon endpoint")
                            else (index + "/simple/")
                        )

                        def run(p: str | None = proxy, i: str = client_index) -> float:
                            return pip_download(bench, i, p, wheels)
                    else:
                        reg = (server.base + "/") if name == "cacheaddon endpoint" and server else index + "/"

                        def run(p: str | None = proxy, g: str = reg, w: str = workload) -> float:
                            return npm_install(bench, w, g, p)

                    cold = run()
                    before = registry_requests(registry)
                    warm = run()
                    reached = registry_requests(registry) - before
                    if name.startswith("cacheaddon"):
                        bench.failures.check(
                            reached == 0, f"{workload} {name}: warm run asked the registry {reached} times"
                        )
                    elif reached and name != "direct":  # their configuration's business: reported, not failed
                        bench.record(f"{workload} warm: registry requests", name, reached)
                    bench.record(f"{workload} cold", name, cold)
                    bench.record(f"{workload} warm", name, warm)
                    print(f"{workload} round {r + 1} {name}: cold {cold:.2f}s, warm {warm:.2f}s", flush=True)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    bench.failures.check(False, f"{workload} {name}: {exc}")
                finally:
                    if server is not None:
                        server.stop()
    del files


# --- memory -------------------------------------------------------------------------------------------------


def memory(bench: Bench) -> None:
    argv = [sys.executable, str(benchlib.ROOT / "scripts" / "bench_memory.py")]
    argv += ["--size", bench.args.memory_size, "--scenarios", "cold_miss,cached_hit"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
    for line in done.stdout.splitlines():
        found = re.match(r"memory (\w+) peak_rss_mb=(\d+) delta_mb=(-?\d+) .* ok=(\w+)", line)
        if found:
            label = {"cold_miss": "miss", "cached_hit": "hit"}[found[1]]
            key = f"memory: peak RSS growth, {bench.args.memory_size} {label}"
            bench.record(key, "cacheaddon forward", float(found[3]))
            bench.failures.check(found[4] == "yes", f"memory {found[1]}: the download was wrong")
    bench.failures.check(done.returncode == 0, f"memory: bench_memory.py exited {done.returncode}")


# --- report -------------------------------------------------------------------------------------------------

ORDER = (
    "direct",
    "apache",
    "nginx",
    "proxpi",
    "bare mitmproxy",
    "cacheaddon endpoint",
    "cacheaddon forward",
    "cacheaddon workers=2",
)
THROUGHPUT = (HITS, LARGE)  # higher is better; every other row is a time or a count
BASELINES = {w: "bare mitmproxy" for t in THROUGHPUT for w in (t, t + ": CPU ms per answer")}
UNITS = {
    HITS: "hits/s",
    HITS + ": CPU ms per answer": "ms",
    LARGE + ": CPU ms per answer": "ms",
    LARGE: "MB/s",
    "herd upstream requests": "requests",
    "herd last / lone": "x",
}
TARGETS: tuple[tuple[str, str, str, str, float, str], ...] = (
    # (label, workload, setup, against, bound, "min"|"max")
    (
        "small hits, endpoint >= 0.9x bare mitmproxy",
        HITS,
        "cacheaddon endpoint",
        "bare mitmproxy",
        0.9,
        "min",
    ),
    ("small hits, --workers 2 >= proxpi", HITS, "cacheaddon workers=2", "proxpi", 1.0, "min"),
    (
        "5 MB hits, endpoint >= 0.9x bare mitmproxy",
        LARGE,
        "cacheaddon endpoint",
        "bare mitmproxy",
        0.9,
        "min",
    ),
    ("5 MB hits, --workers 2 >= 0.5x nginx", LARGE, "cacheaddon workers=2", "nginx", 0.5, "min"),
    ("warm pip, endpoint <= 1.0x direct", "pip warm", "cacheaddon endpoint", "direct", 1.0, "max"),
    ("warm pip, endpoint <= 1.1x nginx", "pip warm", "cacheaddon endpoint", "nginx", 1.1, "max"),
    ("warm pip, endpoint <= 1.1x proxpi", "pip warm", "cacheaddon endpoint", "proxpi", 1.1, "max"),
    ("warm npm, endpoint <= 1.0x direct", "npm warm", "cacheaddon endpoint", "direct", 1.0, "max"),
    ("warm npm, endpoint <= 1.1x nginx", "npm warm", "cacheaddon endpoint", "nginx", 1.1, "max"),
    ("cold pip, endpoint <= 1.2x direct", "pip cold", "cacheaddon endpoint", "direct", 1.2, "max"),
    ("cold npm, endpoint <= 1.2x direct", "npm cold", "cacheaddon endpoint", "direct", 1.2, "max"),
    ("npm 500+ warm, endpoint <= 1.1x nginx", "npm-large warm", "cacheaddon endpoint", "nginx", 1.1, "max"),
    ("npm 500+ warm, forward <= 1.1x nginx", "npm-large warm", "cacheaddon forward", "nginx", 1.1, "max"),
)


def _median(values: list[float]) -> float:
    return benchlib.median(values)


def report(bench: Bench, started_at: float) -> str:
    res = bench.results
    setups = [s for s in ORDER if any(s in r for r in res.values())]
    lines = [
        f"# cacheaddon benchmark ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
        f"{time.perf_counter() - started_at:.0f} s)",
        "",
        benchlib.versions() + ". " + "; ".join(bench.notes),
        "",
        "Medians of one run; times in seconds (installs) with, in brackets, the ratio to the row's baseline "
        "(direct for installs, bare mitmproxy for hits).",
        "",
        "| workload | " + " | ".join(setups) + " |",
        "|---|" + "---|" * len(setups),
    ]
    for workload, by_setup in res.items():
        base_name = BASELINES.get(workload, "direct" if "cold" in workload or "warm" in workload else "")
        base = _median(by_setup.get(base_name, [])) if base_name else float("nan")
        cells = []
        for s in setups:
            if s not in by_setup:
                cells.append("-")
                continue
            v = _median(by_setup[s])
            text = f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
            if base == base and base:
                text += f" ({v / base:.2f}x)"
            cells.append(text)
        unit = UNITS.get(workload, "requests" if workload.endswith("requests") else "s")
        unit = "MB" if workload.startswith("memory") else unit
        lines.append(f"| {workload} ({unit}) | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for label, workload, setup, against, bound, sense in TARGETS:
        have, ref = res.get(workload, {}).get(setup), res.get(workload, {}).get(against)
        if not have or not ref:
            lines.append(f"| {label} | not measured | - |")
            continue
        r = _median(have) / _median(ref)
        met = r >= bound if sense == "min" else r <= bound
        lines.append(f"| {label} | {r:.2f}x | {'yes' if met else 'NO'} |")
    herd_req = res.get("herd upstream requests", {})
    for setup, values in herd_req.items():
        ratio = _median(res.get("herd last / lone", {}).get(setup, [float("nan")]))
        lines.append(
            f"| 8 concurrent misses, {setup}: 1 upstream request, last <= 1.5x lone | "
            f"{max(values):.0f} request(s), {ratio:.2f}x | "
            + ("yes |" if max(values) == 1 and ratio <= 1.5 else "NO |")
        )
    for workload, by_setup in res.items():
        if workload.startswith("memory"):
            v = max(by_setup["cacheaddon forward"])
            lines.append(f"| {workload} < 64 | {v:.0f} MB | {'yes' if v < 64 else 'NO'} |")
    lines += ["", *(f"FAILED {f}" for f in bench.failures)]
    return "\n".join(lines) + "\n"


def chart(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for workload, by_setup in bench.results.items():
        base_name = BASELINES.get(workload, "direct" if "cold" in workload or "warm" in workload else "")
        if not base_name or base_name not in by_setup:
            continue
        base = _median(by_setup[base_name])
        ratios = {s: _median(v) / base for s, v in by_setup.items()}
        if workload in THROUGHPUT:  # charted as time per answer, like the rest
            ratios = {s: 1 / r for s, r in ratios.items() if r}
        rows.append((workload, ratios))
    if not rows:
        return
    setups = [s for s in ORDER if any(s in r for _, r in rows)]
    fig, ax = plt.subplots(figsize=(12, 0.6 + 0.55 * len(rows) * 1.6))
    height = 0.8 / len(setups)
    for i, setup in enumerate(setups):
        ys = [n + i * height for n in range(len(rows))]
        xs = [r.get(setup, 0) for _, r in rows]
        ax.barh(ys, xs, height, label=setup)
    ax.set_yticks([n + 0.4 - height / 2 for n in range(len(rows))])
    ax.set_yticklabels([w for w, _ in rows])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(
        "time per unit of work relative to the baseline (direct; bare mitmproxy for hits): lower is better"
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"cacheaddon benchmark {datetime.date.today().isoformat()}, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------------------

WORKLOADS = ("hits", "herd", "pip", "npm", "npm-large", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="wrk's duration per load, default 10")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of pip and npm installs, default 3")
    parser.add_argument("--large-rounds", type=int, default=2, help="rounds of the 500+ npm install")
    parser.add_argument("--herd-rounds", type=int, default=2, help="rounds of concurrent misses, default 2")
    parser.add_argument("--memory-size", default="1g", help="body size of the memory runs, default 1g")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get/pip install the others")
    parser.add_argument("--out", type=Path, default=benchdata.DATA / "results", help="where the report goes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches)")
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(args.workloads) - set(WORKLOADS):
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown))}")
    started_at = time.perf_counter()
    install = not args.no_install
    if benchload.wrk_binary() is None and install:
        bench_hits.find_server("wrk", ("wrk",), True)
    work = Path(tempfile.mkdtemp(prefix="cacheaddon-bench-"))
    work.chmod(0o755)
    bench = Bench(args, work)
    bench.nginx = bench_hits.find_server("nginx", ("nginx-light", "nginx"), install)
    bench.apache = bench_hits.find_server("apache2", ("apache2",), install)
    bench.proxpi = bench_hits.install_proxpi(benchdata.DATA) if install else None
    if bench.nginx:
        bench.notes.append(bench_hits.server_version([bench.nginx, "-v"], r"nginx/\S+") + " 1 worker")
    if bench.apache:
        bench.notes.append(
            bench_hits.server_version([bench.apache, "-v"], r"Apache/\S+") + " event, 1x25 threads"
        )
    if bench.proxpi:
        bench.notes.append(bench_hits.proxpi_versions(bench.proxpi) + " (gunicorn 1x2 threads)")
    help_text = subprocess.run([str(CACHEADDON), "run", "--help"], capture_output=True, text=True, timeout=60)
    bench.workers = "--workers" in help_text.stdout
    if not bench.workers:
        bench.notes.append("cacheaddon run has no --workers in this revision")
    if any(w in args.workloads for w in ("pip", "npm", "npm-large")):
        benchdata.prepare()
    procs: list[Process] = []
    servers: list[Server] = []
    try:
        benchlib.start_mitmdump("confdir-init", work, addon=False).stop()  # the CA, once
        origin_proc = benchlib.start_origin(work)
        procs.append(origin_proc)
        origin = f"http://{origin_proc.host}:{origin_proc.port}"
        if "hits" in args.workloads or "herd" in args.workloads:
            if bench.apache:
                servers.append(bench.apache_server())
            if bench.nginx:
                servers.append(bench.nginx_server())
            if bench.proxpi:
                servers.append(bench.proxpi_server(origin))
            servers.append(bench.bare(origin))
            ca = bench.cacheaddon(origin, name="cacheaddon endpoint")
            servers += [ca, Server("cacheaddon forward", [], ca.forward, ca.base, shares=ca)]
            if bench.workers:
                servers.append(bench.cacheaddon(origin, workers=2, name="cacheaddon workers=2"))
        if "hits" in args.workloads:
            hit_loads(bench, origin, servers)
        if "herd" in args.workloads:
            for server in servers:
                if server.name in ("apache", "nginx", "cacheaddon forward"):
                    herd(bench, origin, server, args.herd_rounds)
        for server in servers:
            server.stop()
        servers.clear()
        if any(w in args.workloads for w in ("pip", "npm", "npm-large")):
            index_port, files_port = benchlib.free_port(HOSTS[0]), benchlib.free_port(HOSTS[1])
            argv = [sys.executable, str(benchlib.ROOT / "scripts" / "benchdata.py"), "serve"]
            argv += ["--index", f"{HOSTS[0]}:{index_port}", "--files", f"{HOSTS[1]}:{files_port}"]
            registry = Process("registry", argv, work / "registry.log", HOSTS[0], index_port).start(
                timeout=120
            )
            procs.append(registry)
            installs(
                bench,
                (f"http://{HOSTS[0]}:{index_port}", f"http://{HOSTS[1]}:{files_port}"),
                args.rounds,
                args.large_rounds,
            )
        if "memory" in args.workloads:
            memory(bench)
    except Exception as exc:
        bench.failures.check(False, f"aborted: {type(exc).__name__}: {exc}")
    finally:
        for server in servers:
            server.stop()
        for proc in reversed(procs):
            proc.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(bench, started_at)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    md, png = args.out / f"bench-{stamp}.md", args.out / f"bench-{stamp}.png"
    png_note = ""
    try:
        chart(bench, png)
    except ImportError:
        png_note = "(no chart: matplotlib is not installed)"
    md.write_text(text + (f"\n![ratios]({png.name})\n" if png.exists() else ""))
    print("\n" + text)
    print(f"report: {md}" + (f", chart: {png}" if png.exists() else f" {png_note}"))
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
