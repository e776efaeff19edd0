"""Shared helpers of the benchmarks: ports, processes started and stopped by PID, a streaming origin server,
peak RSS from /proc, medians and a plain-text table.

Also runnable: `python scripts/benchlib.py origin --host 127.0.0.2 --port N` serves the origin until killed.
The origin answers GET/HEAD /data/<size>/<name> (size in bytes or with a k/m/g suffix) with <size> bytes that
depend only on the path, generated block by block: a 1 GiB body never sits in memory. It is also a PEP 503
simple index, for index proxies such as proxpi: /simple/<prefix>-<count>x<size>/ (with or without the final
slash) lists the files /data/<size>/<prefix>-0000.tar.gz ... with their sha256, and /simple/ is an empty
project list (projects are named, not listed). GET /_requests answers how many requests the origin has
served, not counting itself: a benchmark checks with it that a pass of cache hits never reached the origin;
GET /_requests?path=P how many of them asked for path P. /abs/simple/<project>/ is the same page with absolute
links (http://HOST:PORT/data/..., as the real registries link their files), which endpoints rewrite. A path
under /slow/<ms>/ is answered like the rest of it after a pause of <ms> milliseconds before the headers (an
upstream far away).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import html
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = ROOT / ".venv" / "bin" / "mitmdump"
ADDON = ROOT / "cacheaddon" / "addon.py"
ORIGIN_HOST = "127.0.0.2"  # in cache_hosts; never 127.0.0.1, so NO_PROXY=127.0.0.1 cannot bypass the proxy
BLOCK = 1024 * 1024
MiB = 1024 * 1024

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# Clients of the benchmarks must not pick up the machine's proxy settings.
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def parse_size(text: str) -> int:
    text = text.strip().lower()
    unit = text[-1] if text and text[-1] in "bkmg" else ""
    return int(text[: len(text) - len(unit)]) * _UNITS[unit]


def human_size(n: int) -> str:
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


# deterministic bodies


@functools.lru_cache(maxsize=64)
def _block(path: str, length: int) -> bytes:
    return hashlib.shake_256(path.encode()).digest(length)


def body_chunks(path: str, size: int) -> Iterator[bytes]:
    """The body of `path`: one pseudo-random block (at most 1 MiB) repeated, then cut to `size`."""
    block = _block(path, min(size, BLOCK))
    full, rest = divmod(size, len(block)) if block else (0, 0)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


def data_path(size: int, name: str) -> str:
    return f"/data/{size}/{name}"


def expected_sha256(path: str, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in body_chunks(path, size):
        digest.update(chunk)
    return digest.hexdigest()


# the simple index (PEP 503)

_PROJECT = re.compile(r"^([a-z0-9][a-z0-9.-]*)-([0-9]+)x([0-9]+)$")
SIMPLE_MAX_FILES = 10_000


def project_name(prefix: str, count: int, size: int) -> str:
    """The simple-index project that lists `count` files of `size` bytes named `prefix`-NNNN.tar.gz."""
    name = f"{prefix}-{count}x{size}"
    assert _PROJECT.match(name), name
    return name


def project_files(project: str) -> list[tuple[str, str, int]]:
    """(file name, origin path, size) of each file that `project` lists; [] for a name not of that form."""
    match = _PROJECT.match(project)
    if not match or int(match[2]) > SIMPLE_MAX_FILES:
        return []
    prefix, count, size = match[1], int(match[2]), int(match[3])
    names = [f"{prefix}-{i:04d}.tar.gz" for i in range(count)]
    return [(name, data_path(size, name), size) for name in names]


# Room for every page of a default run (100 warm pages, 100 new ones per miss pass: 700), so that a warm page
# is never built again while measured (building one hashes its files: milliseconds).
@functools.lru_cache(maxsize=4096)
def simple_page(project: str, base: str = "") -> bytes | None:
    """The origin's PEP 503 page of `project` (deterministic: benchmarks compare its sha256), or None; links
    are relative, or absolute when `base` (http://host:port) is given."""
    files = project_files(project)
    if not files:
        return None
    links = "".join(
        f'<a href="{html.escape(base + path)}#sha256={expected_sha256(path, size)}">{html.escape(name)}</a>'
        "<br/>\n"
        for name, path, size in files
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
        f"<title>Links for {project}</title></head>\n"
        f"<body><h1>Links for {project}</h1>\n{links}</body></html>\n"
    ).encode()


# The benchmarks' index page: 224 files, about 36 KB with absolute links (PyPI's pages for popular projects
# are this size and larger).
INDEX_PAGE = "/simple/" + project_name("index", 224, 20480) + "/"

# Fresh for a day like the files (PyPI says 10 minutes): nginx and Apache follow it, and none of the caches
# measured may go back to the origin during a run.
PAGE_CACHE_CONTROL = "public, max-age=86400"
SIMPLE_ROOT = (
    b'<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
    b"<title>Simple index</title></head><body></body></html>\n"
)


# the origin server

_served_lock = threading.Lock()
_served_total = 0  # requests served, GET /_requests excepted
_served_paths: Counter[str] = Counter()


def _count_request(path: str) -> None:
    global _served_total
    with _served_lock:
        _served_total += 1
        _served_paths[path] += 1


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a registry
    disable_nagle_algorithm = True  # else the body waits 40 ms for the ACK of the headers (delayed ACK)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _document(self, body: bytes, content_type: str, cache_control: str) -> bytes:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache_control)
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        self.end_headers()
        return body

    def _head(self) -> int | bytes | None:
        """Sends the headers; returns the size of a /data body, the bytes of any other body, or None."""
        path, _, query = self.path.partition("?")
        if path == "/_requests":
            with _served_lock:
                total = _served_paths[query[5:]] if query.startswith("path=") else _served_total
            return self._document(f"{total}\n".encode(), "text/plain", "no-store")
        _count_request(path)
        if (slow := re.match(r"^/slow/([0-9]{1,5})(/.*)$", path)) is not None:
            time.sleep(int(slow[1]) / 1000)
            path = slow[2]
        base = ""
        if path.startswith("/abs/simple/"):
            host, port = self.server.server_address[:2]
            base, path = f"http://{host}:{port}", path.removeprefix("/abs")
        self._body_path = path
        parts = path.split("/")
        if path == "/simple/":
            return self._document(SIMPLE_ROOT, "text/html", PAGE_CACHE_CONTROL)
        if len(parts) in (3, 4) and parts[1] == "simple" and parts[3:] in ([], [""]):
            page = simple_page(parts[2], base)
            if page is not None:
                return self._document(page, "text/html", PAGE_CACHE_CONTROL)
        if len(parts) != 4 or parts[1] != "data":
            self.send_error(404)
            return None
        try:
            size = parse_size(parts[2])
        except (ValueError, KeyError):
            self.send_error(400, "bad size")
            return None
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "public, max-age=86400")
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        self.end_headers()
        return size

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        size = self._head()
        if size is None:
            return
        try:
            if isinstance(size, bytes):
                self.wfile.write(size)
                return
            for chunk in body_chunks(self._body_path, size):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def serve_origin(host: str, port: int) -> None:
    server = _Server((host, port), _OriginHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


# ports and processes


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now that this process has not handed out before: the kernel may give a port
    that was just closed to the next bind at once, so two calls in a row could otherwise get the same one."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError(f"no free port on {host} that was not handed out already")


def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Returns once host:port accepts connections; raises if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout:.0f}s (pid {proc.pid})")


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of `pid`, from /proc (empty when it has none or is gone)."""
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo and len(found) < 10_000:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                start = _start_time(child)
                if start is not None:
                    found.append((child, start))
                    todo.append(child)
    return found


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime: tells a reused PID apart
    except (OSError, IndexError):
        return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by `pid` and its live descendants: on a shared machine, what a
    server spends per answer is steadier than how many answers it manages."""
    total = 0.0
    for p in [pid, *(child for child, _ in descendants(pid))]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_hwm_kb(pid: int) -> int:
    """VmHWM of `pid` plus that of each of its live descendants (nginx, Apache, gunicorn serve from them)."""
    total = proc_status_kb(pid, "VmHWM")
    for child, _ in descendants(pid):
        with contextlib.suppress(OSError, KeyError):
            total += proc_status_kb(child, "VmHWM")
    return total


