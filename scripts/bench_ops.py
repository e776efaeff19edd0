"""How long the operator commands take on a real cache: `stats`, `ls` and `verify` on a cache of N entries
(default 10,000) filled by real requests through the proxy, and `bundle create` / `bundle import` of a
recorded build of S bytes (default 1 GiB) of package files.

    scripts/bench ops [--entries N] [--entry-size 4k] [--bundle-size 1g] [--rounds 3] [--skip-bundle]

Everything runs on loopback: the benchmarks' origin on 127.0.0.2, one `mitmdump -s cacheaddon/addon.py`.
Asserts what the commands report (entry counts, healthy verify, imported sizes), never timings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

CACHEADDON = benchlib.ROOT / ".venv" / "bin" / "cacheaddon"
FILL_DEADLINE = 900.0  # seconds: the fill gives up (and fails) rather than run on
CLIENTS = 8


def fill(proxy: str, origin: str, paths: list[str], deadline: float) -> int:
    """GETs every path through the proxy (8 clients); returns the bytes received. Raises on a failure."""

    def one(client: httpx.Client, path: str) -> int:
        if time.monotonic() > deadline:
            raise RuntimeError("fill deadline passed")
        response = client.get(origin + path)
        if response.status_code != 200 or response.headers.get("x-cache") != "MISS":
            raise RuntimeError(f"{path}: {response.status_code} {response.headers.get('x-cache')}")
        return len(response.content)

    clients = [httpx.Client(proxy=proxy, trust_env=False, timeout=120) for _ in range(CLIENTS)]
    try:
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            jobs = [pool.submit(one, clients[i % CLIENTS], path) for i, path in enumerate(paths)]
            return sum(job.result() for job in jobs)
    finally:
        for client in clients:
            client.close()


def timed(argv: list[str], rounds: int) -> tuple[float, str]:
    """Median wall time of `cacheaddon ARGV` over `rounds` runs, and the last run's stdout."""
    times, out = [], ""
    for _ in range(rounds):
        start = time.monotonic()
        done = subprocess.run([str(CACHEADDON), *argv], capture_output=True, text=True, timeout=3600)
        times.append(time.monotonic() - start)
        if done.returncode != 0:
            raise RuntimeError(f"cacheaddon {' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
        out = done.stdout
    return benchlib.median(times), out


def cache_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def bench_inventory(work: Path, origin: benchlib.Process, args: argparse.Namespace) -> list[list[object]]:
    cache = work / "cache-inventory"
    proxy = benchlib.start_mitmdump("proxy-inventory", work, addon=True, cache_dir=cache)
    base = f"http://{origin.host}:{origin.port}"
    paths = [benchlib.data_path(args.entry_size, f"pkg-{i:05d}.tar.gz") for i in range(args.entries)]
    start = time.monotonic()
    try:
        received = fill(f"http://127.0.0.1:{proxy.port}", base, paths, time.monotonic() + FILL_DEADLINE)
    finally:
        proxy.stop()
    fill_time = time.monotonic() - start
    print(
        f"filled {args.entries} entries ({benchlib.human_size(received)}) in {fill_time:.1f} s",
        file=sys.stderr,
    )
    rows: list[list[object]] = []
    for label, argv in (
        ("stats", ["stats", "--cache-dir", str(cache)]),
        ("stats --json", ["stats", "--json", "--cache-dir", str(cache)]),
        ("ls (plain, piped)", ["ls", "--cache-dir", str(cache)]),
        ("ls --json", ["ls", "--json", "--cache-dir", str(cache)]),
        ("ls PATTERN (100 of them)", ["ls", "*pkg-000*", "--cache-dir", str(cache)]),
        ("verify", ["verify", "--json", "--cache-dir", str(cache)]),
    ):
        seconds, out = timed(argv, args.rounds)
        if argv[:2] == ["stats", "--json"]:
            stats = json.loads(out)
            assert stats["entries"] == args.entries and stats["answers"]["MISS"] == args.entries, stats
        if argv[:2] == ["verify", "--json"]:
            report = json.loads(out)
            assert report["problems"] == [] and report["bodies_checked"] == args.entries, report
        rows.append([label, f"{args.entries} entries", f"{seconds:.2f} s"])
    return rows


def bench_bundle(work: Path, origin: benchlib.Process, args: argparse.Namespace) -> list[list[object]]:
    cache, record = work / "cache-bundle", work / "build.record"
    files = max(1, args.bundle_size // (64 * benchlib.MiB))
    size = args.bundle_size // files
    proxy = benchlib.start_mitmdump(
        "proxy-bundle", work, addon=True, cache_dir=cache, extra=["--set", f"cache_record={record}"]
    )
    base = f"http://{origin.host}:{origin.port}"
    try:
        fill(
            f"http://127.0.0.1:{proxy.port}",
            base,
            [benchlib.data_path(size, f"big-{i}.whl") for i in range(files)],
            time.monotonic() + FILL_DEADLINE,
        )
    finally:
        proxy.stop()
    rows: list[list[object]] = []
    out = work / "build.tar"
    seconds, text = timed(["bundle", "create", str(record), str(out), "--json", "--cache-dir", str(cache)], 1)
    created = json.loads(text)
    assert created["entries"] == files and created["bytes"] == files * size, created
    rows.append(
        ["bundle create", benchlib.human_size(files * size) + f" in {files} files", f"{seconds:.2f} s"]
    )
    target = work / "cache-imported"
    seconds, text = timed(["bundle", "import", str(out), "--json", "--cache-dir", str(target)], 1)
    imported = json.loads(text)
    assert imported["imported"] == files and imported["bytes"] == files * size, imported
    rows.append(["bundle import (empty cache)", benchlib.human_size(files * size), f"{seconds:.2f} s"])
    seconds, text = timed(["bundle", "import", str(out), "--json", "--cache-dir", str(target)], 1)
    assert json.loads(text)["kept"] == files
    rows.append(["bundle import (again: all kept)", benchlib.human_size(files * size), f"{seconds:.2f} s"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--entry-size", type=benchlib.parse_size, default=4096)
    parser.add_argument("--bundle-size", type=benchlib.parse_size, default=1024**3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-bundle", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cacheaddon-bench-ops-") as tmp:
        work = Path(tmp)
        needed = args.entries * args.entry_size * 2 + (0 if args.skip_bundle else 4 * args.bundle_size)
        if benchlib.disk_free(work) < needed:
            print(f"not enough free space in {work} (need {benchlib.human_size(needed)})", file=sys.stderr)
            return 1
        origin = benchlib.start_origin(work)
        try:
            rows = bench_inventory(work, origin, args)
            if not args.skip_bundle:
                rows += bench_bundle(work, origin, args)
        finally:
            origin.stop()
    print(f"operator commands; {benchlib.versions()}; medians of {args.rounds} runs")
    print(benchlib.table(["command", "on", "time"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
