"""The hit path: latency and wall time of fetching warm files directly, through plain mitmdump, through
mitmdump + cacheaddon (every answer must be a HIT; its misses are measured too, on files never asked for),
through cacheaddon's registry endpoint, and through what users compare it with: nginx proxy_cache and Apache
httpd mod_cache (caching forward proxies; measured when installed, or installed with apt-get by --with-nginx /
--with-apache) and proxpi (a caching PyPI index proxy; installed by --with-proxpi from PyPI into a venv of its
own under the work directory).

Sets fetched from a local origin (127.0.0.2): default 500 x 20 KiB and 20 x 5 MiB files, and 100 PEP 503
index pages that list 30 files each. Each set is fetched sequentially by one keep-alive httpx client and by 8
concurrent clients (threads, one keep-alive connection each). Rounds are interleaved across setups so that the
machine's noise spreads over all of them; medians of one run are reported, with ratios to plain mitmdump.
Nothing here asserts on timings.

How each setup is reached, and how its answers are checked (bodies by sha256 when warming, by size in every
measured pass; a pass of a caching setup must leave the origin's request count, GET /_requests, unchanged):
  direct, mitmdump      http://127.0.0.2:P/... straight, or through plain mitmdump as a forward proxy
  cacheaddon(-miss)     mitmdump -s cacheaddon/addon.py as a forward proxy: X-Cache must be HIT (MISS)
  cacheaddon-endpoint   mitmdump --mode reverse:http://127.0.0.2:P -s cacheaddon/addon.py, a cache of its
                        own: the registry endpoint (`cacheaddon run --registry URL@PORT`); X-Cache HIT
  nginx                 proxy_cache as a forward proxy (absolute URLs); X-Cache-Status HIT
  apache                mod_proxy as a forward proxy (ProxyRequests On, Require ip 127.0.0.0/8) with mod_cache
                        and mod_cache_disk (CacheEnable disk http://127.0.0.2:/); CacheHeader on: X-Cache HIT
  proxpi                gunicorn proxpi.server:app as proxpi's Docker image runs it (1 worker, --threads 2 by
                        default), PROXPI_INDEX_URL=http://127.0.0.2:P/simple/. proxpi is no generic proxy: a
                        file is fetched as /index/<project>/<file>, where the origin's project
                        <set>-<count>x<size> lists exactly the set's files (the same bytes as /data/...),
                        and an index page as /index/<project>/. proxpi marks no hit: an answer counts as one
                        when it is a 200 (not proxpi's redirect to the origin, which is not followed) and the
                        origin saw no request during the pass. proxpi renders index pages itself
                        (gzip-compressed when asked, as httpx asks): they are checked for the origin's file
                        names and sha256 when warming, not byte for byte.
Index pages are asked for with httpx's default Accept (*/*), to which proxpi answers HTML, as the origin does.
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import itertools
import os
import pwd
import re
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
_LINK = re.compile(r'href="([^"#]*)#sha256=([0-9a-f]{64})"[^>]*>([^<]*)</a>')


@dataclass(frozen=True)
class FileSet:
    name: str
    count: int
    size: int
    listed: int = 0  # > 0: `count` simple-index pages, each listing `listed` files of `size` bytes

    @property
    def index(self) -> bool:
        return self.listed > 0

    @property
    def label(self) -> str:
        if self.index:
            return f"{self.count} index pages"
        return f"{self.count} x {benchlib.human_size(self.size)}"

    def project(self) -> str:
        """The origin's simple-index project listing exactly this set's files (proxpi fetches them by it)."""
        return benchlib.project_name(self.name, self.count, self.size)

    def paths(self, tag: str = "") -> list[str]:
        if self.index:
            return [
                f"/simple/{benchlib.project_name(f'{self.name}{tag}-{i:04d}', self.listed, self.size)}/"
                for i in range(self.count)
            ]
        return [benchlib.data_path(self.size, f"{self.name}{tag}-{i:04d}.tar.gz") for i in range(self.count)]


@dataclass
class Setup:
    name: str
    proxy: str | None  # None: no proxy (straight to the origin, or to `base`)
    cache_header: str | None = None  # the response header that tells hit from miss
    expect: str | None = None  # what every measured answer's cache_header must start with
    fresh: bool = False  # every pass asks for files never asked for before (measures misses)
    proc: Process | None = None
    base: str | None = None  # an endpoint: its URL stands for the origin's
    proxpi: bool = False  # base is proxpi: /index/<project>/<file> and /index/<project>/
    cached: bool = False  # every measured answer comes from its cache: the origin must see no request

    def url(self, origin: str, files: FileSet, path: str) -> str:
        if not self.proxpi:
            return (self.base or origin) + path
        if files.index:  # /simple/<project>/
            return f"{self.base}/index/{path.split('/')[2]}/"
        return f"{self.base}/index/{files.project()}/{path.rsplit('/', 1)[1]}"

    def size(self, files: FileSet, paths: Sequence[str]) -> int:
        """The body size every answer of a pass over `paths` must have; -1: not checked (proxpi's pages)."""
        if not files.index:
            return files.size
        if self.proxpi:
            return -1
        page = benchlib.simple_page(paths[0].split("/")[2])
        assert page is not None
        return len(page)  # every page of a pass has names of the same length, so the same size


@dataclass
class Pass:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    done: int = 0
    bytes: int = 0
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
        result.bytes += len(response.content)
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
            result.bytes += mine.bytes
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


def check_body(setup: Setup, files: FileSet, path: str, response: httpx.Response) -> str | None:
    """What is wrong with the answer to `path` (warming checks every body), or None."""
    if response.status_code != 200:
        return f"status {response.status_code}"
    if not files.index:
        ok = _sha256(response.content) == benchlib.expected_sha256(path, files.size)
        return None if ok else "wrong sha256"
    page = benchlib.simple_page(path.split("/")[2])
    assert page is not None
    if not setup.proxpi:
        return None if _sha256(response.content) == _sha256(page) else "not the origin's page"
    # proxpi renders its own page: the same files (by name) with the same sha256, linked relative to it
    links = {(name, digest) for href, digest, name in _LINK.findall(page.decode())}
    got = {(name, digest) for href, digest, name in _LINK.findall(response.text) if href == name}
    return (
        None if got == links else f"{len(got & links)} of {len(links)} files listed as the origin lists them"
    )


def warm(setup: Setup, origin: str, files: FileSet, timeout: float) -> None:
    """Fetches every file once (checking its body), then again until the cache answers all (bounded)."""
    paths = files.paths()
    urls = [setup.url(origin, files, p) for p in paths]
    size = setup.size(files, paths)
    client = Client(setup)
    deadline = time.monotonic() + timeout
    try:
        for path, url in zip(paths, urls, strict=True):
            # proxpi answers a file it is still downloading with a redirect to the origin: follow it here
            response = client.http.get(url, follow_redirects=True)
            wrong = check_body(setup, files, path, response)
            if wrong:
                raise RuntimeError(f"{setup.name}: wrong answer for {url}: {wrong}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{setup.name}: warming {files.name} took more than {timeout:.0f}s")
        if not setup.cached:
            return
        for _ in range(5):  # a streamed miss is committed just after its last byte: give it a moment
            before = benchlib.origin_requests(origin)
            check = sequential(setup, urls, size, max(1.0, deadline - time.monotonic()), urls[0])
            reached = benchlib.origin_requests(origin) - before
            hits = setup.expect is None or check.statuses.get(setup.expect, 0) == len(urls)
            if hits and not check.errors and not reached:
                return
            time.sleep(1)
        raise RuntimeError(
            f"{setup.name}: after warming {files.name}, not all answered from the cache: "
            f"{dict(check.statuses)}, {reached} origin requests, {check.errors[:1]}"
        )
    finally:
        client.close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# servers from apt: nginx, Apache httpd

_apt_updated = False


def find_server(binary: str, packages: Sequence[str], install: bool) -> str | None:
    """The path of `binary`, installing the first of `packages` that apt-get can when asked and missing."""
    global _apt_updated
    found = _which(binary)
    if found or not install:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {packages[0]} with apt-get...", flush=True)
    if not _apt_updated:
        subprocess.run(
            ["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL, timeout=300
        )
        _apt_updated = True
    for package in packages:
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        if done.returncode == 0:
            break
    return _which(binary)


def _which(binary: str) -> str | None:
    # /usr/sbin may be missing from a non-root PATH
    path = f"/usr/sbin/{binary}"
    return shutil.which(binary) or (path if os.access(path, os.X_OK) else None)


def server_version(argv: Sequence[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    found = re.search(pattern, done.stdout + done.stderr)
    return found[0] if found else "?"


# nginx

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
            # concurrent misses of one URL wait for the first one's download instead of each fetching it
            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(binary: str, work: Path, workers: int, tag: str = "") -> Process:
    prefix = work / f"nginx{tag}"
    prefix.mkdir()
    port = benchlib.free_port()
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, workers=workers, user=user))
    argv = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    return Process("nginx", argv, work / f"nginx{tag}.log", "127.0.0.1", port).start()


# Apache httpd

# A forward proxy (ProxyRequests On, clients send absolute URLs), the classic set-up this project replaces:
# mod_cache caches forward-proxied URLs when CacheEnable names them with scheme and host, so no reverse proxy
# per origin is needed. The empty port in "http://HOST:/" matches any port (without it, only port 80 would
# match, and nothing would be cached: mod_cache says nothing about it). One child process (like nginx's one
# worker) with event MPM threads.
APACHE_CONF = """\
ServerRoot "{prefix}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{prefix}/apache2.pid"
DefaultRuntimeDir "{prefix}"
ErrorLog "{prefix}/error.log"
LogLevel warn
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_host_module {modules}/mod_authz_host.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule cache_module {modules}/mod_cache.so
LoadModule cache_disk_module {modules}/mod_cache_disk.so
ServerLimit 1
StartServers 1
ThreadLimit {threads}
ThreadsPerChild {threads}
MaxRequestWorkers {threads}
MinSpareThreads 1
MaxSpareThreads {spare}
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 60
EnableSendfile On
# no access log, as for nginx
ProxyRequests On
ProxyVia Off
<Proxy "*">
    Require ip 127.0.0.0/8
</Proxy>
CacheRoot "{prefix}/cache"
CacheEnable disk http://{origin_host}:/
CacheDirLevels 2
CacheDirLength 1
CacheMaxFileSize 1073741824
CacheHeader on
# as a build cache is set up: a client's "Cache-Control: max-age=0" (pip sends it for index pages) does not
# make every hit a round trip to the origin
CacheIgnoreCacheControl On
# concurrent misses: one request fills the entry, the others are passed to the origin meanwhile
CacheLock on
CacheLockPath "{prefix}/cache/.lock"
"""
APACHE_MODULES = ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules")


def start_apache(
    binary: str, work: Path, threads: int, tag: str = "", hosts: Sequence[str] = (benchlib.ORIGIN_HOST,)
) -> Process:
    prefix = work / f"apache{tag}"
    (prefix / "cache").mkdir(parents=True)
    modules = next((m for m in APACHE_MODULES if os.path.exists(f"{m}/mod_cache_disk.so")), None)
    if modules is None:
        raise RuntimeError(f"mod_cache_disk.so is in none of {', '.join(APACHE_MODULES)}")
    user = ""
    if os.geteuid() == 0:  # httpd refuses to serve as root: its child runs as an unprivileged user
        name = next((n for n in ("www-data", "daemon", "nobody") if _has_user(n)), "nobody")
        account = pwd.getpwnam(name)
        user = f"User {name}\nGroup {grp.getgrgid(account.pw_gid).gr_name}"
        os.chown(prefix / "cache", account.pw_uid, account.pw_gid)
    port = benchlib.free_port()
    conf = prefix / "apache2.conf"
    conf.write_text(
        APACHE_CONF.format(
            prefix=prefix,
            port=port,
            user=user,
            modules=modules,
            threads=threads,
            spare=threads + 1,
            origin_host=hosts[0],
        )
        + "".join(f"CacheEnable disk http://{host}:/\n" for host in hosts[1:])
    )
    # -DFOREGROUND: the parent stays in the foreground as the PID we stop; its child serves.
    argv = [binary, "-d", str(prefix), "-f", str(conf), "-DFOREGROUND"]
    return Process("apache", argv, work / f"apache{tag}.log", "127.0.0.1", port).start()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# proxpi

PROXPI_PACKAGES = ("proxpi", "gunicorn")


def install_proxpi(work: Path) -> Path | None:
    """See _install_proxpi; an existing venv under `work` is reused."""
    venv = work / "proxpi-venv"
    if (venv / "bin" / "gunicorn").exists():
        return venv
    return _install_proxpi(work)


def _install_proxpi(work: Path) -> Path | None:
    """A venv of its own under the work directory with proxpi and gunicorn from PyPI, or None.

    Not the project's venv: proxpi brings its own Flask, Werkzeug, requests and lxml, which must not change
    what mitmproxy and the tests run with; it runs as a process of its own anyway, and its venv goes away with
    the work directory."""
    venv = work / "proxpi-venv"
    log = work / "proxpi-install.log"
    print(f"installing {' and '.join(PROXPI_PACKAGES)} from PyPI into {venv}...", flush=True)
    with open(log, "wb") as out:
        for argv in (
            [sys.executable, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *PROXPI_PACKAGES,
            ],
        ):
            try:
                done = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=600
                )
            except (OSError, subprocess.SubprocessError) as exc:
                out.write(f"{argv[0]}: {exc}\n".encode())
                done = None
            if done is None or done.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
                print(f"proxpi could not be installed:\n{tail}", flush=True)
                return None
    return venv


def proxpi_versions(venv: Path) -> str:
    code = (
        "import importlib.metadata as m, sys; print(', '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *PROXPI_PACKAGES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() or "proxpi ?"


def _help(binary: str) -> str:
    try:
        done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def start_proxpi(venv: Path, work: Path, origin: str, threads: int, tag: str = "") -> Process:
    port = benchlib.free_port()
    env = {
        "PROXPI_INDEX_URL": f"{origin}/simple/",
        "PROXPI_CACHE_DIR": str(work / f"proxpi-cache{tag}"),
        # cacheaddon's cache_ttl: no index page expires during a run (its own default is 1800 s)
        "PROXPI_INDEX_TTL": "86400",
        "PROXPI_LOGGING_LEVEL": "WARNING",
    }
    # As its Docker image runs it (one worker process, gthread), with no access log (as for nginx, Apache)
    argv = [
        str(venv / "bin" / "gunicorn"),
        "--preload",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        str(threads),
        "--graceful-timeout",
        "5",
        "--logger-class",
        "proxpi.server._GunicornLogger",
        "proxpi.server:app",
    ]
    if "--no-control-socket" in _help(argv[0]):  # gunicorn >= 27 opens one in ~/.gunicorn otherwise
        argv.insert(1, "--no-control-socket")
    return Process("proxpi", argv, work / f"proxpi{tag}.log", "127.0.0.1", port, env=env).start(timeout=60)


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
    parser.add_argument("--index-count", type=int, default=100, help="index pages, default 100 (0: none)")
    parser.add_argument("--index-files", type=int, default=30, help="files listed per index page, default 30")
    parser.add_argument("--rounds", type=int, default=3, help="measured passes per setup and mode, default 3")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--pass-timeout", type=float, default=120, help="seconds allowed per pass, default 120"
    )
    parser.add_argument(
        "--quick", action="store_true", help="50 x 20k, 5 x 5m and 20 index pages, one round: a smoke run"
    )
    nginx_group = parser.add_mutually_exclusive_group()
    nginx_group.add_argument(
        "--with-nginx",
        action="store_true",
        help="install nginx with apt-get if it is missing (an installed nginx is always measured)",
    )
    nginx_group.add_argument("--no-nginx", action="store_true", help="do not measure nginx even if installed")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes, default 1")
    apache_group = parser.add_mutually_exclusive_group()
    apache_group.add_argument(
        "--with-apache",
        action="store_true",
        help="install Apache httpd (apache2) with apt-get if missing (an installed one is always measured)",
    )
    apache_group.add_argument(
        "--no-apache", action="store_true", help="do not measure Apache httpd even if installed"
    )
    parser.add_argument(
        "--apache-threads", type=int, default=25, help="threads of Apache's one child process, default 25"
    )
    parser.add_argument(
        "--with-proxpi",
        action="store_true",
        help="install proxpi and gunicorn from PyPI into a venv under the work directory and measure it",
    )
    parser.add_argument(
        "--proxpi-threads",
        type=int,
        default=2,
        help="gunicorn threads of proxpi, default 2 (its Docker image's)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches)")
    args = parser.parse_args(argv)
    counts = ("small_count", "large_count", "index_files", "rounds", "concurrency")
    threads = ("nginx_workers", "apache_threads", "proxpi_threads")
    if any(getattr(args, name) < 1 for name in counts + threads) or args.index_count < 0:
        parser.error("counts, rounds, --concurrency, workers and threads must be >= 1 (--index-count >= 0)")
    if args.quick:
        args.small_count, args.large_count, args.index_count, args.rounds = (
            50,
            5,
            min(args.index_count, 20),
            1,
        )
    small_size = benchlib.parse_size(args.small_size)
    sets = [
        FileSet("small", args.small_count, small_size),
        FileSet("large", args.large_count, benchlib.parse_size(args.large_size)),
    ]
    if args.index_count > 0:
        sets.append(FileSet("index", args.index_count, small_size, listed=args.index_files))
    modes = ["seq", f"conc{args.concurrency}"]

    nginx = None if args.no_nginx else find_server("nginx", ("nginx-light", "nginx"), args.with_nginx)
    if nginx is None and not args.no_nginx:
        why = "could not be installed" if args.with_nginx else "is not installed (--with-nginx installs it)"
        print(f"nginx {why}: measured without it", flush=True)
    apache = None if args.no_apache else find_server("apache2", ("apache2",), args.with_apache)
    if apache is None and not args.no_apache:
        why = "could not be installed" if args.with_apache else "is not installed (--with-apache installs it)"
        print(f"Apache httpd (apache2) {why}: measured without it", flush=True)
    if not args.with_proxpi:
        print(
            "proxpi not measured (--with-proxpi installs it into a venv under the work directory)", flush=True
        )

    print(benchlib.versions(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="cacheaddon-bench-hits-"))
    work.chmod(0o755)
    procs: list[Process] = []
    results: dict[tuple[str, str, str], list[Pass]] = {}
    setups: list[Setup] = []
    failures: list[str] = []
    others: list[str] = []
    rss: dict[str, int] = {}
    try:
        proxpi_venv = install_proxpi(work) if args.with_proxpi else None
        if args.with_proxpi and proxpi_venv is None:
            failures.append("proxpi: could not be installed (see above)")
        origin_proc = benchlib.start_origin(work)
        procs.append(origin_proc)
        origin = f"http://{origin_proc.host}:{origin_proc.port}"
        plain = benchlib.start_mitmdump("mitmdump", work, addon=False)
        procs.append(plain)
        addon = benchlib.start_mitmdump("cacheaddon", work, addon=True, cache_dir=work / "cache")
        procs.append(addon)
        endpoint = benchlib.start_mitmdump(
            "cacheaddon-endpoint",
            work,
            addon=True,
            cache_dir=work / "cache-endpoint",
            extra=["--mode", f"reverse:{origin}"],
        )
        procs.append(endpoint)
        setups = [
            Setup("direct", None),
            Setup("mitmdump", f"http://127.0.0.1:{plain.port}", proc=plain),
            Setup("cacheaddon", f"http://127.0.0.1:{addon.port}", "x-cache", "HIT", proc=addon, cached=True),
            Setup(
                "cacheaddon-miss", f"http://127.0.0.1:{addon.port}", "x-cache", "MISS", fresh=True, proc=addon
            ),
            Setup(
                "cacheaddon-endpoint",
                None,
                "x-cache",
                "HIT",
                proc=endpoint,
                base=f"http://127.0.0.1:{endpoint.port}",
                cached=True,
            ),
        ]
        if nginx is not None:
            ngx = start_nginx(nginx, work, args.nginx_workers)
            procs.append(ngx)
            setups.append(
                Setup("nginx", f"http://127.0.0.1:{ngx.port}", "x-cache-status", "HIT", proc=ngx, cached=True)
            )
            version = server_version([nginx, "-v"], r"nginx/\S+")
            others.append(f"{version}: {args.nginx_workers} worker(s), proxy_cache, sendfile on")
        if apache is not None:
            httpd = start_apache(apache, work, args.apache_threads)
            procs.append(httpd)
            setups.append(
                Setup("apache", f"http://127.0.0.1:{httpd.port}", "x-cache", "HIT", proc=httpd, cached=True)
            )
            version = server_version([apache, "-v"], r"Apache/\S+")
            others.append(
                f"{version}: mod_proxy forward proxy + mod_cache_disk, 1 child x "
                f"{args.apache_threads} threads (event MPM), sendfile on"
            )
        if proxpi_venv is not None:
            proxpi = start_proxpi(proxpi_venv, work, origin, args.proxpi_threads)
            procs.append(proxpi)
            setups.append(
                Setup(
                    "proxpi",
                    None,
                    proc=proxpi,
                    base=f"http://127.0.0.1:{proxpi.port}",
                    proxpi=True,
                    cached=True,
                )
            )
            others.append(
                f"{proxpi_versions(proxpi_venv)}: 1 worker x {args.proxpi_threads} threads (gthread), "
                "files at /index/<project>/<file>"
            )
        print(
            f"origin {origin}; setups: {', '.join(s.name for s in setups)}; warming "
            + ", ".join(s.label for s in sets),
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
                        paths = files.paths(tag)
                        urls = [setup.url(origin, files, p) for p in paths]
                        size = setup.size(files, paths)
                        # Connections open with files of their own when the measured ones must stay unseen.
                        warm_urls = [
                            origin + benchlib.data_path(1024, f"conn-{next(unique)}.bin")
                            if setup.fresh
                            else urls[0]
                            for _ in range(1 if mode == "seq" else args.concurrency)
                        ]
                        before = benchlib.origin_requests(origin)
                        if mode == "seq":
                            p = sequential(setup, urls, size, args.pass_timeout, warm_urls[0])
                        else:
                            p = concurrent(setup, urls, size, args.pass_timeout, warm_urls)
                        reached = benchlib.origin_requests(origin) - before
                        results.setdefault((files.name, mode, setup.name), []).append(p)
                        what = f"{setup.name} {files.name} {mode}"
                        if p.errors:
                            failures.append(f"{what}: {p.errors[0]}")
                        if p.timed_out:
                            failures.append(f"{what}: pass stopped at --pass-timeout")
                        if setup.expect and p.statuses.get(setup.expect, 0) != p.done:
                            failures.append(f"{what}: not all {setup.expect}: {dict(p.statuses)}")
                        if setup.cached and reached:
                            failures.append(
                                f"{what}: the origin served {reached} request(s) during a pass of hits"
                            )
            print(f"round {round_no + 1}/{args.rounds} done", flush=True)
        for s in setups:
            if s.proc is not None:
                rss[s.proc.name] = benchlib.tree_hwm_kb(s.proc.pid)
    except Exception as exc:  # report what was measured; the finally block stops everything
        failures.append(f"aborted: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        print(f"aborted: {type(exc).__name__}: {exc}", flush=True)
        for proc in procs:
            if proc.name == str(exc).split(":", 1)[0]:  # the setup the message begins with
                print(f"--- the end of {proc.log}\n{proc.log_tail(10)}", flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
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
                if not passes:  # the run was aborted before this
                    continue
                lat = [x for p in passes for x in p.latencies]
                wall = benchlib.median([p.wall for p in passes])
                done = benchlib.median([p.done for p in passes])
                mib = benchlib.median([p.bytes / MiB / p.wall for p in passes if p.wall])
                med, p90 = benchlib.median(lat), benchlib.percentile(lat, 0.9)
                p99, worst = benchlib.percentile(lat, 0.99), max(lat, default=float("nan"))
                rows.append(
                    [
                        files.label,
                        mode,
                        setup.name,
                        fmt(med, 1000, 3),
                        fmt(p90, 1000, 1),
                        fmt(p99, 1000, 1),
                        fmt(worst, 1000, 1),
                        fmt(wall, 1, 3),
                        fmt(done / wall if wall else float("nan"), 1, 0),
                        fmt(mib, 1, 0),
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
    if not rows:
        print("nothing measured")
    else:
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
    index = next((f for f in sets if f.index), None)
    page = benchlib.simple_page(index.paths()[0].split("/")[2]) if index else None
    print(
        f"\nmedian_ms, p90_ms, p99_ms, max_ms: per-request latency over all {args.rounds} round(s); wall_s: "
        f"median over rounds of the time to fetch the whole set; ratios: to plain mitmdump"
        f" (no addon, default options). Client, proxies and origin share {os.cpu_count()} cores."
        + (f" Index pages: PEP 503, {index.listed} files each, {len(page)} bytes." if index and page else "")
        + " cacheaddon-endpoint and proxpi are asked by their own URLs, not as proxies; every caching setup's"
        " passes left the origin's request count unchanged unless FAILED says otherwise."
    )
    for line in others:
        print(line)
    print(
        "peak RSS (VmHWM, the process plus its children) over the run: "
        + ", ".join(f"{k}={v / 1024:.0f} MB" for k, v in rss.items())
    )
    for line in summary:
        print(line)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
