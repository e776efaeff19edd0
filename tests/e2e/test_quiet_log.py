"""Under `cacheaddon run` the log is quiet and useful: a pip install logs one line per request the client
made (the addon's `MISS 200 1234 URL`), nothing of mitmproxy's per-flow output and never the relay's
internal loopback requests; `--set flow_detail=1` brings mitmproxy's own lines back, showing the client's
URLs, not the relay's. During an outage each origin's failure is one line, not one per stale answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clients import Proxy, ProxyFactory, cache_outcomes, client_env, fetch, pip_install, report
from .fakeorigin import wait_for
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
RELAY_URL = "GET http://127.0.0.1:"  # how a relayed flow would show in mitmproxy's own lines


def new_lines(proxy: Proxy, mark: int) -> list[str]:
    return [line for line in proxy.log_text(mark).splitlines() if line.strip()]


def test_a_pip_install_logs_one_line_per_client_request(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(runner="cli")
    registry.add_blob("/blobs/big.bin", 3 * MIB)  # answered through the relay
    mark = proxy.log_size()
    result = pip_install(tmp_path, ["foxtrot", "alpha"], registry.pypi_url, client_env(proxy))
    assert result.returncode == 0, report(result, proxy)
    assert fetch(proxy, registry.blob_url("/blobs/big.bin"))[0] == 200
    # A relayed answer is logged by the response hook, which mitmproxy runs once the last byte was sent: the
    # client can be done a moment before.
    wait_for(lambda: registry.blob_url("/blobs/big.bin") in proxy.log_text(mark), timeout=10)
    lines = new_lines(proxy, mark)
    requests = cache_outcomes("\n".join(lines))
    # foxtrot needs echo: three index pages and three wheels, then the blob.
    assert len(requests) == 7, lines
    assert len(lines) == len(requests), lines
    assert all(url.startswith((registry.pypi_url, registry.files.url)) for _, url in requests), lines

    loud = proxy_factory(runner="cli", flow_detail=1)
    mark = loud.log_size()
    assert fetch(loud, registry.blob_url("/blobs/big.bin"))[0] == 200
    lines = new_lines(loud, mark)
    assert len(lines) > 1 and not any(RELAY_URL in line for line in lines), lines
    assert any(registry.blob_url("/blobs/big.bin") in line for line in lines if "MISS" not in line), lines


def test_an_outage_is_one_line_per_origin(registry: FakeRegistry, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(runner="cli", cache_ttl=0, cache_upstream_backoff=0)
    urls = [f"{registry.pypi_url}{name}/" for name in ("alpha", "echo", "foxtrot")]
    for url in urls:
        assert fetch(proxy, url)[1].get("x-cache") == "MISS"
    registry.stop()
    mark = proxy.log_size()
    for url in urls * 2:
        assert fetch(proxy, url)[1].get("x-cache") == "STALE"
    lines = new_lines(proxy, mark)
    assert len(lines) == len(urls) * 2 + 1, lines  # one per request, one for the origin
    assert sum(" is failing " in line for line in lines) == 1, lines
