"""The addon's hooks, driven with mitmproxy's own test helpers (taddons, tflow, tutils).

No network: entries are put into the real store first, the upstream is a closed loopback port, and the
relay is a real loopback server. Async hooks run inside one asyncio.run per test (no pytest-asyncio here).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from cacheaddon import cli_inventory, counters, gate, keys, policy, settings, startup
from cacheaddon.addon import CacheAddon
from cacheaddon.entry import Entry
from cacheaddon.memo import MEMORY_LIMIT
from cacheaddon.store import Store

T = TypeVar("T")
PYPI_INDEX = "https://pypi.org/simple/requests/"


class Harness:
    """A CacheAddon inside a taddons context, next to mitmproxy's Proxyserver (which declares
    connection_strategy and stream_large_bodies, as in a real mitmdump)."""

    def __init__(self, tctx: taddons.context, addon: CacheAddon, cache_dir: Path) -> None:
        self.tctx, self.addon, self.cache_dir = tctx, addon, cache_dir
        self.closed = False

    def configure(self, **options: Any) -> None:
        self.tctx.configure(self.addon, **{"cache_dir": str(self.cache_dir), **options})

    def live(self, body: Callable[[], Awaitable[T]]) -> T:
        """Runs body in a loop where the addon is running (its relay listening), then shuts the addon down."""

        async def main() -> T:
            self.addon.running()
            await self.addon.relay.start()  # running() only spawns it
            try:
                return await body()
            finally:
                self.closed = True
                self.addon.done()

        return asyncio.run(main())

    def key_of(self, flow: http.HTTPFlow) -> str:
        assert self.addon.store is not None
        return keys.cache_key(view_of(flow), self.addon.store.salt)

    def store_entry(
        self,
        flow: http.HTTPFlow,
        body: bytes,
        *,
        age: float = 0.0,
        status: int = 200,
        headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/octet-stream"),),
        vary: tuple[tuple[str, str], ...] = (),
        store: Store | None = None,
    ) -> Entry:
        """Stores body as the answer to flow's request, under the key the addon will look up (through
        `store`: another process's, by default the addon's)."""
        view = view_of(flow)
        assert self.addon.store is not None
        store = store or self.addon.store
        entry = Entry(
            view.url,
            status,
            "OK",
            headers,
            time.time() - age,
            len(body),
            hashlib.sha256(body).hexdigest(),
            vary,
        )
        store.commit(keys.cache_key(view, store.salt), entry, body)
        return entry


def view_of(flow: http.HTTPFlow) -> keys.RequestView:
    req = flow.request
    return keys.RequestView(
        req.method,
        keys.normalize_url(req.scheme, req.host, req.port, req.path),
        {k.lower(): v for k, v in req.headers.items()},
    )


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    # Whatever a test forgets, nothing is written to the real ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    addon = CacheAddon()
    with taddons.context(Proxyserver(), addon) as tctx:
        h = Harness(tctx, addon, tmp_path / "cache")
        yield h
        if not h.closed:
            addon.done()


def flow_for(
    url: str = PYPI_INDEX,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    client: str = "127.0.0.1",
    **flow_args: Any,
) -> http.HTTPFlow:
    request = http.Request.make(method, url, b"", headers or {})
    f = tflow.tflow(req=request, **flow_args)
    f.client_conn.peername = (client, 50000)
    return f


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# options


def test_options_load_with_their_defaults(harness: Harness) -> None:
    for name, _, default, _ in settings.OPTIONS:
        assert getattr(harness.tctx.options, name) == default
    assert harness.addon.settings is None  # nothing is opened before configure


def test_configure_with_defaults_opens_the_default_cache_dir(harness: Harness, tmp_path: Path) -> None:
    harness.tctx.configure(harness.addon)  # an empty update: defaults only
    assert harness.addon.settings == settings.from_options(settings.defaults())
    assert harness.addon.settings.cache_dir == tmp_path / "xdg" / "cacheaddon"
    assert (tmp_path / "xdg" / "cacheaddon" / "cache.db").is_file()


def test_configure_parses_the_options(harness: Harness) -> None:
    harness.configure(cache_ttl=120, cache_hosts=["pypi.org, *.npmjs.org"], cache_offline=True)
    s = harness.addon.settings
    assert s is not None
    assert (s.ttl, s.offline, s.cache_dir) == (120, True, harness.cache_dir)
    assert s.is_cached_host("registry.npmjs.org", 443) and not s.is_cached_host("example.com", 443)
    assert harness.addon.store is not None and harness.addon.store.directory == harness.cache_dir


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cache_ttl", -1),
        ("cache_negative_ttl", -1),
        ("cache_upstream_timeout", 0),
        ("cache_upstream_backoff", -5),
        ("cache_max_object_size", "lots"),
        ("cache_size_limit", "10k"),
        ("cache_allow_clients", ["not-an-ip"]),
        ("cache_hosts", ["bad host"]),
        ("cache_hosts", ["pypi.org:99999"]),
        ("cache_shared", "bucket-without-scheme"),
        ("cache_shared", "s3://No_Such_Name"),
        ("cache_shared_endpoint", "http://127.0.0.1:8333"),  # without cache_shared
    ],
)
def test_a_bad_option_raises_options_error_naming_it(harness: Harness, option: str, value: Any) -> None:
    harness.configure()
    before = harness.addon.settings
    with pytest.raises(OptionsError, match=rf"^{option}: "):
        harness.configure(**{option: value})
    assert harness.addon.settings == before  # the last good settings stay in force
    assert getattr(harness.tctx.options, option) == settings.defaults()[option]


def test_an_unusable_cache_dir_raises_options_error(harness: Harness, tmp_path: Path) -> None:
    harness.configure()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OptionsError, match=r"^cache_dir: "):
        harness.tctx.configure(harness.addon, cache_dir=str(tmp_path / "a-file" / "cache"))
    assert harness.addon.settings is not None and harness.addon.settings.cache_dir == harness.cache_dir


def test_as_a_script_a_bad_option_stops_a_starting_proxy_and_is_refused_by_a_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    addon = CacheAddon(stop_on_bad_options=True)  # as `mitmdump -s` loads it
    try:
        with taddons.context(Proxyserver(), addon) as tctx:
            tctx.configure(addon, cache_dir=str(tmp_path / "cache"))
            with pytest.raises(SystemExit) as stopped:
                tctx.configure(addon, cache_ttl=-1)
            assert stopped.value.code == 1
            message = capsys.readouterr().err.splitlines()[-1]
            assert message.endswith(": cache_ttl: must be 0 or more seconds, got -1")
            startup.mark_running(tctx.master)  # what running() does first
            with pytest.raises(OptionsError, match=r"^cache_ttl: "):  # running: refused, never stopped
                tctx.configure(addon, cache_ttl=-1)
    finally:
        addon.done()


@pytest.mark.parametrize("preset", ["nothing", "connection_strategy"])
def test_a_bad_option_on_the_first_configure_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, preset: str
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # Bound the recursion so that the bug costs a second, not twenty.
    sys_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 200)
    addon = CacheAddon()
    try:
        with taddons.context(Proxyserver()) as tctx:
            if preset == "connection_strategy":  # as `cacheaddon run` does before loading the addon
                tctx.options.update(connection_strategy="lazy")
            tctx.master.addons.add(addon)
            with pytest.raises(OptionsError, match=r"^cache_ttl: "):
                tctx.configure(addon, cache_dir=str(tmp_path / "cache"), cache_ttl=-1)
    finally:
        sys.setrecursionlimit(sys_limit)
        addon.done()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_configure_forces_a_lazy_connection_strategy(harness: Harness) -> None:
    assert harness.tctx.options.connection_strategy == "eager"  # mitmproxy's default
    harness.configure()
    assert harness.tctx.options.connection_strategy == "lazy"
    harness.tctx.configure(harness.addon, connection_strategy="eager")
    assert harness.tctx.options.connection_strategy == "lazy"


def test_configure_streams_large_bodies_unless_told_otherwise(harness: Harness) -> None:
    harness.configure()
    assert harness.tctx.options.stream_large_bodies == "1m"
    harness.tctx.configure(harness.addon, stream_large_bodies="5m")
    assert harness.tctx.options.stream_large_bodies == "5m"


def test_changing_cache_dir_reopens_the_store(harness: Harness, tmp_path: Path) -> None:
    harness.configure()
    first = harness.addon.store
    harness.tctx.configure(harness.addon, cache_dir=str(tmp_path / "elsewhere"))
    assert harness.addon.store is not first
    assert harness.addon.store is not None and harness.addon.store.directory == tmp_path / "elsewhere"


# guards


@pytest.mark.parametrize(
    "flow_args",
    [{"resp": True}, {"err": True}, {"live": False}],
    ids=["answered by another addon", "errored", "not live"],
)
def test_a_flow_that_is_done_with_is_left_alone(harness: Harness, flow_args: dict[str, Any]) -> None:
    harness.configure(cache_offline=True, cache_strict_hosts=True)
    flows = [flow_for(**flow_args), flow_for(client="10.9.9.9", **flow_args)]
    before = [(f.response, f.response and f.response.get_state(), f.request.get_state()) for f in flows]

    async def run_all() -> None:
        for f in flows:
            await harness.addon.request(f)

    harness.live(run_all)
    for f, (response, response_state, request_state) in zip(flows, before, strict=True):
        assert f.response is response
        assert (f.response and f.response.get_state(), f.request.get_state()) == (
            response_state,
            request_state,
        )
        assert f.metadata == {}


def test_a_connect_already_answered_is_left_alone(harness: Harness) -> None:
    harness.configure()
    f = flow_for(client="10.9.9.9", resp=True)
    answer = f.response
    harness.addon.http_connect(f)
    assert f.response is answer and f.response.status_code == 200


def test_hooks_do_nothing_before_configure(harness: Harness) -> None:
    f = flow_for(client="10.9.9.9")
    harness.addon.http_connect(f)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is None


# access control


@pytest.mark.parametrize("url", [PYPI_INDEX, "https://example.com/"])
def test_a_client_outside_allow_clients_gets_403(harness: Harness, url: str) -> None:
    harness.configure()
    f = flow_for(url, client="192.0.2.7")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 403
    assert b"192.0.2.7 is not in cache_allow_clients" in f.response.content


def test_a_client_outside_allow_clients_gets_403_on_connect(harness: Harness) -> None:
    harness.configure()
    f = flow_for("https://pypi.org:443/", method="CONNECT", client="192.0.2.7")
    harness.addon.http_connect(f)
    assert f.response is not None and f.response.status_code == 403


@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3"])
def test_allowed_clients_are_served(harness: Harness, client: str) -> None:
    harness.configure(cache_allow_clients=["127.0.0.0/8", "::1", "10.0.0.0/8"])
    f = flow_for("https://example.com/", client=client)
    harness.addon.http_connect(f)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is None


def test_strict_hosts_refuses_hosts_that_are_not_cached(harness: Harness) -> None:
    harness.configure(cache_strict_hosts=True)
    f = flow_for("https://example.com/anything")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 403
    assert b"example.com:443 is not in cache_hosts" in f.response.content
    connect = flow_for("https://example.com:443/", method="CONNECT")
    harness.addon.http_connect(connect)
    assert connect.response is not None and connect.response.status_code == 403
    cached = flow_for("https://pypi.org:443/", method="CONNECT")
    harness.addon.http_connect(cached)
    assert cached.response is None


def test_a_host_that_is_not_cached_passes_through_untouched(harness: Harness) -> None:
    harness.configure()
    f = flow_for("https://example.com/path?q=1", headers={"Accept": "*/*"})
    before = f.request.get_state()
    harness.live(lambda: harness.addon.request(f))
    assert f.response is None
    assert f.request.get_state() == before
    assert f.metadata == {}


def test_offline_a_host_that_is_not_cached_is_not_contacted_either(harness: Harness) -> None:
    # An offline build must be reproducible from the cache alone: nothing may reach out, cached host or not.
    harness.configure(cache_offline=True)
    f = flow_for("https://example.com/path?q=1", headers={"Accept": "*/*"})
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 504
    assert b"offline: not a cached host" in f.response.content


# offline


def test_offline_with_an_empty_cache_gives_504_naming_the_url(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    f = flow_for(PYPI_INDEX + "?x=1")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 504
    assert (PYPI_INDEX + "?x=1").encode() in f.response.content
    assert f.response.headers["X-Cache"] == "MISS"
    assert f.response.headers["X-Cache-Detail"] == "offline: not in cache"


def test_offline_a_request_the_cache_cannot_answer_gives_504(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    f = flow_for(PYPI_INDEX, method="POST")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 504
    assert f.response.headers["X-Cache-Detail"] == "offline: not cacheable: method POST"


def test_offline_a_stale_entry_is_served(harness: Harness) -> None:
    harness.configure(cache_offline=True, cache_ttl=60)
    body = b"<html>requests</html>"
    stored = flow_for(PYPI_INDEX, headers={"Accept": "text/html"})
    harness.store_entry(
        stored, body, age=10 * 86400, headers=(("Content-Type", "text/html"), ("ETag", '"e1"'))
    )
    f = flow_for(PYPI_INDEX, headers={"Accept": "text/html"})
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 200
    assert f.response.raw_content == body
    assert f.response.headers["X-Cache"] == "STALE"
    assert f.response.headers["X-Cache-Detail"] == "stale: offline mode"
    assert abs(int(f.response.headers["Age"]) - 10 * 86400) <= 2
    assert f.response.headers["ETag"] == '"e1"'
    assert f.response.headers["Content-Length"] == str(len(body))


def test_the_key_ignores_host_case_and_the_default_port(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    harness.store_entry(flow_for(PYPI_INDEX), b"index")
    f = flow_for("https://PyPI.ORG:443/simple/requests/")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.raw_content == b"index"


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer secret"}, {"Accept": "application/vnd.pypi.simple.v1+json"}],
    ids=["credentials", "another Accept"],
)
def test_an_entry_is_not_served_to_another_variant(harness: Harness, headers: dict[str, str]) -> None:
    harness.configure(cache_offline=True)
    harness.store_entry(flow_for(PYPI_INDEX, headers={"Accept": "text/html"}), b"index")
    f = flow_for(PYPI_INDEX, headers={"Accept": "text/html", **headers})
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 504


def test_offline_head_answers_with_the_size_and_no_body(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    harness.store_entry(flow_for(PYPI_INDEX, method="HEAD"), b"0123456789")
    f = flow_for(PYPI_INDEX, method="HEAD")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 200
    assert f.response.raw_content == b""
    assert f.response.headers["Content-Length"] == "10"


def test_offline_a_corrupt_body_is_never_served(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    body = bytes(range(256)) * 400  # 100 KiB: a file of its own in the store
    harness.store_entry(flow_for(PYPI_INDEX), body)
    [val] = list(harness.cache_dir.rglob("*.val"))
    val.write_bytes(body[:-1] + b"\x00")
    f = flow_for(PYPI_INDEX)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 504


# hits


def test_a_fresh_entry_is_a_hit(harness: Harness) -> None:
    harness.configure(cache_hosts=[f"127.0.0.1:{closed_port()}"])  # the upstream is down: a hit needs none
    url = f"http://127.0.0.1:{harness.addon.settings.hosts[0].port}/simple/pkg/"  # type: ignore[union-attr]
    harness.store_entry(flow_for(url), b"fresh index", age=5)
    f = flow_for(url)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.raw_content == b"fresh index"
    assert (f.response.headers["X-Cache"], f.response.headers["X-Cache-Detail"]) == ("HIT", "fresh")
    assert f.metadata["cacheaddon"]["outcome"] is policy.Outcome.HIT


def test_a_hit_answers_the_clients_conditional_request_with_304(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    harness.store_entry(
        flow_for(PYPI_INDEX), b"index", headers=(("ETag", '"v7"'), ("Content-Type", "text/html"))
    )
    f = flow_for(PYPI_INDEX, headers={"If-None-Match": '"v7"'})
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 304
    assert f.response.raw_content == b""
    assert f.response.headers["ETag"] == '"v7"'
    assert "Content-Type" not in f.response.headers


def test_a_range_is_cut_from_the_stored_body(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    harness.store_entry(flow_for(PYPI_INDEX), b"0123456789")
    f = flow_for(PYPI_INDEX, headers={"Range": "bytes=2-5"})
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 206
    assert f.response.raw_content == b"2345"
    assert f.response.headers["Content-Range"] == "bytes 2-5/10"


def test_a_large_hit_is_streamed_through_the_relay(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    url = "https://files.pythonhosted.org/packages/xx/big-1.0.tar.gz"
    body = bytes(range(256)) * (MEMORY_LIMIT // 256 + 1)  # above the in-memory limit
    harness.store_entry(flow_for(url), body)
    f = flow_for(url)

    async def fetch_from_relay() -> bytes:
        await harness.addon.request(f)
        assert f.response is None
        assert (f.request.scheme, f.request.host, f.request.port) == (
            "http",
            "127.0.0.1",
            harness.addon.relay.port,
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", f.request.port)
        writer.write(f"GET {f.request.path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        fields = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
        )
        data = await reader.readexactly(int(fields["Content-Length"]))
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert fields["X-Cache"] == "STALE" or fields["X-Cache"] == "HIT"
        return data

    assert harness.live(fetch_from_relay) == body
    f.response = tutils.tresp()
    harness.addon.responseheaders(f)
    assert f.response.stream is True
    harness.addon.response(f)
    assert f.request.url == url  # logs and later addons see the real URL again


def test_a_large_body_within_the_memory_limit_is_answered_from_memory(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    url = "https://files.pythonhosted.org/packages/xx/mid-1.0.tar.gz"
    body = bytes(range(256)) * 12000  # 3 MB: no detour through the relay
    harness.store_entry(flow_for(url), body)
    f = flow_for(url)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.raw_content == body
    assert f.response.headers["X-Cache"] == "HIT"
    assert f.request.url == url


def test_a_body_read_into_memory_is_hashed_whatever_earlier_checks_said(harness: Harness) -> None:
    """Bytes answered from memory are kept for later hits, so they are hashed as they are read, even from a
    file this process checked before and that kept its inode, size and mtime since (bit rot)."""
    harness.configure(cache_offline=True)
    url = "https://files.pythonhosted.org/packages/xx/rot-1.0.tar.gz"
    body = bytes(range(256)) * 12000
    entry = harness.store_entry(flow_for(url), body)
    assert harness.addon.store is not None
    harness.addon.store.remember_verified(entry)  # as after a download hashed on its way in
    [val] = list(harness.cache_dir.rglob("*.val"))
    st = val.stat()
    with open(val, "r+b") as f:
        f.seek(len(body) // 2)
        f.write(b"\xff")
    os.utime(val, ns=(st.st_atime_ns, st.st_mtime_ns))
    f = flow_for(url)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 504  # dropped; offline: nothing to serve


def test_a_hit_sees_what_another_process_did_to_the_entry_since(harness: Harness) -> None:
    """A hit answers from what it remembers of the entry only while nothing was committed to the cache
    since: another process sharing the directory replaces or removes it, and the next hit sees that."""
    harness.configure(cache_offline=True)
    harness.store_entry(flow_for(PYPI_INDEX), b"old index")
    other = Store(harness.cache_dir, 1 << 30)

    async def hits() -> list[tuple[int, bytes | None]]:
        answers = []
        for step in ("hit", "hit again", "replaced", "removed"):
            if step == "replaced":
                harness.store_entry(flow_for(PYPI_INDEX), b"new index", store=other)
            elif step == "removed":
                other.delete(harness.key_of(flow_for(PYPI_INDEX)))
            f = flow_for(PYPI_INDEX)
            await harness.addon.request(f)
            assert f.response is not None
            answers.append((f.response.status_code, f.response.raw_content if step != "removed" else None))
        return answers

    try:
        assert harness.live(hits) == [
            (200, b"old index"),
            (200, b"old index"),
            (200, b"new index"),
            (504, None),
        ]
    finally:
        other.close()


def test_a_request_the_cache_does_not_answer_is_sent_with_our_timeouts(harness: Harness) -> None:
    # mitmproxy has no timeouts: a POST (npm audit) to a hanging registry would wait ten minutes there.
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"])
    f = flow_for(f"http://127.0.0.1:{port}/-/npm/v1/security/advisories/bulk", method="POST")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 502
    assert f.response.headers["X-Cache"] == "MISS"
    assert f.response.headers["X-Cache-Detail"] == "upstream connection refused"
    assert harness.addon.health.backing_off(f"http://127.0.0.1:{port}", time.time())
    # During the back-off the next one is not even tried.
    again = flow_for(f"http://127.0.0.1:{port}/-/npm/v1/security/advisories/bulk", method="POST")
    harness.live(lambda: harness.addon.request(again))
    assert again.response is not None and again.response.status_code == 503
    assert "upstream failing recently" in again.response.headers["X-Cache-Detail"]


# the upstream is down (a closed loopback port: refused at once)


def test_a_stale_entry_is_served_when_the_upstream_refuses(harness: Harness) -> None:
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"], cache_ttl=60)
    url = f"http://127.0.0.1:{port}/simple/pkg/"
    harness.store_entry(flow_for(url), b"old index", age=3600)
    f = flow_for(url)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.raw_content == b"old index"
    assert f.response.headers["X-Cache"] == "STALE"
    assert f.response.headers["X-Cache-Detail"] == "stale: upstream connection refused"
    assert harness.addon.health.backing_off(f"http://127.0.0.1:{port}", time.time())
    assert not harness.addon.health.backing_off(f"http://127.0.0.1:{port + 1}", time.time())


def test_a_miss_when_the_upstream_refuses_is_a_502_naming_the_url(harness: Harness) -> None:
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"])
    url = f"http://127.0.0.1:{port}/simple/pkg/"
    f = flow_for(url)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 502
    assert url.encode() in f.response.content
    assert f.response.headers["X-Cache-Detail"] == "upstream connection refused"


def test_without_stale_on_error_the_client_gets_the_failure(harness: Harness) -> None:
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"], cache_ttl=60, cache_stale_on_error=False)
    url = f"http://127.0.0.1:{port}/simple/pkg/"
    harness.store_entry(flow_for(url), b"old index", age=3600)
    f = flow_for(url)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 502


def test_an_outage_does_not_serve_another_variant(harness: Harness) -> None:
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"], cache_ttl=60)
    url = f"http://127.0.0.1:{port}/simple/pkg/"
    harness.store_entry(
        flow_for(url, headers={"User-Agent": "pip/a"}),
        b"variant for pip/a",
        age=3600,
        headers=(("Vary", "User-Agent"),),
        vary=(("user-agent", "pip/a"),),
    )
    f = flow_for(url, headers={"User-Agent": "pip/b"})
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None
    assert f.response.raw_content != b"variant for pip/a"
    assert f.response.status_code == 502


# registry endpoints (reverse mode)


def endpoint_flow(path: str) -> http.HTTPFlow:
    f = flow_for("https://pypi.org" + path)
    f.client_conn.proxy_mode = ProxyMode.parse("reverse:https://pypi.org@8081")
    f.client_conn.sockname = ("127.0.0.1", 8081)
    f.client_conn.timestamp_tls_setup = None  # a plain-HTTP endpoint
    return f


def test_an_endpoint_route_to_a_host_that_is_not_cached_is_refused(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    f = endpoint_flow("/_cacheaddon/https/evil.example/steal")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 403
    assert b"evil.example:443 is not in cache_hosts" in f.response.content


def test_an_endpoint_route_to_a_cached_host_on_another_port_is_refused_under_strict_hosts(
    harness: Harness,
) -> None:
    # The addon fetches routed links itself, so server_connect never sees them: the route is the gate.
    harness.configure(cache_strict_hosts=True)
    f = endpoint_flow("/_cacheaddon/https/files.pythonhosted.org:22/x")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 403


def test_a_protocol_switch_is_left_to_mitmproxy(harness: Harness) -> None:
    harness.configure()
    f = flow_for(PYPI_INDEX, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    harness.live(lambda: harness.addon.request(f))
    assert f.response is None
    assert f.request.headers.get("upgrade") == "websocket"


def test_an_index_served_through_an_endpoint_links_back_to_it(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    doc = (
        b'<a href="https://files.pythonhosted.org/packages/aa/requests-2.0.tar.gz#sha256=00ff">r</a>'
        b'<a href="https://pypi.org/simple/other/">o</a><a href="https://example.com/x">x</a>'
    )
    harness.store_entry(flow_for(PYPI_INDEX), doc, headers=(("Content-Type", "text/html"),))
    f = endpoint_flow("/simple/requests/")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 200
    assert f.response.raw_content == (
        b'<a href="http://127.0.0.1:8081/_cacheaddon/https/files.pythonhosted.org/packages/aa/'
        b'requests-2.0.tar.gz#sha256=00ff">r</a>'
        b'<a href="http://127.0.0.1:8081/simple/other/">o</a><a href="https://example.com/x">x</a>'
    )


def test_an_index_links_back_to_the_address_each_client_used(harness: Harness) -> None:
    """Rewritten documents are remembered by the stored document and the client's address: a client that
    reached the endpoint by another address never gets links to the first one's."""
    harness.configure(cache_offline=True)
    doc = b'<a href="https://files.pythonhosted.org/packages/aa/r-2.0.tar.gz">r</a>'
    harness.store_entry(flow_for(PYPI_INDEX), doc, headers=(("Content-Type", "text/html"),))
    hosts = ("mirror.example:8081", "10.0.0.5:8081", "mirror.example:8081")

    async def answers() -> list[bytes | None]:
        found = []
        for host in hosts:
            f = endpoint_flow("/simple/requests/")
            f.metadata[gate.CLIENT_HOST] = host
            await harness.addon.request(f)
            assert f.response is not None
            found.append(f.response.raw_content)
        return found

    assert harness.live(answers) == [
        f'<a href="http://{host}/_cacheaddon/https/files.pythonhosted.org/packages/aa/r-2.0.tar.gz">r</a>'.encode()
        for host in hosts
    ]


