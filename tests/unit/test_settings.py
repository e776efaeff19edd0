"""Options -> Settings: defaults, validation messages, list values, host patterns, client addresses."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon import settings

ENV = {"HOME": "/home/builder"}


def build(**overrides: Any) -> settings.Settings:
    return settings.from_options({**settings.defaults(), **overrides}, env=ENV)


def test_defaults_build_settings() -> None:
    s = build()
    assert s.cache_dir == Path("/home/builder/.cache/cacheaddon")
    assert (s.ttl, s.negative_ttl, s.upstream_timeout, s.upstream_backoff) == (86400, 600, 5, 30)
    assert (s.stale_on_error, s.offline, s.strict_hosts) == (True, False, False)
    assert s.max_object_size == 100 * 1024**2
    assert s.size_limit == 10 * 1024**3
    assert s.immutable == settings.DEFAULT_IMMUTABLE
    assert [p.host for p in s.hosts] == list(settings.DEFAULT_HOSTS)
    assert all(p.port is None for p in s.hosts)
    assert s.allow_clients == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))


def test_every_option_has_a_default_and_help() -> None:
    assert set(settings.defaults()) == set(settings.OPTION_NAMES)
    assert len(settings.OPTION_NAMES) == len(set(settings.OPTION_NAMES))
    for name, _, _, help_text in settings.OPTIONS:
        assert name.startswith("cache_")
        assert help_text.strip() and "\n" not in help_text


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        build().ttl = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cache_ttl", -1),
        ("cache_negative_ttl", -1),
        ("cache_upstream_timeout", 0),
        ("cache_upstream_timeout", -3),
        ("cache_upstream_backoff", -1),
        ("cache_max_object_size", ""),
        ("cache_max_object_size", "lots"),
        ("cache_max_object_size", "10x"),
        ("cache_max_object_size", "1.5m"),
        ("cache_max_object_size", "-1"),
        ("cache_max_object_size", "10 mb"),
        ("cache_size_limit", "big"),
        ("cache_size_limit", "1000"),
        ("cache_size_limit", "1023k"),
        ("cache_size_limit", "0"),
        ("cache_allow_clients", ["10.0.0.0/33"]),
        ("cache_allow_clients", ["localhost"]),
        ("cache_allow_clients", ["127.0.0.1, nope"]),
        ("cache_allow_clients", ["::1", "300.1.1.1"]),
        ("cache_hosts", ["bad host"]),
        ("cache_hosts", ["*"]),
        ("cache_hosts", ["*.*.org"]),
        ("cache_hosts", ["pypi.org/simple"]),
        ("cache_hosts", ["http://pypi.org"]),
        ("cache_hosts", ["pypi.org:0"]),
        ("cache_hosts", ["pypi.org:65536"]),
        ("cache_hosts", ["pypi.org:http"]),
        ("cache_hosts", ["pypi.org:"]),
        ("cache_hosts", ["pypi.org, -bad-.org"]),
        ("cache_hosts", ["[::1]:x"]),
        ("cache_hosts", ["[::1]:99999"]),
    ],
)
def test_a_bad_value_names_its_option(option: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        build(**{option: value})
    assert str(info.value).startswith(f"{option}: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("512b", 512),
        ("1k", 1024),
        ("1K", 1024),
        ("100m", 100 * 1024**2),
        (" 5m ", 5 * 1024**2),
        ("2g", 2 * 1024**3),
        ("1t", 1024**4),
        ("1048576", 1024**2),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert settings.parse_size("cache_size_limit", text) == expected


def test_the_size_limit_may_be_exactly_one_mebibyte() -> None:
    assert build(cache_size_limit="1m").size_limit == 1024**2
    assert build(cache_max_object_size="0").max_object_size == 0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ()),
        ("", ()),
        ([""], ()),
        ("a", ("a",)),
        ("a, b", ("a", "b")),
        (["a,b", " c ", ""], ("a", "b", "c")),
        ([" , a ,, "], ("a",)),
    ],
)
def test_split_list(values: list[str] | str, expected: tuple[str, ...]) -> None:
    assert settings.split_list(values) == expected


def test_list_options_take_comma_separated_values() -> None:
    s = build(
        cache_hosts=["pypi.org, files.pythonhosted.org", "*.npmjs.org"],
        cache_allow_clients=["10.0.0.0/8,192.168.1.7", "::1"],
        cache_immutable=["*.whl,*.deb"],
    )
    assert [p.host for p in s.hosts] == ["pypi.org", "files.pythonhosted.org", "*.npmjs.org"]
    assert s.allow_clients == tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.1.7", "::1"))
    assert s.immutable == ("*.whl", "*.deb")


def test_an_empty_immutable_list_turns_it_off() -> None:
    assert build(cache_immutable="").immutable == ()
    assert build(cache_immutable=[]).immutable == ()


def test_a_cidr_with_host_bits_is_accepted() -> None:
    assert build(cache_allow_clients=["10.1.2.3/8"]).allow_clients == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("pypi.org", "pypi.org", None),
        ("PyPI.Org", "pypi.org", None),
        ("pypi.org:8443", "pypi.org", 8443),
        ("*.example.org", "*.example.org", None),
        ("*.example.org:443", "*.example.org", 443),
        ("localhost", "localhost", None),
        ("127.0.0.1:3141", "127.0.0.1", 3141),
        ("::1", "::1", None),
        ("[::1]", "::1", None),
        ("[::1]:8080", "::1", 8080),
        ("[2001:DB8::1]:443", "2001:db8::1", 443),
        ("2001:db8::1", "2001:db8::1", None),
    ],
)
def test_parse_host(text: str, host: str, port: int | None) -> None:
    assert settings.parse_host("cache_hosts", text) == settings.HostPattern(host, port)


@pytest.mark.parametrize(
    ("patterns", "host", "port", "cached"),
    [
        (["pypi.org"], "pypi.org", 443, True),
        (["pypi.org"], "pypi.org", 80, True),
        (["pypi.org"], "PyPI.ORG", 443, True),
        (["pypi.org"], "files.pythonhosted.org", 443, False),
        (["pypi.org"], "evilpypi.org", 443, False),
        (["pypi.org"], "pypi.org.evil.com", 443, False),
        (["pypi.org"], "test.pypi.org", 443, False),
        (["pypi.org:8443"], "pypi.org", 8443, True),
        (["pypi.org:8443"], "pypi.org", 443, False),
        (["*.example.org"], "a.example.org", 443, True),
        (["*.example.org"], "a.b.example.org", 443, True),
        (["*.example.org"], "A.Example.Org", 443, True),
        (["*.example.org"], "example.org", 443, False),
        (["*.example.org"], "badexample.org", 443, False),
        (["*.example.org:8080"], "a.example.org", 8080, True),
        (["*.example.org:8080"], "a.example.org", 443, False),
        (["127.0.0.1:3141"], "127.0.0.1", 3141, True),
        (["127.0.0.1:3141"], "127.0.0.2", 3141, False),
        (["[::1]:8080"], "::1", 8080, True),
        (["[::1]:8080"], "[::1]", 8080, True),
        (["[::1]:8080"], "::1", 80, False),
        (["::1"], "::1", 1234, True),
        (["[2001:DB8::1]"], "2001:db8::1", 443, True),
        (["pypi.org", "*.npmjs.org"], "registry.npmjs.org", 443, True),
        ([], "pypi.org", 443, False),
    ],
)
def test_is_cached_host(patterns: list[str], host: str, port: int, cached: bool) -> None:
    assert build(cache_hosts=patterns).is_cached_host(host, port) is cached


@pytest.mark.parametrize(
    ("allowed", "address", "ok"),
    [
        (None, "127.0.0.1", True),
        (None, "127.8.9.10", True),
        (None, "::1", True),
        (None, "::ffff:127.0.0.1", True),
        (None, "::ffff:10.0.0.1", False),
        (None, "10.0.0.1", False),
        (None, "192.168.1.5", False),
        (None, "::2", False),
        (None, "fe80::1%lo", False),
        (None, "", False),
        (None, "not-an-ip", False),
        (["10.0.0.0/8"], "10.200.3.4", True),
        (["10.0.0.0/8"], "::ffff:10.200.3.4", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "127.0.0.1", False),
        (["fe80::/10"], "fe80::1%eth0", True),
        (["0.0.0.0/0"], "203.0.113.9", True),
        (["0.0.0.0/0"], "2001:db8::1", False),
        (["0.0.0.0/0", "::/0"], "2001:db8::1", True),
        ([], "127.0.0.1", False),
        # an allow-list entry written as a mapped address means its IPv4 network
        (["::ffff:10.0.0.0/104"], "10.9.9.9", True),
        (["::ffff:10.0.0.0/104"], "::ffff:10.9.9.9", True),
        (["::ffff:10.0.0.0/104"], "11.0.0.1", False),
        (["::ffff:127.0.0.3"], "127.0.0.3", True),
    ],
)
def test_is_allowed_client(allowed: list[str] | None, address: str, ok: bool) -> None:
    s = build() if allowed is None else build(cache_allow_clients=allowed)
    assert s.is_allowed_client(address) is ok


@given(st.ip_addresses(v=4))
def test_a_mapped_ipv4_client_is_judged_as_its_ipv4_address(ip: ipaddress.IPv4Address) -> None:
    s = build(cache_allow_clients=["10.0.0.0/8", "127.0.0.0/8"])
    assert s.is_allowed_client(f"::ffff:{ip}") == s.is_allowed_client(str(ip))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CACHE_HOME": "/xdg", "HOME": "/home/u"}, Path("/xdg/cacheaddon")),
        ({"HOME": "/home/u"}, Path("/home/u/.cache/cacheaddon")),
        ({"XDG_CACHE_HOME": "", "HOME": "/home/u"}, Path("/home/u/.cache/cacheaddon")),
        ({"XDG_CACHE_HOME": "/xdg"}, Path("/xdg/cacheaddon")),
    ],
)
def test_default_cache_dir(env: dict[str, str], expected: Path) -> None:
    assert settings.default_cache_dir(env) == expected
    assert settings.from_options(settings.defaults(), env=env).cache_dir == expected


def test_a_relative_xdg_cache_home_is_ignored() -> None:
    assert settings.default_cache_dir({"XDG_CACHE_HOME": "rel", "HOME": "/home/u"}) == Path(
        "/home/u/.cache/cacheaddon"
    )


def test_an_explicit_cache_dir_wins_and_expands_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/other")
    env = {"XDG_CACHE_HOME": "/xdg", "HOME": "/home/u"}
    assert settings.from_options({**settings.defaults(), "cache_dir": "/srv/c"}, env=env).cache_dir == Path(
        "/srv/c"
    )
    assert settings.from_options({**settings.defaults(), "cache_dir": "~/c"}, env=env).cache_dir == Path(
        "/home/other/c"
    )


@pytest.mark.parametrize(
    ("limit", "max_object", "stored_up_to"),
    [("20m", "100m", 5 * 1024**2), ("10g", "100m", 100 * 1024**2), ("4m", "0", 0)],
)
def test_no_object_may_take_more_than_a_quarter_of_the_cache(
    limit: str, max_object: str, stored_up_to: int
) -> None:
    assert build(cache_size_limit=limit, cache_max_object_size=max_object).max_object_size == stored_up_to


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, None),
        ({"cache_shared": "s3://fleet-cache"}, settings.SharedLocation("fleet-cache", "", "", "")),
        ({"cache_shared": "s3://fleet-cache/"}, settings.SharedLocation("fleet-cache", "", "", "")),
        (
            {"cache_shared": "s3://fleet.cache/ci//runners/"},
            settings.SharedLocation("fleet.cache", "ci/runners/", "", ""),
        ),
        (
            {
                "cache_shared": " s3://b-1/p ",
                "cache_shared_endpoint": "http://127.0.0.1:8333/",
                "cache_shared_region": "eu-west-1",
            },
            settings.SharedLocation("b-1", "p/", "http://127.0.0.1:8333", "eu-west-1"),
        ),
        (
            {"cache_shared": "s3://b-1", "cache_shared_endpoint": "https://[::1]:9000"},
            settings.SharedLocation("b-1", "", "https://[::1]:9000", ""),
        ),
    ],
)
def test_the_shared_tier_location(options: dict[str, str], expected: settings.SharedLocation | None) -> None:
    assert build(**options).shared == expected


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"cache_shared": "fleet-cache"}, "cache_shared"),
        ({"cache_shared": "https://bucket.s3.amazonaws.com/x"}, "cache_shared"),
        ({"cache_shared": "s3://"}, "cache_shared"),
        ({"cache_shared": "s3://ab"}, "cache_shared"),
        ({"cache_shared": "s3://Upper-Case"}, "cache_shared"),
        ({"cache_shared": "s3://under_score"}, "cache_shared"),
        ({"cache_shared": "s3://a..b"}, "cache_shared"),
        ({"cache_shared": "s3://" + "b" * 64}, "cache_shared"),
        ({"cache_shared": "s3://bucket/../escape"}, "cache_shared"),
        ({"cache_shared": "s3://bucket/a\x01b"}, "cache_shared"),
        ({"cache_shared": "s3://bucket", "cache_shared_endpoint": "127.0.0.1:8333"}, "cache_shared_endpoint"),
        ({"cache_shared": "s3://bucket", "cache_shared_endpoint": "ftp://host"}, "cache_shared_endpoint"),
        ({"cache_shared": "s3://bucket", "cache_shared_endpoint": "http://host:x"}, "cache_shared_endpoint"),
        ({"cache_shared": "s3://bucket", "cache_shared_endpoint": "http://h:99999"}, "cache_shared_endpoint"),
        ({"cache_shared": "s3://bucket", "cache_shared_endpoint": "http://h/?a=1"}, "cache_shared_endpoint"),
        ({"cache_shared": "s3://bucket", "cache_shared_region": "EU West"}, "cache_shared_region"),
        ({"cache_shared_endpoint": "http://127.0.0.1:8333"}, "cache_shared_endpoint"),
        ({"cache_shared_region": "eu-west-1"}, "cache_shared_region"),
        ({"cache_shared_offline": True}, "cache_shared_offline"),
    ],
)
def test_a_bad_shared_tier_option_is_named(options: dict[str, str], option: str) -> None:
    with pytest.raises(ValueError) as info:
        build(**options)
    assert str(info.value).startswith(f"{option}: ")
