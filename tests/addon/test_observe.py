"""The addon's operator hooks: cache_record validated in configure, answers counted and recorded, the
metrics route answered (also under cache_strict_hosts) and only on the proxy's own address."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.exceptions import OptionsError
from test_addon import PYPI_INDEX, Harness, flow_for, harness  # noqa: F401 - harness is a fixture

from cacheaddon import counters


def test_an_unwritable_cache_record_is_an_options_error(harness: Harness, tmp_path: Path) -> None:  # noqa: F811
    harness.configure()
    with pytest.raises(OptionsError, match=r"^cache_record: "):
        harness.configure(cache_record=str(tmp_path / "no-such-dir" / "build.record"))


def test_an_answer_from_the_cache_is_counted_and_recorded(harness: Harness, tmp_path: Path) -> None:  # noqa: F811
    record = tmp_path / "build.record"
    harness.configure(cache_record=str(record))
    f = flow_for(PYPI_INDEX)
    entry = harness.store_entry(f, b"<html>requests</html>", headers=(("Content-Type", "text/html"),))

    async def answer() -> None:
        await harness.addon.request(f)
        harness.addon.response(f)

    harness.live(answer)
    assert f.response is not None and f.response.headers["Cache-Status"] == 'cacheaddon; hit; detail="fresh"'
    [line] = [json.loads(raw) for raw in record.read_text().splitlines()]
    assert (line["url"], line["sha256"], line["size"]) == (PYPI_INDEX, entry.sha256, entry.size)
    totals = counters.StatsDB(harness.cache_dir).totals()  # done() flushed them
    key = counters.series(counters.ANSWERS, outcome="HIT", ecosystem="pypi", host="pypi.org")
    assert totals[key] == 1
    assert totals[counters.series(counters.CACHE_BYTES, host="pypi.org")] == entry.size


@pytest.mark.parametrize(
    ("url", "sockname", "served"),
    [
        ("http://127.0.0.1:8080/_cacheaddon/metrics", ("127.0.0.1", 8080), True),
        ("http://localhost:8080/_cacheaddon/metrics", ("127.0.0.1", 8080), True),
        ("http://127.0.0.1:9999/_cacheaddon/metrics", ("127.0.0.1", 8080), False),  # another server
        ("http://example.com:8080/_cacheaddon/metrics", ("127.0.0.1", 8080), False),
        ("http://127.0.0.1:8080/_cacheaddon/metricsx", ("127.0.0.1", 8080), False),
    ],
)
def test_the_metrics_route_is_the_proxy_s_own(
    harness: Harness,  # noqa: F811
    url: str,
    sockname: tuple[str, int],
    served: bool,
) -> None:
    harness.configure(cache_strict_hosts=True)
    f = flow_for(url)
    f.client_conn.sockname = sockname

    async def hooks() -> None:
        harness.addon.requestheaders(f)
        await harness.addon.request(f)

    harness.live(hooks)
    if served:
        assert f.response is not None and f.response.status_code == 200
        assert b"cacheaddon_answers_total" in f.response.content
    else:  # refused by cache_strict_hosts (relayed as a 403), as any request to another host
        assert f.response is None and f.metadata["cacheaddon"].get("refused")


def test_metrics_are_refused_to_clients_outside_the_allow_list(harness: Harness) -> None:  # noqa: F811
    harness.configure()
    f = flow_for("http://127.0.0.1:8080/_cacheaddon/metrics", client="10.1.2.3")
    f.client_conn.sockname = ("127.0.0.1", 8080)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 403


def test_cache_status_says_stored_only_when_the_answer_was_stored(harness: Harness) -> None:  # noqa: F811
    """A miss whose body contradicts the digest its index published is served but not stored: its
    Cache-Status must not claim `stored` (the detail is "miss" either way)."""
    body = b"hello"

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def scenario() -> list[http.HTTPFlow]:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        harness.configure(cache_hosts=[f"127.0.0.1:{port}"])
        assert harness.addon.store is not None
        bad, good = (f"http://127.0.0.1:{port}/files/{name}-1.0.tar.gz" for name in ("bad", "good"))
        harness.addon.store.record_digests({bad: "sha256=" + "0" * 64})
        flows = [flow_for(bad), flow_for(good)]
        try:
            for f in flows:
                await harness.addon.request(f)
        finally:
            server.close()
        return flows

    harness.configure()
    bad, good = harness.live(scenario)
    assert bad.response is not None and good.response is not None
    assert bad.response.headers["X-Cache-Detail"] == good.response.headers["X-Cache-Detail"] == "miss"
    assert "stored" not in bad.response.headers["Cache-Status"].split("; ")
    assert "stored" in good.response.headers["Cache-Status"].split("; ")


def test_damaged_counters_make_the_metrics_503_not_an_addon_error(harness: Harness) -> None:  # noqa: F811
    harness.configure()
    (harness.cache_dir / "stats.db").write_bytes(b"not a database" * 100)
    f = flow_for("http://127.0.0.1:8080/_cacheaddon/metrics")
    f.client_conn.sockname = ("127.0.0.1", 8080)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 503
    assert b"stats.db" in (f.response.content or b"")


def test_the_documents_the_guard_asked_for_are_recorded_too(harness: Harness, tmp_path: Path) -> None:  # noqa: F811
    """An HTML page is dated by its JSON form, which the guard asks the cache for: an offline replay of the
    bundle needs that entry as much as the page, or the young versions pass there as undated."""
    record = tmp_path / "build.record"
    harness.configure(cache_record=str(record), cache_min_release_age="3d", cache_offline=True)
    young = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    files = [
        {"filename": f"requests-{v}.tar.gz", "url": f"https://files.pythonhosted.org/p/requests-{v}.tar.gz",
         "hashes": {"sha256": "00"}, "upload-time": t}
        for v, t in (("1.0", "2020-01-01T00:00:00Z"), ("2.0", young))
    ]  # fmt: skip
    page = json.dumps({"meta": {"api-version": "1.1"}, "name": "requests", "files": files}).encode()
    json_type = "application/vnd.pypi.simple.v1+json"
    html = b"".join(b'<a href="%s">%s</a>\n' % (f["url"].encode(), f["filename"].encode()) for f in files)
    harness.store_entry(
        flow_for(PYPI_INDEX, headers={"Accept": json_type, "Accept-Encoding": "gzip"}),
        page,
        headers=(("Content-Type", json_type),),
    )
    html_accept = {"Accept": "text/html"}
    html_type = (("Content-Type", "text/html"),)
    harness.store_entry(flow_for(PYPI_INDEX, headers=html_accept), html, headers=html_type)
    f = flow_for(PYPI_INDEX, headers=html_accept)

    async def answer() -> None:
        await harness.addon.request(f)
        harness.addon.response(f)

    harness.live(answer)
    assert f.response is not None and b"requests-2.0" not in (f.response.content or b"")
    assert b"requests-1.0" in (f.response.content or b"")
    keys = [json.loads(line)["key"] for line in record.read_text().splitlines()]
    assert sorted(k.split("\n")[1] for k in keys) == [f"accept={json_type}", "accept=text/html"]
