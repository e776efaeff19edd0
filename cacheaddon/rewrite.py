"""Link rewriting for registry endpoints (reverse-proxy listeners). Pure functions, no I/O.

PyPI's index pages link to files.pythonhosted.org by absolute URL and npm metadata names its tarballs the
same way; an endpoint that left them alone would cache the index while every package file is fetched
directly. So in documents served through an endpoint, absolute URLs to a cached host are rewritten to the
endpoint itself: the endpoint's own upstream maps to the endpoint's root, any other cached host to
/_cacheaddon/<scheme>/<host[:port]>/... . Only the URL prefix changes: hashes stay exactly as published.
The cache keeps the upstream's original document, so one entry serves every endpoint and the forward proxy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

ROUTE = "/_cacheaddon/"
REWRITABLE = frozenset(
    {
        "text/html",
        "application/vnd.pypi.simple.v1+html",
        "application/vnd.pypi.simple.v1+json",
        "application/json",
        "application/vnd.npm.install-v1+json",
    }
)
# An absolute URL (any case of scheme), JSON-escaped (`https:\/\/host`) or not, or a protocol-relative one
# (`//host`, only where an attribute or string starts: `ftp://host` must not match as `//host`).
_URL = re.compile(
    rb"""(?i)(?:(https?):|(?<=["'\s=(]))(//|\\/\\/)([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?"""
    rb"""(?=[/\\"'#?<\s])"""
)
_ROUTED = re.compile(r"^/_cacheaddon/(https?)/([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?(/.*)?$")
_DEFAULT_PORT = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int


def is_rewritable(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in REWRITABLE


def hostport(origin: Origin) -> str:
    host = f"[{origin.host}]" if ":" in origin.host and not origin.host.startswith("[") else origin.host
    return host if _DEFAULT_PORT.get(origin.scheme) == origin.port else f"{host}:{origin.port}"


def rewrite_links(
    body: bytes, base: str, endpoint_origin: Origin, cached: Callable[[str, int], bool], doc_scheme: str = ""
) -> bytes:
    """base: the endpoint's own origin as the client reached it, e.g. http://127.0.0.1:8081; doc_scheme: the
    scheme the document was fetched with, for protocol-relative links (default: the upstream's)."""
    base_b = base.rstrip("/").encode()

    def replace(match: re.Match[bytes]) -> bytes:
        scheme = (match[1] or (doc_scheme or endpoint_origin.scheme).encode()).decode().lower()
        host = match[3].decode().lower().strip("[]")
        port = int(match[4]) if match[4] else _DEFAULT_PORT[scheme]
        origin = Origin(scheme, host, port)
        if origin == endpoint_origin:
            new = base_b
        elif cached(host, port):
            new = base_b + f"{ROUTE}{scheme}/{hostport(origin)}".encode()
        else:
            return match[0]
        return new.replace(b"/", b"\\/") if match[2] != b"//" else new

    return _URL.sub(replace, body)


def rewrite_url(url: str, base: str, endpoint_origin: Origin, cached: Callable[[str, int], bool]) -> str:
    """One URL (a redirect's Location), rewritten as a link in a document would be."""
    # Padded so that a bare "https://host" or a protocol-relative "//host/x" is delimited like in a document.
    padded = f" {url} ".encode("latin-1", "replace")
    return rewrite_links(padded, base, endpoint_origin, cached)[1:-1].decode("latin-1")


def route(path: str) -> tuple[Origin, str] | None:
    """The origin and path a rewritten /_cacheaddon/... path stands for, or None for an ordinary path."""
    if not path.startswith(ROUTE):
        return None
    # Clients may percent-encode the port's colon (pip does) or an IPv6 address's brackets.
    scheme_part, _, rest = path[len(ROUTE) :].partition("/")
    authority, slash, tail = rest.partition("/")
    path = f"{ROUTE}{scheme_part}/{unquote(authority)}{slash}{tail}"
    m = _ROUTED.match(path)
    if not m:
        return None
    scheme = m[1]
    host = m[2].lower().strip("[]")
    port = int(m[3]) if m[3] else _DEFAULT_PORT[scheme]
    if not 0 < port < 65536:
        return None
    return Origin(scheme, host, port), m[4] or "/"