def test_an_endpoint_route_is_answered_from_the_routed_hosts_entries(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    url = "https://files.pythonhosted.org/packages/aa/requests-2.0.tar.gz"
    harness.store_entry(flow_for(url), b"tarball")
    f = endpoint_flow("/_cacheaddon/https/files.pythonhosted.org/packages/aa/requests-2.0.tar.gz")
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.raw_content == b"tarball"
    assert f.request.url == url


# failures on the addon's own path


def test_a_url_our_client_refuses_is_answered_400_with_one_log_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # An invalid IDNA label: mitmproxy takes it, httpx cannot encode it. Nothing may fall through to
    # mitmproxy's own forwarding, and the log gets one line, no traceback.
    harness.configure(cache_hosts=["*.example"])
    f = flow_for("http://a.example/simple/pkg/")
    f.request.host = "xn--a.example"
    with caplog.at_level(logging.INFO, logger="cacheaddon"):
        harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 400
    assert (f.response.headers["X-Cache"], f.response.headers["X-Cache-Detail"]) == (
        "MISS",
        "invalid request target",
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, errors
    assert "xn--a.example" in errors[0].getMessage()
    assert not harness.addon.health.backing_off("http://xn--a.example", time.time())  # not the origin's fault


@pytest.mark.parametrize("target", ["/simple/six/?\x00", "/simple/six/\r\nX-Injected: 1", "/" + "p" * 70_000])
def test_a_request_target_no_client_can_mean_is_answered_400(harness: Harness, target: str) -> None:
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"])
    f = flow_for(f"http://127.0.0.1:{port}/")
    f.request.path = target
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 400
    assert f.response.headers["X-Cache-Detail"] == "invalid request target"
    assert b"\x00" not in f.response.content and b"\r\nX-Injected" not in f.response.content


# the supply-chain guard


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cache_min_release_age", "3 days"),
        ("cache_release_age_exempt", ["mycorp-*"]),
        ("cache_release_age_missing", "sometimes"),
        ("cache_block_advisories", "/nonexistent/osv"),
    ],
)
def test_a_bad_guard_option_raises_options_error_naming_it(harness: Harness, option: str, value: Any) -> None:
    harness.configure()
    with pytest.raises(OptionsError, match=rf"^{option}: "):
        harness.configure(**{option: value})
    assert harness.addon.guard is None


