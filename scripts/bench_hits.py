"""The hit path: latency and wall time of fetching warm files directly, through plain mitmdump, through
mitmdump + cacheaddon (every answer must be a HIT; its misses are measured too, on files never asked for) and,
when nginx is installed (or --with-nginx installs it), through nginx as a caching forward proxy.

Two sets of files from a local origin (default 500 x 20 KiB and 20 x 5 MiB), each fetched sequentially by one
keep-alive httpx client and by 8 concurrent clients (threads, one keep-alive connection each). Rounds are
interleaved across setups so that the machine's noise spreads over all of them; medians of one run are
reported, with ratios to plain mitmdump. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
import httpx
from benchlib import MiB, Process

TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=10.0, pool=10.0)


@dataclass(frozen=True)
class FileSet:
    name: str
    count: int
    size: int

    def paths(self, tag: str = "") -> list[str]:
        return [benchlib.data_path(self.size, f"{self.name}{tag}-{i:04d}.tar.gz") for i in range(self.count)]


@dataclass
class Setup:
    name: str
    proxy: str | None  # None: straight to the origin
    cache_header: str | None = None  # the response header that tells hit from miss
    expect: str | None = None  # what every measured answer's cache_header must start with
    fresh: bool = False  # every pass asks for files never asked for before (measures misses)
    proc: Process | None = None


@dataclass
class Pass:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    done: int = 0
    errors: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    timed_out: bool = False


class Client:
    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.http = httpx.Client(proxy=setup.proxy, trust_env=False, timeout=TIMEOUT)

    def get(self, url: str, size: int, result: Pass) -> None:
        start = time.perf_counter()
        try:
            response = self.http.get(url)
        except httpx.HTTPError as exc:
            result.errors.append(f"{url}: {type(exc).__name__}: {exc}")
            return
        elapsed = time.perf_counter() - start
        result.latencies.append(elapsed)
        result.done += 1
        if response.status_code != 200 or (size >= 0 and len(response.content) != size):
            result.errors.append(
                f"{url}: status {response.status_code}, {len(response.content)} of {size} bytes"
            )
        if self.setup.cache_header:
            result.statuses[response.headers.get(self.setup.cache_header, "-").split(" ")[0]] += 1

    def close(self) -> None:
        self.http.close()


def sequential(setup: Setup, urls: Sequence[str], size: int, timeout: float, warm_url: str) -> Pass:
    result, client = Pass(), Client(setup)
    deadline = time.monotonic() + timeout
    try:
        client.get(warm_url, -1, Pass())  # opens the keep-alive connection outside the measurement
        start = time.perf_counter()
        for url in urls:
            if time.monotonic() > deadline:
                result.timed_out = True
                break
            client.get(url, size, result)
    finally:
        client.close()
    result.wall = time.perf_counter() - start
    return result


def concurrent(
    setup: Setup, urls: Sequence[str], size: int, timeout: float, warm_urls: Sequence[str]
) -> Pass:
    """`workers` threads, each with its own keep-alive client, take the next URL until none is left."""
    result, lock = Pass(), threading.Lock()
    deadline = time.monotonic() + timeout
    workers = len(warm_urls)
    clients = [Client(setup) for _ in range(workers)]
    next_index = itertools.count()
    ready = threading.Barrier(workers + 1)

    def work(client: Client, warm_url: str) -> None:
        mine = Pass()
        client.get(warm_url, -1, Pass())  # opens the keep-alive connection outside the measurement
        try:
            ready.wait(60)
        except threading.BrokenBarrierError:
            return
        while (i := next(next_index)) < len(urls):
            if time.monotonic() > deadline:
                mine.timed_out = True
                break
            client.get(urls[i], size, mine)
        with lock:
            result.latencies += mine.latencies
            result.done += mine.done
            result.errors += mine.errors
            result.statuses += mine.statuses
            result.timed_out |= mine.timed_out

    threads = [
        threading.Thread(target=work, args=(c, u), daemon=True)
        for c, u in zip(clients, warm_urls, strict=True)
    ]
    try:
        for t in threads:
            t.start()
        try:
            ready.wait(60)
        except threading.BrokenBarrierError:
            result.errors.append("the clients did not all connect within 60s")
            return result
        start = time.perf_counter()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 30)
        result.wall = time.perf_counter() - start
    finally:
        for c in clients:
            c.close()
    return result


def warm(setup: Setup, origin: str, files: FileSet, timeout: float) -> None:
    """Fetches every file once (checking its sha256), then again until the cache answers all (bounded)."""
    urls = [origin + p for p in files.paths()]
    client = Client(setup)
    deadline = time.monotonic() + timeout
    try:
        for path, url in zip(files.paths(), urls, strict=True):
            response = client.http.get(url)
            expected = benchlib.expected_sha256(path, files.size)
            if response.status_code != 200 or _sha256(response.content) != expected:
                raise RuntimeError(f"{setup.name}: wrong answer for {url} ({response.status_code})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{setup.name}: warming {files.name} took more than {timeout:.0f}s")
        if setup.cache_header is None:
            return
        for _ in range(5):  # a streamed miss is committed just after its last byte: give it a moment
            check = sequential(setup, urls, files.size, max(1.0, deadline - time.monotonic()), urls[0])
            if check.statuses.get("HIT", 0) == len(urls) and not check.errors:
                return
            time.sleep(1)
        raise RuntimeError(f"{setup.name}: after warming {files.name}, not all HIT: {dict(check.statuses)}")
    finally:
        client.close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# nginx


def find_nginx(install: bool) -> str | None:
    found = _which_nginx()
    if found or not install:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing nginx with apt-get...", flush=True)
    subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL, timeout=300)
    for package in ("nginx-light", "nginx"):
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        if done.returncode == 0:
            break
    return _which_nginx()


def _which_nginx() -> str | None:
    # /usr/sbin may be missing from a non-root PATH
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:16m max_size=4g inactive=1d use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            # A forward proxy: the client sends absolute URLs; the origin is an IP, so no resolver is needed.
            proxy_pass http://$http_host$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_key $http_host$request_uri;
            proxy_cache_valid 200 1d;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(binary: str, work: Path, workers: int) -> Process:
    prefix = work / "nginx"
    prefix.mkdir()
    port = benchlib.free_port()
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, workers=workers, user=user))
    argv = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    return Process("nginx", argv, work / "nginx.log", "127.0.0.1", port).start()


# report


def fmt(value: float, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value != value else f"{value * scale:.{digits}f}"


def ratio(value: float, base: float) -> str:
    return "-" if not base or value != value or base != base else f"{value / base:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-count", type=int, default=500)
    parser.add_argument("--small-size", default="20k")
    parser.add_argument("--large-count", type=int, default=20)
    parser.add_argument("--large-size", default="5m")
    parser.add_argument("--rounds", type=int, default=3, help="measured passes per setup and mode, default 3")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--pass-timeout", type=float, default=120, help="seconds allowed per pass, default 120"
    )
    parser.add_argument("--quick", action="store_true", help="50 x 20k and 5 x 5m, one round: a smoke run")
    nginx_group = parser.add_mutually_exclusive_group()
    nginx_group.add_argument(
        "--with-nginx",
        action="store_true",
        help="install nginx with apt-get if it is missing (an installed nginx is always measured)",
    )
    nginx_group.add_argument("--no-nginx", action="store_true", help="do not measure nginx even if installed")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes, default 1")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches)")
    args = parser.parse_args(argv)
    if args.quick:
        args.small_count, args.large_count, args.rounds = 50, 5, 1
    sets = [
        FileSet("small", args.small_count, benchlib.parse_size(args.small_size)),
        FileSet("large", args.large_count, benchlib.parse_size(args.large_size)),
    ]
    modes = ["seq", f"conc{args.concurrency}"]

    nginx = None if args.no_nginx else find_nginx(install=args.with_nginx)
    if nginx is None and not args.no_nginx:
        why = "could not be installed" if args.with_nginx else "is not installed (--with-nginx installs it)"
        print(f"nginx {why}: measured without it", flush=True)

    print(benchlib.versions(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="cacheaddon-bench-hits-"))
    work.chmod(0o755)
    procs: list[Process] = []
    results: dict[tuple[str, str, str], list[Pass]] = {}
    setups: list[Setup] = []
    failures: list[str] = []
    try:
        origin_proc = benchlib.start_origin(work)
        procs.append(origin_proc)
        origin = f"http://{origin_proc.host}:{origin_proc.port}"
        plain = benchlib.start_mitmdump("mitmdump", work, addon=False)
        procs.append(plain)
        addon = benchlib.start_mitmdump("cacheaddon", work, addon=True, cache_dir=work / "cache")
        procs.append(addon)
        setups = [
            Setup("direct", None),
            Setup("mitmdump", f"http://127.0.0.1:{plain.port}", proc=plain),
            Setup("cacheaddon", f"http://127.0.0.1:{addon.port}", "x-cache", "HIT", proc=addon),
            Setup(
                "cacheaddon-miss", f"http://127.0.0.1:{addon.port}", "x-cache", "MISS", fresh=True, proc=addon
            ),
        ]
        if nginx is not None:
            ngx = start_nginx(nginx, work, args.nginx_workers)
            procs.append(ngx)
            setups.append(Setup("nginx", f"http://127.0.0.1:{ngx.port}", "x-cache-status", "HIT", proc=ngx))
        print(
            f"origin {origin}; setups: {', '.join(s.name for s in setups)}; warming "
            + ", ".join(f"{s.count} x {benchlib.human_size(s.size)}" for s in sets),
            flush=True,
        )
        for files in sets:
            for setup in setups:
                if not setup.fresh:
                    warm(setup, origin, files, 300)
        unique = itertools.count()
        for round_no in range(args.rounds):
            # Rotate the order every round, so that no setup always runs first (or just after another).
            order = setups[round_no % len(setups) :] + setups[: round_no % len(setups)]
            for files in sets:
                for mode in modes:
                    for setup in order:
                        tag = f"-miss{round_no}{mode}" if setup.fresh else ""
                        urls = [origin + p for p in files.paths(tag)]
                        # Connections open with files of their own when the measured ones must stay unseen.
                        warm_urls = [
                            origin + benchlib.data_path(1024, f"conn-{next(unique)}.bin")
                            if setup.fresh
                            else urls[0]
                            for _ in range(1 if mode == "seq" else args.concurrency)
                        ]
                        if mode == "seq":
                            p = sequential(setup, urls, files.size, args.pass_timeout, warm_urls[0])
                        else:
                            p = concurrent(setup, urls, files.size, args.pass_timeout, warm_urls)
                        results.setdefault((files.name, mode, setup.name), []).append(p)
                        if p.errors:
                            failures.append(f"{setup.name} {files.name} {mode}: {p.errors[0]}")
                        if p.timed_out:
                            failures.append(
                                f"{setup.name} {files.name} {mode}: pass stopped at --pass-timeout"
                            )
                        if setup.expect and p.statuses.get(setup.expect, 0) != p.done:
                            failures.append(
                                f"{setup.name} {files.name} {mode}: not all {setup.expect}: "
                                f"{dict(p.statuses)}"
                            )
            print(f"round {round_no + 1}/{args.rounds} done", flush=True)
        rss = {
            s.proc.name: benchlib.proc_status_kb(s.proc.pid, "VmHWM") for s in setups if s.proc is not None
        }
    finally:
        for proc in reversed(procs):
            proc.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = []
    summary = []
    for files in sets:
        for mode in modes:
            base = results.get((files.name, mode, "mitmdump"), [])
            base_med = benchlib.median([x for p in base for x in p.latencies])
            base_wall = benchlib.median([p.wall for p in base])
            for setup in setups:
                passes = results.get((files.name, mode, setup.name), [])
                lat = [x for p in passes for x in p.latencies]
                wall = benchlib.median([p.wall for p in passes])
                done = benchlib.median([p.done for p in passes])
                med, p90 = benchlib.median(lat), benchlib.percentile(lat, 0.9)
                p99, worst = benchlib.percentile(lat, 0.99), max(lat, default=float("nan"))
                rows.append(
                    [
                        f"{files.count} x {benchlib.human_size(files.size)}",
                        mode,
                        setup.name,
                        fmt(med, 1000, 3),
                        fmt(p90, 1000, 1),
                        fmt(p99, 1000, 1),
                        fmt(worst, 1000, 1),
                        fmt(wall, 1, 3),
                        fmt(done / wall if wall else float("nan"), 1, 0),
                        fmt(done * files.size / MiB / wall if wall else float("nan"), 1, 0),
                        ratio(med, base_med),
                        ratio(wall, base_wall),
                    ]
                )
                summary.append(
                    f"hits {files.name} {mode} {setup.name} median_ms={fmt(med, 1000, 3)} "
                    f"p99_ms={fmt(p99, 1000, 1)} wall_s={fmt(wall, 1, 3)} "
                    f"wall_vs_mitmdump={ratio(wall, base_wall)}"
                )
    print()
    print(
        benchlib.table(
            [
                "files",
                "mode",
                "setup",
                "median_ms",
                "p90_ms",
                "p99_ms",
                "max_ms",
                "wall_s",
                "req/s",
                "MiB/s",
                "median/mitm",
                "wall/mitm",
            ],
            rows,
        )
    )
    print(
        f"\nmedian_ms, p90_ms, p99_ms, max_ms: per-request latency over all {args.rounds} round(s); wall_s: "
        f"median over rounds of the time to fetch the whole set; ratios: to plain mitmdump"
        f" (no addon, default options). Client, proxies and origin share {os.cpu_count()} cores."
        + (f" nginx: {args.nginx_workers} worker(s), proxy_cache, sendfile on." if nginx else "")
    )
    print("peak RSS (VmHWM) over the run: " + ", ".join(f"{k}={v / 1024:.0f} MB" for k, v in rss.items()))
    for line in summary:
        print(line)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
