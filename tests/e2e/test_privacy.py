"""Nothing about the build host leaks upstream, and no private answer reaches another client: a response to a
request with credentials is served only to the same credentials, and the credentials are never stored."""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .clients import Proxy, ProxyFactory, client_env, fetch, pip_install, report
from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, files_under
from .fakeregistry import CertPaths, FakeRegistry

pytestmark = pytest.mark.e2e

# Headers a proxy might add that tell the upstream about the client or the proxy (RFC 7239, de-facto X-*).
REVEALING = (
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
    "via",
    "forwarded",
)
CACHED_IP, OTHER_IP = "127.0.0.4", "127.0.0.5"


def revealing(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name in REVEALING}


def echo(request: OriginRequest) -> OriginReply:
    return OriginReply(
        body=f"{request.method} {request.path}\n".encode(), headers={"Content-Type": "text/plain"}
    )


@pytest.fixture
def plain_origins() -> Iterator[tuple[FakeOrigin, FakeOrigin]]:
    """Plain-HTTP origins: one in cache_hosts, one passed through."""
    cached, other = FakeOrigin(CACHED_IP), FakeOrigin(OTHER_IP)
    for origin in (cached, other):
        origin.default = echo
        origin.start()
    try:
        yield cached, other
    finally:
        cached.stop()
        other.stop()


def client(proxy: Proxy) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(proxy.bundle))
    return httpx.Client(proxy=proxy.url, verify=verify, trust_env=False, timeout=30)


def test_upstreams_never_see_forwarding_headers(
    tmp_path: Path,
    registry: FakeRegistry,
    plain_origins: tuple[FakeOrigin, FakeOrigin],
    proxy_factory: ProxyFactory,
) -> None:
    cached, other = plain_origins
    # The index host is cached; the files host (wheels) and OTHER_IP pass through mitmproxy untouched.
    proxy = proxy_factory(cache_hosts=[registry.index.ip, CACHED_IP])
    result = pip_install(tmp_path, ["foxtrot"], registry.pypi_url, client_env(proxy))
    assert result.returncode == 0, report(result, proxy)
    # Fields for the proxy or this hop alone, which no upstream may see either.
    hop = {"Proxy-Authorization": "Basic cHJveHk6c2VjcmV0", "Connection": "keep-alive, X-Hop", "X-Hop": "h"}
    with client(proxy) as http:
        assert http.post(f"{registry.index.url}/-/npm/v1/security/audits", content=b"{}").status_code == 404
        assert http.post(registry.file_url("upload"), content=b"data").status_code == 404
        for origin in (cached, other):
            assert http.get(f"{origin.url}/simple/alpha/", headers=hop).status_code == 200
            assert http.post(f"{origin.url}/upload", content=b"data", headers=hop).status_code == 200

    # Every kind of request was seen upstream: cached GET, passed-through GET, POST, plain HTTP.
    seen = {(host, r.method, r.path) for host, r in registry.requests}
    assert {("index", "GET", "/simple/foxtrot/"), ("index", "GET", "/simple/echo/")} <= seen
    assert ("files", "GET", f"/packages/{registry.wheel('foxtrot').filename}") in seen
    assert ("index", "POST", "/-/npm/v1/security/audits") in seen
    assert ("files", "POST", "/packages/upload") in seen
    for origin in (cached, other):
        assert [r.method for r in origin.requests] == ["GET", "POST"]

    received = [(host, r.method, r.path, r.headers) for host, r in registry.requests]
    received += [(o.ip, r.method, r.path, r.headers) for o in plain_origins for r in o.requests]
    leaks = [(host, method, path, revealing(h)) for host, method, path, h in received if revealing(h)]
    assert leaks == []
    hop_fields = [
        (host, path, n) for host, _, path, h in received for n in h if n in ("proxy-authorization", "x-hop")
    ]
    assert hop_fields == []
    assert [r.body for o in plain_origins for r in o.requests if r.method == "POST"] == [b"data", b"data"]


# --- credential isolation -----------------------------------------------------------------------------------


class PrivateOrigin:
    """An HTTPS origin whose /profile names the user a credential belongs to (Cache-Control: private)."""

    def __init__(self, certs: CertPaths, header: str, template: str, vary: bool = True) -> None:
        self.header, self.template, self.vary = header, template, vary
        self.tokens = {name: f"tok-{name}-{secrets.token_hex(16)}" for name in ("alice", "bob")}
        self.origin = FakeOrigin(CACHED_IP, certs=certs)
        self.origin.routes["/profile"] = self.profile

    def credential(self, user: str) -> dict[str, str]:
        return {self.header: self.template.format(self.tokens[user])}

    def profile(self, request: OriginRequest) -> OriginReply:
        value = request.headers.get(self.header, "")
        user = next((name for name, token in self.tokens.items() if token in value), "anonymous")
        return OriginReply(
            body=f"private profile of {user}\n".encode(),
            # Vary names the credential, as some registries do: its value must not end up in the record.
            headers={
                "Content-Type": "text/plain",
                "Cache-Control": "private, max-age=600",
                "Vary": f"Accept-Encoding, {self.header}" if self.vary else "Accept-Encoding",
            },
        )