def test_the_guard_is_built_only_when_asked_for_and_keeps_its_advisories(
    harness: Harness, tmp_path: Path
) -> None:
    harness.configure()
    assert harness.addon.guard is None
    (tmp_path / "osv").mkdir()
    harness.configure(cache_block_advisories=str(tmp_path / "osv"))
    first = harness.addon.guard
    assert first is not None and first.feed is not None
    harness.configure(cache_min_release_age="3d")
    assert harness.addon.guard is not None and harness.addon.guard.feed is first.feed
    harness.configure(cache_min_release_age="", cache_block_advisories="")
    assert harness.addon.guard is None


def _packument(now: float) -> bytes:
    versions = {v: {"name": "kilo", "version": v} for v in ("1.0.0", "2.0.0")}
    times = {
        "1.0.0": "2020-01-01T00:00:00.000Z",
        "2.0.0": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    doc = {"name": "kilo", "dist-tags": {"latest": "2.0.0"}, "versions": versions, "time": times}
    return json.dumps(doc).encode()


def test_the_guard_filters_a_cached_packument_and_refuses_the_young_tarball(harness: Harness) -> None:
    harness.configure(cache_offline=True, cache_min_release_age="3d")
    url = "https://registry.npmjs.org/kilo"
    json_accept = {"Accept": "application/json"}
    harness.store_entry(
        flow_for(url, headers=json_accept),
        _packument(time.time()),
        headers=(("Content-Type", "application/json"), ("ETag", '"up"')),
    )
    f = flow_for(url, headers=json_accept)
    tarball = flow_for("https://registry.npmjs.org/kilo/-/kilo-2.0.0.tgz")

    async def both() -> None:
        await harness.addon.request(f)
        await harness.addon.request(tarball)

    harness.live(both)
    assert f.response is not None and f.response.status_code == 200
    doc = json.loads(f.response.content or b"")
    assert list(doc["versions"]) == ["1.0.0"] and doc["dist-tags"] == {"latest": "1.0.0"}
    assert f.response.headers["X-Cache-Detail"] == (
        "fresh, offline; filtered: 1 version younger than 3d, latest 2.0.0 -> 1.0.0"
    )
    assert f.response.headers["ETag"] != '"up"'
    assert tarball.response is not None and tarball.response.status_code == 403
    assert b"kilo 2.0.0 was published" in (tarball.response.content or b"")
    # Counted where every process on the cache directory adds up (done() flushed them), for stats and metrics.
    totals = counters.StatsDB(harness.cache_dir).totals()
    assert totals[counters.series(counters.GUARD_REFUSALS, reason="young", ecosystem="npm")] == 1
    assert totals[counters.series(counters.GUARD_HIDDEN, reason="young", ecosystem="npm")] == 1
    assert totals[counters.series(counters.GUARD_FILTERED, ecosystem="npm")] == 1
    stats = cli_inventory.summary(totals, top=5)["guard"]
    assert stats["refused_downloads"] == [{"ecosystem": "npm", "reason": "young", "count": 1}]
    assert (stats["filtered_documents"], stats["undated_versions"]) == (1, 0)


PYPI_JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


def _store_pypi_json(harness: Harness, young_upload: float) -> None:
    """A PEP 691 page for requests with 1.0 (from 2020) and 2.0 (uploaded at young_upload)."""
    young = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(young_upload))
    files = [
        {
            "filename": f"requests-{v}.tar.gz",
            "url": f"https://files.pythonhosted.org/p/requests-{v}.tar.gz",
            "hashes": {"sha256": "00"},
            "upload-time": t,
        }
        for v, t in (("1.0", "2020-01-01T00:00:00Z"), ("2.0", young))
    ]
    doc = json.dumps({"meta": {"api-version": "1.1"}, "name": "requests", "files": files}).encode()
    harness.store_entry(
        flow_for(PYPI_INDEX, headers=PYPI_JSON),
        doc,
        headers=(("Content-Type", "application/vnd.pypi.simple.v1+json"),),
    )


