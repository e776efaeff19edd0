"""Concurrent misses of one file: how many upstream requests they make, and how long the last client waits
compared with a lone client's miss (issue 7: 8 concurrent misses of a 5 MB file with 200 ms upstream latency
make 1 upstream request, all 8 bodies identical, the last client done within 1.5x of a lone client's time).

    .venv/bin/python scripts/bench_flight.py [--clients 8] [--size 5m] [--latency 0.2] [--rounds 3]

Starts its own origin on 127.0.0.2 (waits `latency` before each answer, counts requests by path) and
mitmdump with the addon (one process, then two on one cache_dir), and runs curl as the clients (a C client:
the clients' own cost stays out of the figures). Each round asks for a new file, so each is a cold miss.
Prints medians of the rounds; exits 1 when a round made more than one upstream request or a body differed.
Everything binds loopback and every wait is bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = ROOT / ".venv" / "bin" / "mitmdump"
ADDON = ROOT / "cacheaddon" / "addon.py"
ORIGIN_HOST = "127.0.0.2"
TIMEOUT = 60.0  # seconds any client or start-up may take


class Origin(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, size: int, latency: float) -> None:
        self.size, self.latency = size, latency
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.bodies: dict[str, bytes] = {}
        super().__init__((ORIGIN_HOST, 0), Handler)

    def body(self, path: str) -> bytes:
        with self.lock:
            if path not in self.bodies:
                self.bodies[path] = hashlib.shake_256(path.encode()).digest(self.size)
            return self.bodies[path]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Origin

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests[self.path] += 1
        body = self.server.body(self.path)
        time.sleep(self.server.latency)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_proxy(cache_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [
        str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", str(port), "-s", str(ADDON),
        "--set", f"cache_dir={cache_dir}", "--set", f"cache_hosts={ORIGIN_HOST}",
        "--set", "connection_strategy=lazy", "--set", "flow_detail=0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mitmdump exited with {proc.returncode}: see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    stop(proc)
    sys.exit(f"mitmdump did not listen within {TIMEOUT:g} s: see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def clients(ports: list[int], url: str, count: int, outdir: Path) -> tuple[float, list[str]]:
    """`count` curls started together, spread over the proxies; (seconds until the last one is done, the
    sha256 of each body)."""
    outs = [outdir / f"body-{i}" for i in range(count)]
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            ["curl", "-sS", "--fail", "--noproxy", "", "-x", f"http://127.0.0.1:{ports[i % len(ports)]}",
             "-H", "Accept-Encoding: identity", "-o", str(out), url],
        )  # fmt: skip
        for i, out in enumerate(outs)
    ]
    for proc in procs:
        if proc.wait(TIMEOUT) != 0:
            sys.exit(f"a client failed (curl exit {proc.returncode}) for {url}")
    elapsed = time.monotonic() - start
    digests = [hashlib.sha256(out.read_bytes()).hexdigest() for out in outs]
    for out in outs:
        out.unlink()
    return elapsed, digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", default="5m", help="body size (k/m suffix)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds before the origin answers")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    unit = {"k": 1024, "m": 1024 * 1024}.get(args.size[-1:].lower(), 1)
    size = int(args.size.rstrip("kKmM")) * unit

    origin = Origin(size, args.latency)
    threading.Thread(target=origin.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://{ORIGIN_HOST}:{origin.server_address[1]}"
    ok = True
    rows: list[tuple[str, float, int, bool]] = []
    with tempfile.TemporaryDirectory(prefix="bench-flight-") as tmp:
        work = Path(tmp)
        cache_dir = work / "cache"
        procs = [start_proxy(cache_dir, work / f"mitmdump-{i}.log") for i in range(2)]
        try:
            ports = [port for _, port in procs]
            scenarios = [
                ("lone client, one process", ports[:1], 1),
                (f"{args.clients} clients, one process", ports[:1], args.clients),
                (f"{args.clients} clients, two processes on one cache_dir", ports, args.clients),
            ]
            for name, used, count in scenarios:
                times, asked, same = [], 0, True
                for round_ in range(args.rounds):
                    path = f"/files/{len(rows)}-{round_}-{time.monotonic_ns()}.tar.gz"
                    elapsed, digests = clients(used, base + path, count, work)
                    expected = hashlib.sha256(origin.body(path)).hexdigest()
                    times.append(elapsed)
                    asked = max(asked, origin.requests[path])
                    same = same and all(d == expected for d in digests)
                rows.append((name, statistics.median(times), asked, same))
                ok = ok and asked == 1 and same
        finally:
            for proc, _ in procs:
                stop(proc)
            origin.shutdown()

    lone = rows[0][1]
    print(f"{args.clients} concurrent misses of one {size // 1024} KiB file, upstream latency "
          f"{args.latency * 1000:.0f} ms, median of {args.rounds} rounds (curl clients)\n")  # fmt: skip
    print("| scenario | last client done | x lone client | upstream requests (max) | bodies identical |")
    print("|---|---|---|---|---|")
    for name, median, asked, same in rows:
        same_text = "yes" if same else "NO"
        print(f"| {name} | {median * 1000:.0f} ms | {median / lone:.2f} | {asked} | {same_text} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