@pytest.fixture(
    params=[("authorization", "Bearer {}"), ("cookie", "session={}; theme=dark")], ids=lambda p: p[0]
)
def private_origin(request: pytest.FixtureRequest, certs: CertPaths) -> Iterator[PrivateOrigin]:
    header, template = request.param
    origin = PrivateOrigin(certs, header, template)
    origin.origin.start()
    try:
        yield origin
    finally:
        origin.origin.stop()


def test_private_answers_reach_only_the_same_credentials(
    private_origin: PrivateOrigin, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_hosts=[CACHED_IP])
    url = f"{private_origin.origin.url}/profile"
    alice, bob = private_origin.credential("alice"), private_origin.credential("bob")

    def get(headers: dict[str, str]) -> tuple[str | None, bytes]:
        status, response_headers, body = fetch(proxy, url, headers)
        assert status == 200, (status, body)
        return response_headers.get("x-cache"), body

    assert get(alice) == ("MISS", b"private profile of alice\n")
    assert get({}) == ("MISS", b"private profile of anonymous\n")
    assert get(bob) == ("MISS", b"private profile of bob\n")
    assert get(alice) == ("HIT", b"private profile of alice\n")
    assert get(bob) == ("HIT", b"private profile of bob\n")
    assert get({}) == ("HIT", b"private profile of anonymous\n")
    # The origin was asked once per credential, with that credential.
    header = private_origin.header
    sent = [r.headers.get(header) for r in private_origin.origin.requests]
    assert sent == [alice[header], None, bob[header]]

    proxy.stop()  # flush everything to disk before reading it
    files = files_under(proxy.cache_dir)
    assert files, f"nothing was stored under {proxy.cache_dir}"
    for path in files:
        data = path.read_bytes()
        for user, token in private_origin.tokens.items():
            assert token.encode() not in data, f"{user}'s credential is stored in clear in {path}"


def test_a_private_answer_to_credentials_the_key_does_not_hold_is_not_stored(
    certs: CertPaths, proxy_factory: ProxyFactory
) -> None:
    """A registry token in a field of its own (not Authorization or Cookie), and no Vary naming it: the key
    cannot tell Alice from Bob, so an answer the upstream marks private must not be stored at all."""
    private = PrivateOrigin(certs, "x-auth-token", "{}", vary=False)
    private.origin.start()
    try:
        proxy = proxy_factory(cache_hosts=[CACHED_IP])
        url = f"{private.origin.url}/profile"
        for user in ("alice", "bob", "alice"):
            status, headers, body = fetch(proxy, url, private.credential(user))
            assert (status, body) == (200, f"private profile of {user}\n".encode())
            assert headers.get("x-cache") == "MISS"
            assert (
                headers.get("x-cache-detail") == "not stored: private answer to a request with x-auth-token"
            )
        status, headers, body = fetch(proxy, url)
        assert body == b"private profile of anonymous\n"
    finally:
        private.origin.stop()


def test_outage_never_serves_another_credentials_stale_answer(
    private_origin: PrivateOrigin, proxy_factory: ProxyFactory
) -> None:
    """Stale-on-error falls back to the requester's own entry, never to one stored for other credentials."""
    proxy = proxy_factory(cache_hosts=[CACHED_IP], cache_ttl=1, cache_upstream_timeout=2)
    url = f"{private_origin.origin.url}/profile"
    alice, bob = private_origin.credential("alice"), private_origin.credential("bob")
    status, headers, body = fetch(proxy, url, alice)
    assert (status, headers.get("x-cache"), body) == (200, "MISS", b"private profile of alice\n")
    time.sleep(1.5)  # stale now: an outage makes the proxy fall back to stale entries
    private_origin.origin.stop()

    status, headers, body = fetch(proxy, url, alice)
    assert (status, headers.get("x-cache"), body) == (200, "STALE", b"private profile of alice\n")
    for other in ({}, bob):
        status, headers, body = fetch(proxy, url, other)
        assert status >= 500 and b"alice" not in body, (other, status, headers, body)
        assert headers.get("x-cache") != "STALE"