class Process:
    """A child process with its output in a log file; stopped by its PID (SIGTERM, then SIGKILL). Its own
    children (nginx's, Apache's, gunicorn's workers) are stopped by it; any left behind are then killed by
    their PIDs, as recorded before the stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        host: str,
        port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name, self.argv, self.log, self.host, self.port = name, list(argv), log, host, port
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Process:
        with open(self.log, "ab") as out:
            out.write(f"===== {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**client_env(), **self.env},
            )
        try:
            wait_port(self.host, self.port, self.proc, timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{self.name}: {exc}; the end of {self.log}:\n{self.log_tail(10)}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        children = descendants(proc.pid)
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for child, start in children:
            if _start_time(child) == start:  # still the same process: its parent did not stop it
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL by PID, from any thread; stop() still reaps it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_origin(workdir: Path, host: str = ORIGIN_HOST) -> Process:
    port = free_port(host)
    argv = [sys.executable, str(Path(__file__).resolve()), "origin", "--host", host, "--port", str(port)]
    return Process("origin", argv, workdir / "origin.log", host, port).start()


def mitmdump_argv(
    port: int, confdir: Path, *, addon: bool, cache_dir: Path | None = None, extra: Sequence[str] = ()
) -> list[str]:
    argv = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", str(port), "--set", f"confdir={confdir}"]
    if addon:
        assert cache_dir is not None
        argv += ["-s", str(ADDON), "--set", f"cache_dir={cache_dir}", "--set", f"cache_hosts={ORIGIN_HOST}"]
    return argv + list(extra)


def origin_requests(origin: str, path: str = "") -> int:
    """How many requests the origin at URL `origin` has served (GET /_requests, not itself counted), or how
    many of them asked for `path`."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never the machine's proxy
    query = "?path=" + urllib.parse.quote(path) if path else ""
    with direct.open(origin + "/_requests" + query, timeout=10) as response:
        return int(response.read())


