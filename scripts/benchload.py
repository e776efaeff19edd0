"""Load with wrk (Debian's package): hits/s and MB/s of one URL over N keep-alive connections, bounded in
time; a forward proxy is driven with absolute request targets (a Lua script sets the request line and Host).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """\
-- written by scripts/benchload.py: one request, sent again and again on every connection
wrk.method = "GET"
wrk.path = os.getenv("BENCH_TARGET")
wrk.headers["Host"] = os.getenv("BENCH_HOST")
-- what httpx (the benchmarks' other client) sends: the same cache key, so its warm-up is wrk's hit
wrk.headers["Accept"] = "*/*"
wrk.headers["Accept-Encoding"] = "gzip, deflate"
{extra}
"""
_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}


@dataclass
class WrkResult:
    requests: int
    seconds: float
    bytes_read: int
    non_2xx: int
    socket_errors: int
    output: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds else 0.0


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    connect: str,
    target: str,
    host: str,
    work: Path,
    *,
    seconds: float,
    connections: int = 8,
    threads: int = 2,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """wrk against `connect` (http://ip:port), asking for `target` (a path, or an absolute URL for a forward
    proxy) with Host `host`, for `seconds`."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    script = work / "wrk-request.lua"
    script.write_text(_SCRIPT.format(extra=extra))
    argv = [
        binary,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        connect.rstrip("/") + "/",
    ]
    env = {"BENCH_TARGET": target, "BENCH_HOST": host, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, env=env, check=False)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {out.strip()[-500:]}")
    return parse_wrk(out)


def parse_wrk(out: str) -> WrkResult:
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s|m), ([\d.]+)([KMG]?B) read", out)
    if not found:
        raise RuntimeError(f"cannot read wrk's output: {out.strip()[-500:]}")
    seconds = float(found[2]) * {"s": 1, "ms": 0.001, "m": 60}[found[3]]
    bytes_read = int(float(found[4]) * _UNITS[found[5]])
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(found[1]),
        seconds=seconds,
        bytes_read=bytes_read,
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(x) for x in errors.groups()) if errors else 0,
        output=out,
    )
