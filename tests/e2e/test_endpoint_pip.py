"""pip through a registry endpoint (a reverse-proxy listener, no HTTPS_PROXY, no CA): the index's absolute
links to the files host are rewritten to the endpoint, so wheels and their PEP 658 metadata come through
the cache, and installs keep working with the files host, then the whole registry, stopped."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .clients import Proxy, ProxyFactory, client_env, fetch_direct, installed_version, pip_install, report
from .fakeregistry import PYPI_JSON, FakeRegistry

pytestmark = pytest.mark.e2e

PACKAGES = ["alpha", "bravo", "foxtrot"]
INSTALLED = {"alpha": "1.1.0", "bravo": "2.0.0", "foxtrot": "1.0.0", "echo": "3.1.0"}
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
FORMATS = {"json": ("json", "html"), "html": ("html",)}  # "json": pip's first choice; "html": all there is
RegistryFactory = Callable[..., FakeRegistry]


def routed(proxy: Proxy, registry: FakeRegistry) -> str:
    """What the endpoint turns the files host's origin into."""
    port = "" if registry.files.port == 443 else f":{registry.files.port}"
    return f"{proxy.endpoint()}/_cacheaddon/https/{registry.files.ip}{port}"


def endpoint_env(proxy: Proxy) -> dict[str, str]:
    env = client_env(bundle=proxy.bundle)  # no proxy at all: the endpoint is plain http on loopback
    assert not {"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"} & set(env)
    return env


def installed(result_dir: Path | None) -> dict[str, str | None]:
    assert result_dir is not None
    return {name: installed_version(result_dir, name) for name in INSTALLED}


def upstream_get(registry: FakeRegistry, url: str, accept: str) -> httpx.Response:
    verify = ssl.create_default_context(cafile=str(registry.certs.ca_cert))
    with httpx.Client(verify=verify, trust_env=False, timeout=10) as client:
        return client.get(url, headers={"Accept": accept})


@pytest.mark.slow  # three pip installs and a proxy start: ~3.5 s each
@pytest.mark.parametrize(
    ("fmt", "runner"),
    [("json", "mitmdump"), ("html", "mitmdump"), ("json", "cli")],
    ids=["json-mitmdump", "html-mitmdump", "json-cacheaddon-run"],
)
def test_install_through_the_endpoint_survives_the_registry_going_away(
    tmp_path: Path, registry_443: RegistryFactory, proxy_factory: ProxyFactory, fmt: str, runner: str
) -> None:
    registry = registry_443(core_metadata=True, pypi_formats=FORMATS[fmt])
    proxy = proxy_factory(endpoints=[registry.index.url], runner=runner, cache_hosts=registry.cache_hosts)
    index_url = proxy.endpoint(registry.index.url) + "/simple/"
    env = endpoint_env(proxy)

    first = pip_install(tmp_path, PACKAGES, index_url, env)
    assert first.returncode == 0, report(first, proxy)
    assert installed(first.dir) == INSTALLED

    wheels = {registry.wheel(name).filename for name in INSTALLED}
    files_paths = {r.path for host, r in registry.requests if host == "files"}
    assert {f"/packages/{w}.metadata" for w in wheels} <= files_paths, "pip did not use PEP 658 metadata"
    assert {f"/packages/{w}" for w in wheels} <= files_paths
    index_requests = [r for host, r in registry.requests if host == "index"]
    assert {f"/simple/{name}/" for name in INSTALLED} <= {r.path for r in index_requests}
    if fmt == "json":
        assert all(PYPI_JSON in r.headers.get("accept", "") for r in index_requests)
    misses = {url for outcome, url in proxy.cache_log() if outcome == "MISS"}
    file_urls = {registry.file_url(w) for w in wheels} | {registry.metadata_url(w) for w in wheels}
    assert file_urls <= misses, proxy.log_tail()  # wheels and .metadata went through the endpoint's cache

    registry.files.stop()  # every file must now come from the cache, through the endpoint
    registry.clear_requests()
    mark = proxy.log_size()
    files_down = pip_install(tmp_path, PACKAGES, index_url, env, timeout=60)
    assert files_down.returncode == 0, report(files_down, proxy)
    assert installed(files_down.dir) == INSTALLED
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in file_urls} == dict.fromkeys(file_urls, "HIT")

    registry.index.stop()
    mark = proxy.log_size()
    all_down = pip_install(tmp_path, PACKAGES, index_url, env, timeout=60)
    assert all_down.returncode == 0, report(all_down, proxy)
    assert installed(all_down.dir) == INSTALLED
    index_urls = {f"{registry.pypi_url}{name}/" for name in INSTALLED}
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in index_urls | file_urls} == dict.fromkeys(
        index_urls | file_urls, "HIT"
    ), proxy.log_text(mark)
    assert registry.requests == []


