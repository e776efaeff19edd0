"""Not an open proxy: clients outside cache_allow_clients get 403 on a plain request and on a CONNECT, and
with cache_strict_hosts=true every host outside cache_hosts is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .clients import ProxyFactory, fetch
from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, raw_exchange
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

CACHED_IP, OTHER_IP = "127.0.0.4", "127.0.0.5"  # plain-HTTP origins: in cache_hosts, and not
ALLOWED, REFUSED = "127.0.0.1", "127.0.0.2"  # client source addresses


def hello(request: OriginRequest) -> OriginReply:
    return OriginReply(body=b"hello from the origin\n", headers={"Content-Type": "text/plain"})


@pytest.fixture
def origins() -> Iterator[tuple[FakeOrigin, FakeOrigin]]:
    cached, other = FakeOrigin(CACHED_IP), FakeOrigin(OTHER_IP)
    for origin in (cached, other):
        origin.routes["/doc"] = hello
        origin.start()
    try:
        yield cached, other
    finally:
        cached.stop()
        other.stop()


def get(target: str, host: str = "") -> bytes:
    """A GET request; Host defaults to the authority of an absolute-form target."""
    host = host or target.split("/")[2]
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()


def hosts(registry: FakeRegistry) -> list[str]:
    return [registry.index.ip, CACHED_IP]


@pytest.mark.parametrize("destination", ["cached", "not-cached"])
def test_client_outside_allow_list_gets_403_on_request_and_connect(
    registry: FakeRegistry,
    origins: tuple[FakeOrigin, FakeOrigin],
    proxy_factory: ProxyFactory,
    destination: str,
) -> None:
    cached, other = origins
    origin = cached if destination == "cached" else other
    https_host = registry.index if destination == "cached" else registry.files
    proxy = proxy_factory(cache_hosts=hosts(registry), cache_allow_clients="127.0.0.1/32")
    mark = proxy.log_size()

    plain = raw_exchange(proxy.port, get(f"{origin.url}/doc"), source=REFUSED)
    assert plain.status == 403, plain
    assert b"hello from the origin" not in plain.body
    tunnel = raw_exchange(
        proxy.port, get("/", https_host.ip), source=REFUSED, tunnel=(https_host.ip, https_host.port)
    )
    assert tunnel.status == 403, tunnel
    assert origin.requests == [] and registry.requests == [], "a refused client's request reached an upstream"
    log = proxy.log_text(mark)
    refusals = [line for line in log.splitlines() if "refused" in line.lower() and REFUSED in line]
    assert len(refusals) >= 2, log

    # The same requests from an allowed address are served: the refusal is about the client, not the request.
    served = raw_exchange(proxy.port, get(f"{origin.url}/doc"), source=ALLOWED)
    assert served.status == 200, served
    assert served.body == b"hello from the origin\n"
    connected = raw_exchange(
        proxy.port,
        get("/simple/alpha/" if destination == "cached" else "/nothing", https_host.ip),
        source=ALLOWED,
        tunnel=(https_host.ip, https_host.port),
        cafile=proxy.bundle,
    )
    assert connected.status in (200, 404), connected  # the registry's own answer, through the tunnel


def test_default_allow_list_serves_other_loopback_addresses(
    registry: FakeRegistry, origins: tuple[FakeOrigin, FakeOrigin], proxy_factory: ProxyFactory
) -> None:
    """The default (127.0.0.0/8, ::1) lets 127.0.0.2 in: binding the source address alone causes no 403."""
    cached, _ = origins
    proxy = proxy_factory(cache_hosts=hosts(registry))
    plain = raw_exchange(proxy.port, get(f"{cached.url}/doc"), source=REFUSED)
    assert plain.status == 200, plain
    assert plain.body == b"hello from the origin\n"
    tunnel = raw_exchange(
        proxy.port,
        get("/simple/alpha/", registry.index.ip),
        source=REFUSED,
        tunnel=(registry.index.ip, registry.index.port),
        cafile=proxy.bundle,
    )
    assert tunnel.status == 200, tunnel


def test_strict_hosts_refuses_hosts_outside_cache_hosts(
    registry: FakeRegistry, origins: tuple[FakeOrigin, FakeOrigin], proxy_factory: ProxyFactory
) -> None:
    cached, other = origins
    proxy = proxy_factory(cache_hosts=hosts(registry), cache_strict_hosts=True)
    mark = proxy.log_size()

    plain = raw_exchange(proxy.port, get(f"{other.url}/doc"), source=ALLOWED)
    assert plain.status == 403, plain
    assert b"hello from the origin" not in plain.body
    tunnel = raw_exchange(
        proxy.port, get("/", registry.files.ip), tunnel=(registry.files.ip, registry.files.port)
    )
    assert tunnel.status == 403, tunnel
    assert other.requests == [] and registry.files.requests == [], "a refused host was contacted"
    log = proxy.log_text(mark)
    assert "cache_strict_hosts" in log and "refused" in log.lower(), log

    # Cached hosts still work, plain and through a tunnel.
    served = raw_exchange(proxy.port, get(f"{cached.url}/doc"), source=ALLOWED)
    assert served.status == 200, served
    assert served.body == b"hello from the origin\n"
    status, headers, body = fetch(proxy, f"{registry.pypi_url}alpha/")
    assert status == 200 and b"alpha-1.1.0" in body
    assert headers.get("x-cache") == "MISS"


def test_without_strict_hosts_other_hosts_pass_through(
    registry: FakeRegistry, origins: tuple[FakeOrigin, FakeOrigin], proxy_factory: ProxyFactory
) -> None:
    """The control case of the test above: the same requests succeed when cache_strict_hosts is off."""
    _, other = origins
    proxy = proxy_factory(cache_hosts=hosts(registry))
    plain = raw_exchange(proxy.port, get(f"{other.url}/doc"))
    assert plain.status == 200, plain
    assert plain.body == b"hello from the origin\n"
    status, _, body = fetch(proxy, registry.file_url(registry.wheel("alpha").filename))
    assert status == 200 and body == registry.wheel("alpha").data
