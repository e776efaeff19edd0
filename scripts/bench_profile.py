"""Where a hit's time goes: py-spy samples `cacheaddon run` while wrk asks it for one cached URL again and
again, and the samples are summed by component (mitmproxy's layers, its hook dispatch and default addons, our
lookup and SQLite, record decoding, hashing, Response building, link rewriting, the relay, logging...).

Loads (each for --seconds, 8 connections): a 36 KB index page with absolute links through the registry
endpoint (rewritten on every hit) and through the forward proxy, and a 5 MB file through the endpoint. py-spy
needs ptrace: run as root (or with CAP_SYS_PTRACE). Writes each profile's raw collapsed stacks (flamegraph.pl
input) to the output directory and prints the summary tables; nothing is asserted about timings, but every
load must be answered from the cache (X-Cache HIT, the origin asked nothing during it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import benchlib
import benchload
import httpx

# First rule that matches a frame, walking from the innermost frame outwards, names the sample's component.
# Frames look like "function (path/to/file.py:line)".
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("thread hop (executor)", ("concurrent/futures/", "_write_to_self", "_read_from_self", "threading.py")),
    ("logging", ("logging/__init__.py", "mitmproxy/log.py", "addons/termlog.py", "addons/dumper.py")),
    ("hashing", ("hashlib", "_read_hashed", "check_body", "verify_whole", "_known_good")),
    ("record decode (json)", ("json/decoder.py", "json/__init__.py", "cacheaddon/entry.py")),
    ("lookup + SQLite (diskcache)", ("diskcache/", "cacheaddon/store.py", "sqlite3")),
    ("endpoint link rewriting", ("cacheaddon/rewrite.py", "endpoint.py", "cacheaddon/decoding.py")),
    ("loopback relay", ("cacheaddon/relay.py",)),
    ("Response building", ("cacheaddon/responses.py", "mitmproxy/http.py")),
    ("cacheaddon policy", ("cacheaddon/policy.py", "cacheaddon/settings.py", "cacheaddon/access.py")),
    ("cacheaddon service + hooks", ("cacheaddon/",)),
    ("mitmproxy default addons", ("mitmproxy/addons/",)),
    ("mitmproxy hook dispatch", ("mitmproxy/addonmanager.py", "mitmproxy/hooks.py")),
    ("mitmproxy layers + connections", ("mitmproxy/proxy/", "mitmproxy/net/", "mitmproxy/connection.py")),
    ("HTTP/1 parsing + assembly", ("h11", "mitmproxy/coretypes/", "mitmproxy/utils/")),
    ("asyncio + sockets", ("asyncio/", "selectors.py", "ssl.py", "socket.py")),
)


# Matched only when no frame of the stack matches a rule above: a socket write on behalf of the relay is the
# relay's cost, one on behalf of mitmproxy's layers is the platform's.
GENERIC = (
    "mitmproxy hook dispatch",
    "mitmproxy layers + connections",
    "HTTP/1 parsing + assembly",
    "asyncio + sockets",
)


def component(stack: str) -> str:
    frames = stack.split(";")
    # The event loop's thread starts in cli.py: only what the loop runs says where the time goes.
    loop = [i for i, f in enumerate(frames) if f.startswith("BaseEventLoop._run_once ")]
    frames = frames[loop[-1] :] if loop else frames
    for tier in (False, True):
        for frame in reversed(frames):
            for name, patterns in RULES:
                if (name in GENERIC) == tier and any(p in frame for p in patterns):
                    return name
    return "other"


def summarize(raw: Path) -> tuple[Counter[str], int, int]:
    """Samples per component, in all, and in the event loop's thread (the others are executor threads)."""
    counts: Counter[str] = Counter()
    total = loop = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        counts[component(stack)] += int(n)
        total += int(n)
        if "_bootstrap (threading.py" not in stack:
            loop += int(n)
    return counts, total, loop


