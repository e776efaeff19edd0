"""access: who may use the proxy, where it may go, and what no upstream may see."""

from __future__ import annotations

from typing import Any

import pytest

from cacheaddon import access, settings


def conf(**overrides: Any) -> settings.Settings:
    return settings.from_options({**settings.defaults(), "cache_dir": "/tmp/x", **overrides}, env={})


@pytest.mark.parametrize(
    ("connection", "strip_proxy_auth", "expected"),
    [
        ("", True, ("proxy-authorization", "proxy-connection")),
        ("keep-alive, X-Hop", True, ("proxy-authorization", "proxy-connection", "x-hop")),
        ("close, Upgrade", True, ("proxy-authorization", "proxy-connection")),
        # framing fields stay: mitmproxy has read the request by them, and the upstream must too
        ("Content-Length, Transfer-Encoding, Host", True, ("proxy-authorization", "proxy-connection")),
        # upstream_auth puts Proxy-Authorization there for the parent proxy
        ("x-a", False, ("proxy-connection", "x-a")),
    ],
)
def test_hop_fields(connection: str, strip_proxy_auth: bool, expected: tuple[str, ...]) -> None:
    assert access.hop_fields(connection, strip_proxy_auth) == expected


def test_refusal_names_the_reason() -> None:
    strict = conf(cache_strict_hosts=True, cache_hosts=["pypi.org", "registry.local:8443"])
    assert (
        access.refusal(strict, "10.0.0.1", "pypi.org", 443) == "client 10.0.0.1 is not in cache_allow_clients"
    )
    assert access.refusal(strict, "127.0.0.1", "pypi.org", 443) is None
    assert (
        access.refusal(strict, "127.0.0.1", "pypi.org", 22)
        == "pypi.org:22 is not in cache_hosts (cache_strict_hosts)"
    )
    assert access.refusal(strict, "127.0.0.1", "registry.local", 8443) is None
    assert access.refusal(conf(), "127.0.0.1", "example.com", 22) is None  # not strict: anywhere


def test_offline_opens_no_connection_at_all() -> None:
    assert access.connection_refusal(conf(cache_offline=True), "127.0.0.1", "pypi.org", 443) == (
        "offline (cache_offline)"
    )
    assert access.connection_refusal(conf(), "127.0.0.1", "pypi.org", 443) is None


@pytest.mark.parametrize(
    ("overrides", "ip", "names", "expected"),
    [
        ({}, "127.0.0.1", ["example.com"], None),
        ({}, "10.0.0.1", ["pypi.org"], "client 10.0.0.1 is not in cache_allow_clients"),
        ({"cache_offline": True}, "127.0.0.1", ["pypi.org"], "offline (cache_offline)"),
        ({"cache_strict_hosts": True}, "127.0.0.1", ["pypi.org."], None),
        (
            {"cache_strict_hosts": True},
            "127.0.0.1",
            ["example.com"],
            "not in cache_hosts (cache_strict_hosts)",
        ),
        # a name is judged without a port: a pattern on another port still names it
        (
            {"cache_strict_hosts": True, "cache_hosts": ["registry.local:8443"]},
            "127.0.0.1",
            ["registry.local"],
            None,
        ),
        (
            {"cache_strict_hosts": True, "cache_hosts": ["*.corp.example"]},
            "127.0.0.1",
            ["npm.corp.example"],
            None,
        ),
    ],
)
def test_dns_refusal(overrides: dict[str, Any], ip: str, names: list[str], expected: str | None) -> None:
    assert access.dns_refusal(conf(**overrides), ip, names) == expected
