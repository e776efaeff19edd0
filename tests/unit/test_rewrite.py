"""rewrite: links in index documents pointed back at the endpoint, and /_cacheaddon/ routes read back."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon import rewrite
from cacheaddon.rewrite import Origin

BASE = "http://127.0.0.1:8081"
PYPI = Origin("https", "pypi.org", 443)
CACHED = {"pypi.org", "files.pythonhosted.org", "[::1]", "::1"}


def cached(host: str, port: int) -> bool:
    return host in CACHED


def rewritten(doc: bytes, scheme: str = "") -> bytes:
    return rewrite.rewrite_links(doc, BASE, PYPI, cached, doc_scheme=scheme)


FILES = f"{BASE}/_cacheaddon/https/files.pythonhosted.org"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # the endpoint's own upstream maps to the endpoint's root
        (b'<a href="https://pypi.org/simple/x/">', f'<a href="{BASE}/simple/x/">'.encode()),
        (b"see https://pypi.org/ here", f"see {BASE}/ here".encode()),
        # other cached hosts go through a route; the fragment (the hash) is untouched
        (
            b'<a href="https://files.pythonhosted.org/p/x-1.whl#sha256=ab12">',
            f'<a href="{FILES}/p/x-1.whl#sha256=ab12">'.encode(),
        ),
        # npm and PEP 691 JSON
        (
            b'{"tarball":"https://files.pythonhosted.org/p/x.tgz","shasum":"ff"}',
            f'{{"tarball":"{FILES}/p/x.tgz","shasum":"ff"}}'.encode(),
        ),
        # JSON with escaped slashes stays escaped
        (
            b'{"url":"https:\\/\\/files.pythonhosted.org\\/p\\/x.whl"}',
            b'{"url":"' + FILES.replace("/", "\\/").encode() + b'\\/p\\/x.whl"}',
        ),
        # protocol-relative: the document's scheme
        (b'<a href="//files.pythonhosted.org/p/x.whl">', f'<a href="{FILES}/p/x.whl">'.encode()),
        # scheme and host in any case
        (b'<a href="HTTPS://Files.PythonHosted.ORG/p">', f'<a href="{FILES}/p">'.encode()),
        # an explicit port is kept in the route, the default port is not
        (
            b'"https://files.pythonhosted.org:8443/x"',
            f'"{BASE}/_cacheaddon/https/files.pythonhosted.org:8443/x"'.encode(),
        ),
        (b'"https://files.pythonhosted.org:443/x"', f'"{FILES}/x"'.encode()),
        # IPv6 literals keep their brackets
        (b'"http://[::1]:9000/x"', f'"{BASE}/_cacheaddon/http/[::1]:9000/x"'.encode()),
    ],
)
def test_links_to_cached_hosts_are_rewritten(doc: bytes, expected: bytes) -> None:
    assert rewritten(doc) == expected


@pytest.mark.parametrize(
    "doc",
    [
        b'<a href="https://example.org/x.whl">',  # not a cached host
        b'<a href="ftp://files.pythonhosted.org/p">',  # not http(s), and not protocol-relative either
        b'<a href="/simple/x/">',  # relative links already lead to the endpoint
        b"a path//files.pythonhosted.org/x",  # '//' inside text is not a link
        b'"https://files.pythonhosted.org.evil.example/x"',  # a longer host is another host
    ],
)
def test_other_links_are_left_alone(doc: bytes) -> None:
    assert rewritten(doc) == doc


def test_protocol_relative_links_follow_the_documents_scheme() -> None:
    assert rewritten(b'"//files.pythonhosted.org/x"', scheme="http") == (
        f'"{BASE}/_cacheaddon/http/files.pythonhosted.org/x"'.encode()
    )


_HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
_NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=30)


@given(name=_NAME, digest=_HEX)
def test_every_rewritten_link_routes_back_to_its_original_file_and_keeps_its_hash(
    name: str, digest: str
) -> None:
    original = f"https://files.pythonhosted.org/packages/{name}.whl"
    doc = f'<a href="{original}#sha256={digest}">{name}</a>'.encode()
    out = rewritten(doc).decode()
    link = re.search(r'href="([^"#]+)#sha256=([0-9a-f]+)"', out)
    assert link is not None and link[2] == digest
    path = link[1].removeprefix(BASE)
    routed = rewrite.route(path)
    assert routed is not None
    origin, file_path = routed
    assert f"{origin.scheme}://{rewrite.hostport(origin)}{file_path}" == original


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/_cacheaddon/https/files.pythonhosted.org/p/x.whl",
            (Origin("https", "files.pythonhosted.org", 443), "/p/x.whl"),
        ),
        ("/_cacheaddon/http/127.0.0.3:8080/p", (Origin("http", "127.0.0.3", 8080), "/p")),
        (
            "/_cacheaddon/http/127.0.0.3%3A8080/p",
            (Origin("http", "127.0.0.3", 8080), "/p"),
        ),  # pip escapes ':'
        ("/_cacheaddon/http/[::1]:9000/p", (Origin("http", "::1", 9000), "/p")),
        ("/_cacheaddon/http/%5B::1%5D:9000/p", (Origin("http", "::1", 9000), "/p")),
        ("/_cacheaddon/https/Files.PythonHosted.org", (Origin("https", "files.pythonhosted.org", 443), "/")),
        ("/simple/x/", None),
        ("/_cacheaddon/ftp/host/p", None),
        ("/_cacheaddon/https/host:0/p", None),
        ("/_cacheaddon/https/host:99999/p", None),
        ("/_cacheaddon/https/ho st/p", None),
        ("/_cacheaddon/https/user@host/p", None),
    ],
)
def test_routes(path: str, expected: tuple[Origin, str] | None) -> None:
    assert rewrite.route(path) == expected


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("https://pypi.org/simple/x/", f"{BASE}/simple/x/"),
        ("https://pypi.org", BASE),
        ("//files.pythonhosted.org/p/x.whl", f"{FILES}/p/x.whl"),
        ("https://example.org/x", "https://example.org/x"),
        ("/simple/x/", "/simple/x/"),
    ],
)
def test_redirect_targets_are_rewritten_like_links(location: str, expected: str) -> None:
    assert rewrite.rewrite_url(location, BASE, PYPI, cached) == expected