@pytest.mark.parametrize("fmt", ["json", "html"])
def test_index_links_point_at_the_endpoint_with_hashes_unchanged(
    registry_443: RegistryFactory, proxy_factory: ProxyFactory, fmt: str
) -> None:
    registry = registry_443(core_metadata=True)
    proxy = proxy_factory(endpoints=[registry.index.url], cache_hosts=registry.cache_hosts)
    accept = PIP_ACCEPT if fmt == "json" else "text/html"
    page = f"{proxy.endpoint()}/simple/alpha/"

    original = upstream_get(registry, f"{registry.pypi_url}alpha/", accept)
    status, headers, body = fetch_direct(page, {"Accept": accept})
    assert status == 200, body
    assert headers["x-cache"] == "MISS"
    assert headers["content-type"].split(";")[0] == original.headers["content-type"].split(";")[0]
    # Only the files host's origin changes: every hash, name and attribute is byte for byte as published.
    expected = original.content.replace(registry.files.url.encode(), routed(proxy, registry).encode())
    assert body == expected
    assert registry.files.url.encode() not in body

    wheels = [registry.wheel("alpha", v) for v in ("1.0.0", "1.1.0")]
    if fmt == "json":
        files = json.loads(body)["files"]
        assert [(f["url"], f["hashes"]["sha256"]) for f in files] == [
            (f"{routed(proxy, registry)}/packages/{w.filename}", w.sha256) for w in wheels
        ]
        meta_digests = [f["core-metadata"]["sha256"] for f in files]
    else:
        links = re.findall(
            r'href="([^"#]+)#sha256=([0-9a-f]+)" data-dist-info-metadata="sha256=[0-9a-f]+" '
            r'data-core-metadata="sha256=([0-9a-f]+)"',
            body.decode(),
        )
        assert [(url, digest) for url, digest, _ in links] == [
            (f"{routed(proxy, registry)}/packages/{w.filename}", w.sha256) for w in wheels
        ]
        meta_digests = [meta for _, _, meta in links]

    # The links work, through the endpoint, with the bytes their hashes promise.
    for wheel, meta_digest in zip(wheels, meta_digests, strict=True):
        link = f"{routed(proxy, registry)}/packages/{wheel.filename}"
        status, headers, data = fetch_direct(link)
        assert (status, hashlib.sha256(data).hexdigest()) == (200, wheel.sha256)
        status, headers, metadata = fetch_direct(link + ".metadata")
        assert status == 200
        assert metadata == registry.core_metadata_of(wheel.filename)
        assert hashlib.sha256(metadata).hexdigest() == meta_digest

    again = fetch_direct(page, {"Accept": accept})
    assert (again[0], again[1]["x-cache"], again[2]) == (200, "HIT", expected)


def test_a_range_on_a_cached_wheel_is_answered_from_the_cache(
    registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    wheel = registry.wheel("charlie")
    link = f"{routed(proxy, registry)}/packages/{wheel.filename}"

    status, headers, body = fetch_direct(link)
    assert (status, headers["x-cache"], body) == (200, "MISS", wheel.data)

    registry.clear_requests()
    status, headers, tail = fetch_direct(link, {"Range": "bytes=-100"})
    size = len(wheel.data)
    assert status == 206, tail
    assert headers["x-cache"] == "HIT"
    assert headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
    assert tail == wheel.data[-100:]
    assert int(headers["content-length"]) == 100

    status, headers, body = fetch_direct(link)
    assert (status, headers["x-cache"], body) == (200, "HIT", wheel.data)
    assert headers["accept-ranges"] == "bytes"
    assert registry.requests == [], "a cached wheel's range was asked of the registry"


def test_install_through_the_endpoint_with_files_on_a_non_default_port(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    wheel = registry.wheel("alpha")
    quoted = f"{routed(proxy, registry)}/packages/{wheel.filename}".replace(
        f"{registry.files.ip}:{registry.files.port}", f"{registry.files.ip}%3A{registry.files.port}"
    )
    status, _, body = fetch_direct(quoted)
    assert (status, body) == (200, wheel.data), "the %3A form of a routed link is not routed"

    result = pip_install(tmp_path, ["alpha"], proxy.endpoint() + "/simple/", endpoint_env(proxy))
    assert result.returncode == 0, report(result, proxy)