def start_mitmdump(
    name: str, workdir: Path, *, addon: bool, cache_dir: Path | None = None, extra: Sequence[str] = ()
) -> Process:
    port = free_port()
    argv = mitmdump_argv(port, workdir / "conf", addon=addon, cache_dir=cache_dir, extra=extra)
    return Process(name, argv, workdir / f"{name}.log", "127.0.0.1", port).start(timeout=60)


# measurements


def proc_status_kb(pid: int, field: str) -> int:
    """A 'kB' field of /proc/PID/status, e.g. VmHWM (peak resident set) or VmRSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """Samples VmRSS of a process every `interval` seconds in a thread; past `cap_kb` it calls `on_cap` once
    (the benchmarks kill the process by its PID there, so a buffering proxy cannot exhaust the machine)."""

    def __init__(
        self,
        pid: int,
        interval: float = 0.1,
        cap_kb: int | None = None,
        on_cap: Callable[[], None] | None = None,
    ) -> None:
        self.pid, self.interval, self.cap_kb, self.on_cap = pid, interval, cap_kb, on_cap
        self.samples: list[tuple[float, int]] = []
        self.tripped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            try:
                kb = proc_status_kb(self.pid, "VmRSS")
            except (OSError, KeyError):
                return
            self.samples.append((time.monotonic() - start, kb))
            if self.cap_kb is not None and kb > self.cap_kb and not self.tripped:
                self.tripped = True
                if self.on_cap is not None:
                    self.on_cap()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def max_kb(self) -> int:
        return max((kb for _, kb in self.samples), default=0)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if numeric[i] else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def revision() -> str:
    """The commit measured, '+changes' when cacheaddon/ differs from it (read-only git commands only)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "cacheaddon"], cwd=ROOT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty.returncode == 1 else "")


def versions() -> str:
    found = []
    for package in ("mitmproxy", "diskcache", "httpx"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"cacheaddon {revision()}; " + ", ".join(found) + f"; Python {sys.version.split()[0]}"


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return text in ("-", "")
    return True


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    origin = sub.add_parser("origin", help="serve deterministic bodies on host:port until SIGTERM")
    origin.add_argument("--host", default=ORIGIN_HOST)
    origin.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "origin":
        serve_origin(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
