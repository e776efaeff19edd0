"""Bare mitmproxy for the benchmarks: answers every request whose path it knows from memory (no cache logic).
Bodies are the files in $BENCH_BODIES, named by their URL path with "/" as "%2F"."""

import os
from pathlib import Path
from urllib.parse import unquote

from mitmproxy import http

BODIES = {unquote(p.name): p.read_bytes() for p in Path(os.environ["BENCH_BODIES"]).iterdir()}


def request(flow: http.HTTPFlow) -> None:
    if (body := BODIES.get(flow.request.path)) is not None:
        flow.response = http.Response.make(200, body, {"content-type": "application/octet-stream"})
