"""Registry endpoints wherever they stand: an upstream outside cache_hosts or on IPv6, a client that reaches
the endpoint through a port forward, redirects, ranges and HEAD. Plain-HTTP origins the tests own."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from .clients import ProxyFactory, fetch_direct
from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, pattern_bytes, sha256

pytestmark = pytest.mark.e2e

FILE = pattern_bytes(3000, seed=7)
INFO = b"".join(b"%d.0.0 |checksum:%s\n" % (i, b"ab" * 32) for i in range(120))  # a compact index


class Registry:
    """A small index on `ip`: /simple/pkg/ links (absolutely) to its own file, /redir/pkg/ redirects there,
    /info/pkg is a text document that is not rewritten (a RubyGems compact index)."""

    def __init__(self, ip: str) -> None:
        self.origin = FakeOrigin(ip)
        self.origin.routes["/simple/pkg/"] = self.page
        self.origin.routes["/redir/pkg/"] = self.redirect
        self.origin.routes["/files/pkg-1.0.tar.gz"] = lambda r: OriginReply(body=FILE)
        self.origin.routes["/info/pkg"] = lambda r: OriginReply(
            body=INFO, headers={"Content-Type": "text/plain"}
        )

    def page(self, request: OriginRequest) -> OriginReply:
        link = f"{self.origin.url}/files/pkg-1.0.tar.gz#sha256={sha256(FILE)}"
        body = f'<html><body><a href="{link}">pkg-1.0.tar.gz</a></body></html>\n'.encode()
        return OriginReply(body=body, headers={"Content-Type": "text/html"})

    def redirect(self, request: OriginRequest) -> OriginReply:
        return OriginReply(301, b"", {"Location": f"{self.origin.url}/simple/pkg/"})


@pytest.fixture(params=["127.0.0.6", "::1"], ids=["ipv4", "ipv6"])
def upstream(request: pytest.FixtureRequest) -> Iterator[Registry]:
    registry = Registry(request.param)
    try:
        registry.origin.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {request.param}: {exc}")
    try:
        yield registry
    finally:
        registry.origin.stop()


def link_in(page: bytes) -> str:
    start = page.index(b'href="') + len(b'href="')
    return page[start : page.index(b'"', start)].decode()


def test_an_endpoints_upstream_is_cached_and_its_links_rewritten_wherever_it_is(
    upstream: Registry, proxy_factory: ProxyFactory
) -> None:
    """The upstream is in no cache_hosts pattern (the endpoint itself says it is to be cached), and may be an
    IPv6 literal: pages and files are cached, and links lead back to the endpoint."""
    proxy = proxy_factory(cache_hosts=["pypi.org"], endpoints=[upstream.origin.url])
    endpoint = proxy.endpoint()

    status, headers, page = fetch_direct(f"{endpoint}/simple/pkg/")
    assert (status, headers.get("x-cache")) == (200, "MISS"), (headers, page, proxy.log_tail())
    link = link_in(page)
    assert link == f"{endpoint}/files/pkg-1.0.tar.gz#sha256={sha256(FILE)}"
    for outcome in ("MISS", "HIT"):
        status, headers, body = fetch_direct(link.partition("#")[0])
        assert (status, headers.get("x-cache"), body) == (200, outcome, FILE), proxy.log_tail()
    assert "Addon error" not in proxy.log_text()


class Forwarder:
    """A TCP port forward on 127.0.0.1 to `target` (like ssh -L, or a container's published port)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Forwarder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(self.target, timeout=10)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(10)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def test_links_lead_to_the_address_the_client_used(proxy_factory: ProxyFactory) -> None:
    registry = Registry("127.0.0.6")
    registry.origin.start()
    try:
        proxy = proxy_factory(endpoints=[registry.origin.url])
        port = int(proxy.endpoint().rsplit(":", 1)[1])
        with Forwarder(("127.0.0.1", port)) as forward:
            via = f"http://127.0.0.1:{forward.port}"
            status, _, page = fetch_direct(f"{via}/simple/pkg/")
            assert status == 200, proxy.log_tail()
            link = link_in(page)
            assert link.startswith(f"{via}/files/"), link
            status, _, body = fetch_direct(link.partition("#")[0])
            assert (status, body) == (200, FILE)
        # A name the client used, as it sent it in Host.
        status, _, page = fetch_direct(f"http://127.0.0.1:{port}/simple/pkg/", {"Host": f"cachebox:{port}"})
        assert link_in(page).startswith(f"http://cachebox:{port}/files/"), page
        # The upstream always got its own name in Host, never the client's.
        hosts = {r.headers.get("host") for r in registry.origin.requests}
        assert hosts == {f"127.0.0.6:{registry.origin.port}"}
    finally:
        registry.origin.stop()


def test_a_redirect_to_the_upstream_leads_back_through_the_endpoint(
    upstream: Registry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[upstream.origin.url])
    endpoint = proxy.endpoint()
    with httpx.Client(trust_env=False, timeout=30) as client:
        for outcome in ("MISS", "HIT"):
            response = client.get(f"{endpoint}/redir/pkg/")
            assert response.status_code == 301, proxy.log_tail()
            assert response.headers.get("x-cache") == outcome
            assert response.headers["location"] == f"{endpoint}/simple/pkg/"


def test_ranges_on_an_endpoint_are_honoured_except_for_rewritten_documents(
    proxy_factory: ProxyFactory,
) -> None:
    registry = Registry("127.0.0.6")
    registry.origin.start()
    try:
        proxy = proxy_factory(endpoints=[registry.origin.url])
        endpoint = proxy.endpoint()
        # A compact index is not rewritten: a range of it is a range of what the client gets (Bundler).
        for outcome in ("MISS", "HIT"):
            status, headers, body = fetch_direct(f"{endpoint}/info/pkg")
            assert (status, headers.get("x-cache"), body) == (200, outcome, INFO)
        assert headers.get("accept-ranges") == "bytes"  # advertised where it is honoured: from the cache
        status, headers, body = fetch_direct(f"{endpoint}/info/pkg", {"Range": "bytes=100-"})
        assert (status, headers.get("x-cache"), body) == (206, "HIT", INFO[100:])
        assert headers["content-range"] == f"bytes 100-{len(INFO) - 1}/{len(INFO)}"

        # A rewritten page: no Accept-Ranges, and HEAD says what GET sends.
        status, headers, page = fetch_direct(f"{endpoint}/simple/pkg/")
        assert status == 200 and "accept-ranges" not in headers
        with httpx.Client(trust_env=False, timeout=30) as client:
            head = client.head(f"{endpoint}/simple/pkg/")
        assert head.status_code == 200 and head.content == b""
        assert head.headers.get("content-length") == str(len(page))
        assert "accept-ranges" not in head.headers and "content-encoding" not in head.headers
    finally:
        registry.origin.stop()