def test_the_guard_filters_before_an_endpoint_rewrites(harness: Harness) -> None:
    harness.configure(cache_offline=True, cache_min_release_age="3d")
    _store_pypi_json(harness, time.time())
    f = endpoint_flow("/simple/requests/")
    f.request.headers.update(PYPI_JSON)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 200
    served = json.loads(f.response.content or b"")
    assert [x["url"] for x in served["files"]] == [
        "http://127.0.0.1:8081/_cacheaddon/https/files.pythonhosted.org/p/requests-1.0.tar.gz"
    ]


def test_what_the_guard_lets_through_an_endpoint_follows_its_rules_on_every_hit(harness: Harness) -> None:
    """The rewritten document an endpoint keeps for later hits is the stored one's: a document the guard
    filtered is rewritten afresh each time, so a version appears once it is old enough and is hidden again
    when the rules hide it, whatever was served before."""
    harness.configure(cache_offline=True, cache_min_release_age="3d")
    day = 86400.0
    _store_pypi_json(harness, time.time() - day)
    guard = harness.addon.guard
    assert guard is not None

    async def served(days_later: float) -> list[str]:
        guard.clock = lambda: time.time() + days_later * day
        f = endpoint_flow("/simple/requests/")
        f.request.headers.update(PYPI_JSON)
        await harness.addon.request(f)
        assert f.response is not None and f.response.status_code == 200
        return [x["filename"] for x in json.loads(f.response.content or b"")["files"]]

    async def over_time() -> list[list[str]]:
        return [await served(days) for days in (0, 0, 4, 4, 0)]

    both, old = ["requests-1.0.tar.gz", "requests-2.0.tar.gz"], ["requests-1.0.tar.gz"]
    assert harness.live(over_time) == [old, old, both, both, old]


def test_a_miss_is_answered_when_the_leases_cannot_be_written(harness: Harness) -> None:
    """Leases only save downloads: a flights directory that cannot be used (removed, unwritable, a full
    disk) must not turn a miss into a traceback."""
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"])
    url = f"http://127.0.0.1:{port}/simple/pkg/"
    flights = harness.cache_dir / "flights"
    for path in flights.iterdir():
        path.unlink()
    flights.rmdir()
    f = flow_for(url)
    harness.live(lambda: harness.addon.request(f))
    assert f.response is not None and f.response.status_code == 502
    assert f.response.headers["X-Cache-Detail"] == "upstream connection refused"
