"""One URL, representations chosen by Accept: each is cached and served separately, Vary or not; and what one
client stored serves another whose Accept admits it (pip's JSON page for uv, offline and during an outage),
never one that does not (HTML for JSON, npm's abbreviated document for the full one), and an answer admitted
only by a wildcard (curl's */*) only when the registry cannot be asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .clients import (
    ProxyFactory,
    client_env,
    fetch,
    installed_version,
    pip_install,
    report,
    uv_binary,
    uv_install,
)
from .fakeregistry import NPM_ABBREVIATED, PYPI_JSON, FakeRegistry

pytestmark = pytest.mark.e2e

PIP_JSON_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
Variant = tuple[str, str, Callable[[bytes], bool]]  # Accept sent, Content-Type expected, body check
NPM_CORGI_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


def is_simple_json(body: bytes) -> bool:
    return bool(json.loads(body)["meta"]["api-version"] == "1.0")


def is_simple_html(body: bytes) -> bool:
    return body.startswith(b"<!DOCTYPE html>") and b"<a href=" in body


def is_corgi(body: bytes) -> bool:
    return set(json.loads(body)) == {"name", "modified", "dist-tags", "versions"}


def is_full_packument(body: bytes) -> bool:
    return {"description", "readme", "time"} <= set(json.loads(body))


@pytest.mark.parametrize(
    ("path", "variants"),
    [
        pytest.param(
            "simple/alpha/",
            [(PIP_JSON_ACCEPT, PYPI_JSON, is_simple_json), ("text/html", "text/html", is_simple_html)],
            id="pypi-json-html",
        ),
        pytest.param(
            "papa",
            [
                (NPM_CORGI_ACCEPT, NPM_ABBREVIATED, is_corgi),
                ("application/json", "application/json", is_full_packument),
            ],
            id="npm-abbreviated-full-no-vary",
        ),
    ],
)
def test_each_accept_variant_is_cached_separately(
    registry: FakeRegistry, proxy_factory: ProxyFactory, path: str, variants: list[Variant]
) -> None:
    proxy = proxy_factory()
    url = registry.npm_url + path  # the index host's root: both the simple API and npm live there

    for expected_cache in ("MISS", "HIT"):
        for accept, content_type, looks_right in variants:
            status, headers, body = fetch(proxy, url, {"Accept": accept})
            where = f"{expected_cache} round, Accept: {accept}"
            assert status == 200, where
            assert headers.get("x-cache") == expected_cache, (where, dict(headers), proxy.log_tail())
            assert headers.get("x-cache-detail"), where
            assert headers["content-type"].split(";")[0] == content_type, where
            assert looks_right(body), (where, body[:200])
            if expected_cache == "HIT":
                assert headers.get("age") is not None, where

    assert registry.paths().count("/" + path) == len(variants), registry.paths()


PACKAGES = ["alpha", "bravo", "foxtrot"]
INSTALLED = {"alpha": "1.1.0", "bravo": "2.0.0", "foxtrot": "1.0.0", "echo": "3.1.0"}


@pytest.mark.skipif(uv_binary() is None, reason="uv is not installed")
@pytest.mark.parametrize("without_registry", ["offline", "outage"])
def test_uv_installs_from_what_pip_cached(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory, without_registry: str
) -> None:
    """pip and uv ask for the JSON index with different Accept values: uv is served the pages pip stored."""
    proxy = proxy_factory()
    env = client_env(proxy)
    warm = pip_install(tmp_path, PACKAGES, registry.pypi_url, env)
    assert warm.returncode == 0, report(warm, proxy)
    if without_registry == "offline":
        proxy.restart(cache_offline=True)
    else:
        registry.stop()
    registry.clear_requests()
    mark = proxy.log_size()

    result = uv_install(tmp_path, PACKAGES, registry.pypi_url, env, settings={"UV_HTTP_RETRIES": "0"})
    assert result.returncode == 0, report(result, proxy)
    assert result.dir is not None
    assert {name: installed_version(result.dir, name) for name in INSTALLED} == INSTALLED
    outcomes = proxy.cache_log(mark)
    pages = {f"{registry.pypi_url}{name}/" for name in INSTALLED}
    # the pages are fresh: served at once, the registry never asked for them
    assert {(outcome, url) for outcome, url in outcomes if url in pages} == {("HIT", p) for p in pages}, (
        proxy.log_text(mark)
    )
    assert {outcome for outcome, _ in outcomes} <= {"HIT", "STALE"}, proxy.log_text(mark)
    if without_registry == "offline":
        assert registry.requests == [], "an offline proxy contacted the registry"
    status, headers, body = fetch(
        proxy, f"{registry.pypi_url}alpha/", {"Accept": PIP_JSON_ACCEPT.replace("0.1", "0.2")}
    )
    assert (status, headers.get("x-cache")) == (200, "HIT") and is_simple_json(body)
    assert f"negotiated {PYPI_JSON}" in headers["x-cache-detail"]


def test_a_wildcard_gets_what_the_registry_sends_while_it_can_be_asked(
    registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    """curl's */* would get HTML from the registry: while the registry answers, pip's JSON is not served to
    it; offline, what is stored is, but never to a client that asks only for HTML."""
    proxy = proxy_factory()
    url = f"{registry.pypi_url}alpha/"
    status, headers, body = fetch(proxy, url, {"Accept": PIP_JSON_ACCEPT})
    assert (status, headers.get("x-cache")) == (200, "MISS") and is_simple_json(body)

    status, headers, body = fetch(proxy, url, {"Accept": "*/*"})
    assert (status, headers.get("x-cache")) == (200, "MISS") and is_simple_html(body), headers
    assert registry.paths().count("/simple/alpha/") == 2

    other = f"{registry.pypi_url}bravo/"
    status, headers, body = fetch(proxy, other, {"Accept": PIP_JSON_ACCEPT})
    assert (status, headers.get("x-cache")) == (200, "MISS") and is_simple_json(body)
    proxy.restart(cache_offline=True)
    status, headers, body = fetch(proxy, other, {"Accept": "*/*"})
    assert (status, headers.get("x-cache")) == (200, "HIT") and is_simple_json(body), headers
    assert headers["x-cache-detail"] == f"fresh, offline; negotiated {PYPI_JSON}"
    status, headers, _ = fetch(proxy, other, {"Accept": "text/html"})
    assert status == 504, headers


def test_npm_abbreviated_request_is_served_the_stored_full_document_never_the_reverse(
    npm_registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    """npm's abbreviated Accept admits application/json (q=0.8): the full packument npm install stored serves
    npm ci and pnpm; a request for the full document is never served the abbreviated one."""
    proxy = proxy_factory()
    full, abbreviated = npm_registry.npm_url + "papa", npm_registry.npm_url + "oscar"
    status, headers, body = fetch(proxy, full, {"Accept": "application/json"})
    assert (status, headers.get("x-cache")) == (200, "MISS") and is_full_packument(body)
    status, headers, body = fetch(proxy, abbreviated, {"Accept": NPM_CORGI_ACCEPT})
    assert (status, headers.get("x-cache")) == (200, "MISS") and is_corgi(body)

    npm_registry.stop()
    status, headers, body = fetch(proxy, full, {"Accept": NPM_CORGI_ACCEPT})
    assert (status, headers.get("x-cache")) == (200, "HIT") and is_full_packument(body), headers
    assert headers["x-cache-detail"] == "fresh; negotiated application/json"
    status, headers, _ = fetch(proxy, abbreviated, {"Accept": "application/json"})
    assert status == 502 and headers.get("x-cache") == "MISS", headers
