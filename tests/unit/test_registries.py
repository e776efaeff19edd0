from __future__ import annotations

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from cacheaddon.registries import PRESETS, parse_registry, reverse_mode


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pypi", ("https://pypi.org", 8081)),
        ("npm", ("https://registry.npmjs.org", 8082)),
        ("yarn", ("https://registry.yarnpkg.com", 8083)),
        ("maven", ("https://repo1.maven.org", 8084)),
        ("rubygems", ("https://rubygems.org", 8085)),
        ("nuget", ("https://api.nuget.org", 8086)),
        ("crates", ("https://index.crates.io", 8087)),
        ("golang", ("https://proxy.golang.org", 8088)),
        ("PyPI", ("https://pypi.org", 8081)),
        (" npm ", ("https://registry.npmjs.org", 8082)),
        ("pypi@9081", ("https://pypi.org", 9081)),
        ("npm@1", ("https://registry.npmjs.org", 1)),
        ("golang@65535", ("https://proxy.golang.org", 65535)),
        ("https://repo.example.org@9000", ("https://repo.example.org", 9000)),
        ("https://repo.example.org/@9000", ("https://repo.example.org", 9000)),
        ("http://127.0.0.2:8000@9001", ("http://127.0.0.2:8000", 9001)),
        ("https://[::1]:8443@9002", ("https://[::1]:8443", 9002)),
    ],
)
def test_parse_registry(spec: str, expected: tuple[str, int]) -> None:
    assert parse_registry(spec) == expected


@pytest.mark.parametrize(
    ("spec", "detail"),
    [
        ("", "empty spec"),
        ("   ", "empty spec"),
        ("nope", "unknown registry 'nope'"),
        ("nope@9000", "unknown registry 'nope'"),
        ("pypi@", "no port after '@'"),
        ("pypi@0", "invalid port '0'"),
        ("pypi@65536", "invalid port '65536'"),
        ("pypi@abc", "invalid port 'abc'"),
        ("pypi@+80", "invalid port '+80'"),
        ("pypi@8_0", "invalid port '8_0'"),
        ("https://repo.example.org", "a URL needs a local port"),
        ("https://repo1.maven.org/maven2@8084", "has a path"),
        ("https://repo.example.org?x=1@9000", "has a path"),
        ("ftp://repo.example.org@9000", "is not an http:// or https:// URL"),
        ("https://@9000", "is not an http:// or https:// URL"),
        ("https://user:secret@repo.example.org@9000", "has credentials"),
        ("https://repo.example.org:http@9000", "invalid URL"),
    ],
)
def test_parse_registry_errors(spec: str, detail: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_registry(spec)
    message = str(info.value)
    assert message.startswith("--registry: ")
    assert detail in message
    # Every error says what is accepted, including the preset names.
    assert "NAME, NAME@PORT or URL@PORT" in message
    assert "pypi" in message and "golang" in message


def test_presets_have_distinct_ports_and_match_their_names() -> None:
    ports = [p.port for p in PRESETS.values()]
    assert len(set(ports)) == len(ports)
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.upstream.startswith("https://")
        assert preset.hosts and preset.upstream.removeprefix("https://") in preset.hosts


@pytest.mark.parametrize("name", list(PRESETS))
def test_reverse_mode_is_accepted_by_mitmproxy(name: str) -> None:
    preset = PRESETS[name]
    spec = reverse_mode(name)
    assert spec == f"reverse:{preset.upstream}@{preset.port}"
    mode = ProxyMode.parse(spec)
    assert isinstance(mode, ReverseMode)
    assert mode.custom_listen_port == preset.port
    assert mode.address == (preset.upstream.removeprefix("https://"), 443)


def test_reverse_mode_of_a_url() -> None:
    mode = ProxyMode.parse(reverse_mode("http://127.0.0.2:8000@9001"))
    assert isinstance(mode, ReverseMode)
    assert (mode.scheme, mode.address, mode.custom_listen_port) == ("http", ("127.0.0.2", 8000), 9001)


def test_mitmproxy_reverse_mode_takes_no_path() -> None:
    # Why the maven preset forwards the whole host and clients add /maven2/ themselves: if mitmproxy ever
    # accepts a path here, the preset can carry it instead.
    with pytest.raises(ValueError):
        ProxyMode.parse("reverse:https://repo1.maven.org/maven2@8084")
