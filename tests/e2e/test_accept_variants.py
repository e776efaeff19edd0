"""One URL, two representations chosen by Accept: each is cached and served separately, Vary or not."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from .clients import ProxyFactory, fetch
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