def top_functions(raw: Path, limit: int = 15) -> list[tuple[str, int]]:
    """Innermost frames with the most samples ("self" time)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            counts[stack.split(";")[-1]] += int(n)
    return counts.most_common(limit)


def profile_load(
    pid: int, out: Path, name: str, connect: str, target: str, host: str, seconds: float, work: Path
) -> tuple[benchload.WrkResult, Path]:
    raw = out / f"{name}.txt"
    spy = subprocess.Popen(
        [
            str(benchlib.ROOT / ".venv" / "bin" / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    try:
        result = benchload.run_wrk(connect, target, host, work, seconds=seconds)
    finally:
        try:
            _, err = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate(timeout=10)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-400:]}")
    return result, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="per load, default 15")
    parser.add_argument("--out", type=Path, default=None, help="where to keep the raw profiles")
    parser.add_argument("--extra", action="append", default=[], help="extra argument for cacheaddon run")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cacheaddon-bench-profile-"))
    out = args.out or work / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    procs: list[benchlib.Process] = []
    failures: list[str] = []
    reports: list[str] = []
    try:
        origin_proc = benchlib.start_origin(work)
        procs.append(origin_proc)
        origin = f"http://{origin_proc.host}:{origin_proc.port}"
        port, endpoint_port = benchlib.free_port(), benchlib.free_port()
        argv = [
            str(benchlib.ROOT / ".venv" / "bin" / "cacheaddon"),
            "run",
            "-p",
            str(port),
            "--registry",
            f"{origin}@{endpoint_port}",
            "--set",
            f"confdir={work / 'conf'}",
            "--set",
            f"cache_dir={work / 'cache'}",
            "--set",
            f"cache_hosts={benchlib.ORIGIN_HOST}",
            *args.extra,
        ]
        proxy = benchlib.Process("cacheaddon", argv, work / "cacheaddon.log", "127.0.0.1", endpoint_port)
        procs.append(proxy.start(timeout=60))
        page = "/abs" + benchlib.INDEX_PAGE
        big = benchlib.data_path(5 * benchlib.MiB, "profile-5m.tar.gz")
        endpoint = f"http://127.0.0.1:{endpoint_port}"
        forward = f"http://127.0.0.1:{port}"
        loads = [
            ("index-endpoint", endpoint, page, f"127.0.0.1:{endpoint_port}"),
            ("index-forward", forward, origin + page, origin.removeprefix("http://")),
            ("5m-endpoint", endpoint, big, f"127.0.0.1:{endpoint_port}"),
        ]
        for name, connect, target, host in loads:
            proxy_url = forward if connect == forward else None
            url = target if proxy_url else connect + target
            with httpx.Client(proxy=proxy_url, trust_env=False, timeout=60) as client:
                for _ in range(3):
                    answer = client.get(url)
            if answer.status_code != 200 or answer.headers.get("x-cache", "").split(" ")[0] != "HIT":
                failures.append(f"{name}: not a HIT after warming: {answer.status_code} {answer.headers}")
                continue
            before = benchlib.origin_requests(origin)
            result, raw = profile_load(proxy.pid, out, name, connect, target, host, args.seconds, work)
            if benchlib.origin_requests(origin) != before:
                failures.append(f"{name}: the origin was asked during the load")
            if result.non_2xx or result.socket_errors:
                failures.append(f"{name}: {result.non_2xx} non-2xx answers, {result.socket_errors} errors")
            counts, total, loop = summarize(raw)
            rows = [[c, n, f"{100 * n / total:.1f}%"] for c, n in counts.most_common()] if total else []
            text = (
                f"## {name}: {result.rate:.0f} req/s, {result.mb_per_s:.0f} MB/s over {result.seconds:.0f}s "
                f"({len(answer.content)} bytes per answer); {total} samples of cacheaddon's busy threads, "
                f"{100 * loop / max(total, 1):.0f}% of them in the event loop's thread\n\n"
                + benchlib.table(["component", "samples", "share"], rows)
                + "\n\ninnermost frames:\n"
                + "\n".join(f"  {n:6d}  {frame}" for frame, n in top_functions(raw))
            )
            reports.append(text)
            print(text + "\n", flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "cache", ignore_errors=True)
    print(f"raw profiles in {out}" if args.out else "raw profiles removed (--out keeps them)")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
