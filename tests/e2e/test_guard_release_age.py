"""cache_min_release_age with real clients: pip, uv, npm and pnpm resolve to the newest version old enough,
through the forward proxy and through registry endpoints; `latest` is moved; a direct download of a young
file is refused with 403; an exempt package gets its newest; versions appear once old enough without the
registry being asked again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cacheaddon.rulings import format_time

from .clients import (
    Proxy,
    ProxyFactory,
    client_env,
    fetch,
    fetch_direct,
    installed_version,
    npm_install,
    npm_installed_version,
    pip_install,
    pnpm_binary,
    pnpm_install,
    report,
    uv_binary,
    uv_install,
)
from .fakeregistry import NPM_ABBREVIATED, NPM_INDEX_HOSTNAME, NPM_INDEX_IP, PYPI_JSON, FakeRegistry
from .guardpackages import EXEMPT, MIN_AGE, OLD_ENOUGH, add_packages

pytestmark = pytest.mark.e2e

MODES = ["forward", "endpoint"]
GUARD = {"cache_min_release_age": MIN_AGE, "cache_release_age_exempt": EXEMPT}


def start(
    registry_factory: Callable[..., FakeRegistry], proxy_factory: ProxyFactory, mode: str, **options: object
) -> tuple[FakeRegistry, Proxy, dict[tuple[str, str], float]]:
    """The guarded packages on a registry whose index is https://localhost (npm can reach it through the
    proxy), and a proxy with the guard on, forward or with an endpoint for the registry."""
    registry = registry_factory(
        default_packages=False, index_ip=NPM_INDEX_IP, index_hostname=NPM_INDEX_HOSTNAME
    )
    published = add_packages(registry)
    endpoints = [registry.index.url] if mode == "endpoint" else []
    return registry, proxy_factory(endpoints=endpoints, **{**GUARD, **options}), published


def get(
    proxy: Proxy, registry: FakeRegistry, mode: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, httpx.Headers, bytes]:
    """A GET of a registry URL the way the mode's clients reach it: through the proxy, or at the endpoint
    (the registry's index host at its root, its files host under the route the endpoint links to)."""
    if mode == "forward":
        return fetch(proxy, url, headers)
    endpoint = proxy.endpoint()
    if url.startswith(registry.index.url + "/"):
        return fetch_direct(endpoint + url.removeprefix(registry.index.url), headers)
    return fetch_direct(f"{endpoint}/_cacheaddon/{url.replace('://', '/', 1)}", headers)


def index_url(proxy: Proxy, registry: FakeRegistry, mode: str) -> str:
    return registry.pypi_url if mode == "forward" else proxy.endpoint() + "/simple/"


def env_for(proxy: Proxy, mode: str) -> dict[str, str]:
    return client_env(proxy) if mode == "forward" else client_env(bundle=proxy.bundle)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", ["pip", "uv"])
def test_pip_and_uv_install_the_newest_version_old_enough(
    tmp_path: Path,
    registry_factory: Callable[..., FakeRegistry],
    proxy_factory: ProxyFactory,
    mode: str,
    client: str,
) -> None:
    if client == "uv" and uv_binary() is None:
        pytest.skip("uv is not installed")
    registry, proxy, published = start(registry_factory, proxy_factory, mode)
    install = pip_install if client == "pip" else uv_install
    result = install(
        tmp_path, ["sierra", "mycorp-tool"], index_url(proxy, registry, mode), env_for(proxy, mode)
    )
    assert result.returncode == 0, report(result, proxy)
    assert result.dir is not None
    assert installed_version(result.dir, "sierra") == OLD_ENOUGH["sierra"]
    assert installed_version(result.dir, "mycorp_tool") == OLD_ENOUGH["mycorp-tool"]  # exempt: its newest

    status, headers, body = get(
        proxy, registry, mode, registry.index.url + "/simple/sierra/", {"Accept": PYPI_JSON}
    )
    assert status == 200
    assert [f["filename"] for f in json.loads(body)["files"]] == [
        registry.wheel("sierra", v).filename for v in ("1.0.0", "1.1.0")
    ]
    assert headers["x-cache-detail"].endswith("; filtered: 1 version younger than 3d")

    young = registry.wheel("sierra", "1.2.0")
    fetched = [r.path for _, r in registry.requests]
    for url in (registry.file_url(young.filename), registry.metadata_url(young.filename)):
        status, _, body = get(proxy, registry, mode, url)
        assert status == 403, body
        text = body.decode()
        assert "sierra 1.2.0" in text and format_time(published[("sierra", "1.2.0")]) in text
        assert "cache_min_release_age (3d)" in text
    assert f"/packages/{young.filename}" not in fetched


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", ["npm", "pnpm"])
def test_npm_and_pnpm_install_the_newest_version_old_enough(
    tmp_path: Path,
    registry_factory: Callable[..., FakeRegistry],
    proxy_factory: ProxyFactory,
    mode: str,
    client: str,
) -> None:
    if client == "pnpm" and pnpm_binary() is None:
        pytest.skip("pnpm is not installed (scripts/test installs it)")
    registry, proxy, published = start(registry_factory, proxy_factory, mode)
    registry_url = registry.npm_url if mode == "forward" else proxy.endpoint() + "/"
    install = npm_install if client == "npm" else pnpm_install
    result = install(tmp_path, ["tango", "@mycorp/lib"], registry_url, env_for(proxy, mode))
    assert result.returncode == 0, report(result, proxy)
    assert result.dir is not None
    assert npm_installed_version(result.dir, "tango") == OLD_ENOUGH["tango"]
    assert npm_installed_version(result.dir, "@mycorp/lib") == OLD_ENOUGH["@mycorp/lib"]

    for accept in (NPM_ABBREVIATED, "application/json"):
        status, headers, body = get(proxy, registry, mode, registry.index.url + "/tango", {"Accept": accept})
        doc = json.loads(body)
        assert status == 200 and doc["dist-tags"] == {"latest": "1.1.0"}
        assert sorted(doc["versions"]) == ["1.0.0", "1.1.0"]
        assert "filtered: 1 version younger than 3d, latest 2.0.0 -> 1.1.0" in headers["x-cache-detail"]

    status, _, body = get(proxy, registry, mode, registry.tarball_url("tango", "2.0.0"))
    assert status == 403, body
    assert "tango 2.0.0" in body.decode() and format_time(published[("tango", "2.0.0")]) in body.decode()


def test_versions_appear_once_old_enough_without_asking_the_registry_again(
    registry_factory: Callable[..., FakeRegistry], proxy_factory: ProxyFactory
) -> None:
    registry = registry_factory(default_packages=False)
    now = time.time()
    soon = int(now - 3600 + 4)  # old enough for "1h" four seconds from now
    registry.add_npm("tango", "1.0.0", published=now - 9 * 86400)
    registry.add_npm("tango", "1.1.0", published=soon)
    registry.add_wheel("sierra", "1.0.0", published=now - 9 * 86400)
    registry.add_wheel("sierra", "1.1.0", published=soon)
    proxy = proxy_factory(cache_min_release_age="1h")
    packument, page = registry.index.url + "/tango", registry.pypi_url + "sierra/"

    def seen() -> tuple[list[str], list[str]]:
        _, _, npm_body = fetch(proxy, packument, {"Accept": NPM_ABBREVIATED})
        _, _, pypi_body = fetch(proxy, page, {"Accept": PYPI_JSON})
        return sorted(json.loads(npm_body)["versions"]), json.loads(pypi_body)["versions"]

    assert seen() == (["1.0.0"], ["1.0.0"])
    registry.clear_requests()
    deadline = time.monotonic() + 30
    while seen() != (["1.0.0", "1.1.0"], ["1.0.0", "1.1.0"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen() == (["1.0.0", "1.1.0"], ["1.0.0", "1.1.0"])
    assert registry.requests == [], "the cached documents should have been enough"


def test_the_html_form_takes_its_dates_from_the_json_form(
    registry_factory: Callable[..., FakeRegistry], proxy_factory: ProxyFactory
) -> None:
    registry = registry_factory(default_packages=False)
    add_packages(registry)
    proxy = proxy_factory(**GUARD)
    status, headers, body = fetch(proxy, registry.pypi_url + "sierra/", {"Accept": "text/html"})
    assert status == 200 and headers["content-type"].startswith("text/html")
    for version, shown in (("1.0.0", True), ("1.1.0", True), ("1.2.0", False)):
        wheel = registry.wheel("sierra", version)
        link = f'<a href="{registry.file_url(wheel.filename)}#sha256={wheel.sha256}">{wheel.filename}</a>'
        assert (link.encode() in body) is shown
    assert headers["x-cache-detail"].endswith("filtered: 1 version younger than 3d")
    assert ("index", "/simple/sierra/") in {(h, r.path) for h, r in registry.requests}
    accepts = {r.headers.get("accept") for _, r in registry.requests if r.path == "/simple/sierra/"}
    assert accepts == {"text/html", PYPI_JSON}
