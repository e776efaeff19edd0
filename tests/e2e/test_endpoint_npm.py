"""npm through a registry endpoint (`--registry http://127.0.0.1:PORT/`, no proxy): packuments name their
tarballs on the endpoint with the published integrity, and a fresh install with an empty npm cache works with
the registry stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, fetch_direct, npm_install, npm_installed_version, report
from .fakeregistry import NPM_ABBREVIATED, FakeRegistry

pytestmark = pytest.mark.e2e

PACKAGES = ["papa", "kilo", "lima", "@fake/quebec"]
INSTALLED = {"papa": "1.0.0", "oscar": "3.1.0", "kilo": "1.1.0", "lima": "2.0.0", "@fake/quebec": "1.0.0"}
NPM_CORGI_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


def installed(result_dir: Path | None) -> dict[str, str | None]:
    assert result_dir is not None
    return {name: npm_installed_version(result_dir, name) for name in INSTALLED}


def tarball_path(name: str, version: str) -> str:
    return f"/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def test_npm_installs_through_the_endpoint_then_from_the_cache_with_the_registry_stopped(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    endpoint = proxy.endpoint()
    env = client_env(bundle=proxy.bundle)  # no proxy variables: npm talks to the endpoint only
    assert "HTTPS_PROXY" not in env

    first = npm_install(tmp_path, PACKAGES, endpoint + "/", env)
    assert first.returncode == 0, report(first, proxy)
    assert installed(first.dir) == INSTALLED
    assert first.dir is not None
    lock = json.loads((first.dir / "package-lock.json").read_text())
    resolved = {path: meta["resolved"] for path, meta in lock["packages"].items() if path}
    assert resolved == {
        f"node_modules/{name}": endpoint + tarball_path(name, version) for name, version in INSTALLED.items()
    }
    assert {tarball_path(n, v) for n, v in INSTALLED.items()} <= set(registry.paths())

    registry.stop()
    registry.clear_requests()
    mark = proxy.log_size()
    second = npm_install(tmp_path, PACKAGES, endpoint + "/", env, timeout=60)  # a new, empty npm cache
    assert second.returncode == 0, report(second, proxy)
    assert installed(second.dir) == INSTALLED
    tarballs = {registry.tarball_url(name, version) for name, version in INSTALLED.items()}
    outcomes = proxy.cache_log(mark)
    assert tarballs <= {url for _, url in outcomes}, proxy.log_text(mark)
    assert {outcome for outcome, _ in outcomes} == {"HIT"}, proxy.log_text(mark)


@pytest.mark.parametrize("accept", [NPM_CORGI_ACCEPT, "application/json"], ids=["abbreviated", "full"])
@pytest.mark.parametrize("name", ["papa", "@fake/quebec"])
def test_packument_names_tarballs_on_the_endpoint_with_the_published_integrity(
    registry: FakeRegistry, proxy_factory: ProxyFactory, accept: str, name: str
) -> None:
    proxy = proxy_factory(endpoints=[registry.index.url])
    endpoint = proxy.endpoint()
    status, headers, body = fetch_direct(f"{endpoint}/{name.replace('/', '%2f')}", {"Accept": accept})
    assert status == 200, body
    assert headers["content-type"] == (NPM_ABBREVIATED if accept == NPM_CORGI_ACCEPT else "application/json")
    assert registry.index.url.encode() not in body
    version = registry.npm_version(name)
    dist = json.loads(body)["versions"][version.version]["dist"]
    # The endpoint's own upstream maps to the endpoint's root; the digests are as published.
    assert dist == {
        "tarball": endpoint + tarball_path(name, version.version),
        "integrity": version.integrity,
        "shasum": version.shasum,
    }
    status, headers, data = fetch_direct(dist["tarball"])
    assert (status, data) == (200, version.data)
    assert headers["x-cache"] == "MISS"
