"""Registry presets for the reverse-proxy endpoints, and the `--registry` spec parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Preset:
    """A public registry and the local port its reverse-proxy endpoint listens on by default."""

    name: str
    upstream: str
    port: int
    # Every host the registry's clients fetch from: index pages often link to a second host
    # (pypi.org -> files.pythonhosted.org), which only the forward proxy or a link rewrite can cache.
    hosts: tuple[str, ...]


# mitmproxy's reverse mode takes no path in its target (`server_spec` allows only a trailing "/"),
# so Maven Central's endpoint forwards the whole host: clients must use http://127.0.0.1:8084/maven2/.
PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            Preset("pypi", "https://pypi.org", 8081, ("pypi.org", "files.pythonhosted.org")),
            Preset("npm", "https://registry.npmjs.org", 8082, ("registry.npmjs.org",)),
            Preset("yarn", "https://registry.yarnpkg.com", 8083, ("registry.yarnpkg.com",)),
            Preset("maven", "https://repo1.maven.org", 8084, ("repo1.maven.org", "repo.maven.apache.org")),
            Preset("rubygems", "https://rubygems.org", 8085, ("rubygems.org", "index.rubygems.org")),
            Preset("nuget", "https://api.nuget.org", 8086, ("api.nuget.org",)),
            Preset("crates", "https://index.crates.io", 8087, ("index.crates.io", "static.crates.io")),
            Preset("golang", "https://proxy.golang.org", 8088, ("proxy.golang.org",)),
        )
    }
)

_ACCEPTED = (
    f"expected NAME, NAME@PORT or URL@PORT (e.g. pypi, npm@9082, https://repo.example.org@9000), "
    f"NAME one of {', '.join(PRESETS)}"
)


def _error(detail: str) -> ValueError:
    return ValueError(f"--registry: {detail}; {_ACCEPTED}")


def _port(text: str, spec: str) -> int:
    # int() alone would accept " 80", "+80" and "8_0": ask for plain digits.
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise _error(f"invalid port {text!r} in {spec!r}")
    return int(text)


def _upstream_url(text: str, spec: str) -> str:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as e:
        raise _error(f"invalid URL {text!r} in {spec!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _error(f"{text!r} in {spec!r} is not an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise _error(f"{text!r} in {spec!r} has credentials, which mitmproxy's reverse mode cannot take")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _error(
            f"{text!r} in {spec!r} has a path: mitmproxy's reverse mode forwards a whole host, "
            "so give the host only and point clients at the path"
        )
    return f"{parts.scheme}://{parts.netloc}"


def parse_registry(spec: str) -> tuple[str, int]:
    """Parse a `--registry` spec into the upstream URL and the local port; raises ValueError."""
    text = spec.strip()
    if not text:
        raise _error("empty spec")
    # rpartition: the listen port is always the last "@", as in mitmproxy's mode specs.
    head, at, tail = text.rpartition("@")
    if not at:
        head, tail = text, ""
    elif not tail:
        raise _error(f"no port after '@' in {spec!r}")
    port = _port(tail, spec) if tail else None

    preset = PRESETS.get(head.lower())
    if preset is not None:
        return preset.upstream, port if port is not None else preset.port
    if "://" not in head:
        raise _error(f"unknown registry {head!r}")
    url = _upstream_url(head, spec)
    if port is None:
        raise _error(f"a URL needs a local port: {head}@PORT")
    return url, port


def reverse_mode(spec: str) -> str:
    """The mitmproxy mode string (`reverse:URL@PORT`) for a `--registry` spec."""
    url, port = parse_registry(spec)
    return f"reverse:{url}@{port}"
