"""Peak RSS (VmHWM) of mitmdump while one large body streams through it, each scenario in a fresh process.

Scenarios: cold_miss (addon, empty cache: streamed to the client while written to the cache); cached_hit
(addon, a new process on the same cache: served from disk through the relay); plain_buffered (mitmdump without
the addon, default settings: mitmproxy holds the whole body); plain_streamed (without the addon,
stream_large_bodies=1m, for reference). Every download is checked for its exact length and sha256. Timings are
one run on a noisy machine: read them as rough figures.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
import httpx
from benchlib import MiB, Process

# One small request before the baseline reading, so that one-off start-up allocations are not counted.
WARM_SIZE = 4096


@dataclass
class Fetch:
    status: int = 0
    x_cache: str = "-"
    size: int = 0
    sha256: str = ""
    ttfb: float = float("nan")
    total: float = float("nan")
    error: str = ""


@dataclass
class Result:
    scenario: str
    proxy: str
    size: int
    expect_cache: str | None
    idle_kb: int = 0
    before_kb: int = 0
    peak_kb: int = 0
    end_kb: int = 0
    fetch: Fetch = field(default_factory=Fetch)
    ok: bool = False
    note: str = ""

    @property
    def delta_kb(self) -> int:
        return self.peak_kb - self.before_kb


def fetch(proxy: str, url: str, deadline: float, method: str = "GET") -> Fetch:
    """Downloads url through the proxy, hashing as it reads; stops by itself at `deadline` (monotonic)."""
    out = Fetch()
    timeout = httpx.Timeout(connect=10.0, read=180.0, write=10.0, pool=10.0)
    start = time.monotonic()
    digest = hashlib.sha256()
    try:
        with httpx.Client(proxy=proxy, trust_env=False, timeout=timeout) as client:
            with client.stream(method, url) as response:
                out.ttfb = time.monotonic() - start
                out.status, out.x_cache = response.status_code, response.headers.get("x-cache", "-")
                for chunk in response.iter_raw(MiB):
                    digest.update(chunk)
                    out.size += len(chunk)
                    if time.monotonic() > deadline:
                        out.error = "deadline reached"
                        break
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.total = time.monotonic() - start
    out.sha256 = digest.hexdigest()
    return out


def wait_stored(proxy: str, url: str, timeout: float) -> bool:
    """True once a HEAD through the addon is answered from the cache (the streamed body was committed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fetch(proxy, url, deadline, "HEAD").x_cache.startswith("HIT"):
            return True
        time.sleep(0.5)
    return False


def run_scenario(result: Result, proc: Process, origin: str, sha: str, args: argparse.Namespace) -> Result:
    """Measures one download through `proc` (the caller stops it)."""
    proxy = f"http://127.0.0.1:{proc.port}"
    path = benchlib.data_path(result.size, "blob.bin")
    deadline = time.monotonic() + args.timeout
    time.sleep(0.5)
    result.idle_kb = benchlib.proc_status_kb(proc.pid, "VmHWM")
    warm = fetch(proxy, origin + benchlib.data_path(WARM_SIZE, "warm.bin"), deadline)
    if warm.error or warm.size != WARM_SIZE:
        result.note = f"warm-up request failed: {warm.error or warm.size}"
        return result
    result.before_kb = benchlib.proc_status_kb(proc.pid, "VmHWM")
    with benchlib.RssSampler(proc.pid, 0.1, args.rss_cap // 1024, proc.kill) as sampler:
        result.fetch = fetch(proxy, origin + path, deadline)
    if sampler.tripped:
        result.peak_kb = sampler.max_kb
        result.note = f"killed: RSS passed --rss-cap ({benchlib.human_size(args.rss_cap)})"
        return result
    result.peak_kb = benchlib.proc_status_kb(proc.pid, "VmHWM")
    result.end_kb = benchlib.proc_status_kb(proc.pid, "VmRSS")
    f = result.fetch
    problems = []
    if f.error:
        problems.append(f.error)
    if f.status != 200:
        problems.append(f"status {f.status}")
    if f.size != result.size:
        problems.append(f"received {f.size} of {result.size} bytes")
    elif f.sha256 != sha:
        problems.append("sha256 mismatch")
    if result.expect_cache and not f.x_cache.startswith(result.expect_cache):
        problems.append(f"X-Cache is {f.x_cache!r}, expected {result.expect_cache}")
    if result.expect_cache == "MISS" and not problems and not wait_stored(proxy, origin + path, 60):
        problems.append("body was not stored within 60s after the download")
    result.ok = not problems
    result.note = "; ".join(problems)
    return result


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1g", help="body size (k/m/g suffix), default 1g")
    parser.add_argument(
        "--plain-size",
        default=None,
        help="body size for plain_buffered (mitmproxy holds it in memory); default: --size",
    )
    parser.add_argument(
        "--rss-cap",
        default="6g",
        help="kill a proxy whose RSS passes this (protects the machine from plain_buffered), default 6g",
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds allowed per download, default 600"
    )
    parser.add_argument(
        "--scenarios",
        default="cold_miss,cached_hit,plain_buffered,plain_streamed",
        help="comma-separated subset to run (cached_hit needs cold_miss before it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, cache)")
    args = parser.parse_args(argv)
    size = benchlib.parse_size(args.size)
    plain_size = benchlib.parse_size(args.plain_size) if args.plain_size else size
    args.rss_cap = benchlib.parse_size(args.rss_cap)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]

    work = Path(tempfile.mkdtemp(prefix="cacheaddon-bench-memory-"))
    if benchlib.disk_free(work) < 2 * size + 1024 * MiB:
        print(f"not enough free disk in {work} for {benchlib.human_size(size)}", file=sys.stderr)
        return 2
    print(benchlib.versions(), flush=True)
    print(f"work directory {work}; computing the expected sha256 of the bodies...", flush=True)
    shas = {n: benchlib.expected_sha256(benchlib.data_path(n, "blob.bin"), n) for n in {size, plain_size}}
    cache_dir = work / "cache"
    addon_extra = ["--set", "cache_max_object_size=2g"]
    results: list[Result] = []
    origin_proc = None
    try:
        origin_proc = benchlib.start_origin(work)
        origin = f"http://{origin_proc.host}:{origin_proc.port}"
        # mitmproxy creates its CA in the confdir at first start: do that once, outside any measured process.
        benchlib.start_mitmdump("confdir-init", work, addon=False).stop()
        plans = {
            "cold_miss": ("addon", True, [], size, "MISS"),
            "cached_hit": ("addon", True, [], size, "HIT"),
            "plain_buffered": ("plain", False, [], plain_size, None),
            "plain_streamed": (
                "plain stream_large_bodies=1m",
                False,
                ["--set", "stream_large_bodies=1m"],
                size,
                None,
            ),
        }
        for name in wanted:
            label, addon, extra, n, expect = plans[name]
            print(f"running {name} ({benchlib.human_size(n)} through {label})...", flush=True)
            proc = benchlib.start_mitmdump(
                name, work, addon=addon, cache_dir=cache_dir, extra=[*extra, *(addon_extra if addon else [])]
            )
            try:
                results.append(run_scenario(Result(name, label, n, expect), proc, origin, shas[n], args))
            finally:
                proc.stop()
    finally:
        if origin_proc is not None:
            origin_proc.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = []
    for r in results:
        f = r.fetch
        rate = r.size / MiB / f.total if f.total and f.total == f.total and f.size == r.size else float("nan")
        rows.append(
            [
                r.scenario,
                r.proxy,
                benchlib.human_size(r.size),
                f.x_cache.split(" ")[0],
                "yes" if r.ok else "NO",
                mb(r.idle_kb),
                mb(r.before_kb),
                mb(r.peak_kb),
                mb(r.delta_kb),
                mb(r.end_kb),
                f"{f.ttfb:.2f}",
                f"{f.total:.2f}",
                f"{rate:.0f}",
            ]
        )
    print()
    print(
        benchlib.table(
            [
                "scenario",
                "proxy",
                "body",
                "x-cache",
                "ok",
                "idle_MB",
                "before_MB",
                "peak_MB",
                "delta_MB",
                "end_rss_MB",
                "ttfb_s",
                "total_s",
                "MiB/s",
            ],
            rows,
        )
    )
    print(
        "\nidle_MB: VmHWM right after start; before_MB: VmHWM after one 4 KiB request; peak_MB: VmHWM after"
        " the download; delta = peak - before; end_rss_MB: VmRSS after the download. One run each."
    )
    for r in results:
        if r.note:
            print(f"note {r.scenario}: {r.note}")
    for r in results:
        print(
            f"memory {r.scenario} peak_rss_mb={mb(r.peak_kb)} delta_mb={mb(r.delta_kb)} "
            f"idle_rss_mb={mb(r.idle_kb)} body_mb={r.size // MiB} seconds={r.fetch.total:.2f} "
            f"ok={'yes' if r.ok else 'no'}"
        )
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
