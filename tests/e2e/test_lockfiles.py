"""Lockfiles written through a registry endpoint stay portable, and npm, pnpm and Yarn Berry install through
an npm endpoint cold, then again from the cache with the registry stopped.

Each client is configured as `cacheaddon config CLIENT` says. Its install through the endpoint writes a
lockfile; with the proxy stopped, a fresh project with that lockfile installs straight from the registry (as
on a machine without the cache), npm also with npm 12's default `allow-remote=none`. Yarn classic writes
every tarball's URL into yarn.lock, so it goes through the forward proxy instead (test_node_clients.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clients import Proxy, ProxyFactory, client_env, report
from .fakeregistry import FakeRegistry
from .nodeclients import Project, client_command, configure, install, new_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPENDENCIES = {"papa": "^1.0.0", "kilo": "^1.0.0", "@fake/quebec": "^1.0.0"}
INSTALLED = {"papa": "1.0.0", "kilo": "1.1.0", "@fake/quebec": "1.0.0"}


def write_lockfile(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory, client: str
) -> tuple[Proxy, Project]:
    """A cold install through the endpoint, configured as `cacheaddon config` says: the proxy, the project."""
    if client_command(client) is None:
        pytest.skip(f"{client} is not installed (scripts/test installs it)")
    proxy = proxy_factory(endpoints=[registry.index.url])
    cold = new_project(tmp_path, client, DEPENDENCIES)
    configure(cold, proxy.endpoint() + "/", endpoint=True)
    # npm as npm 12 runs by default: tarballs only from the configured registry, which the endpoint's are
    extra = ("--allow-remote=none",) if client == "npm" else ()
    first = install(cold, client_env(bundle=registry.certs.ca_cert), extra_args=extra)
    assert first.returncode == 0, report(first, proxy)
    assert cold.installed(list(INSTALLED)) == INSTALLED
    lock = cold.lockfile.read_text()
    assert proxy.endpoint() not in lock and "127.0.0.1" not in lock, lock
    return proxy, cold


@pytest.mark.parametrize("client", ["npm", "pnpm", "yarn"])
def test_a_lockfile_written_through_the_endpoint_installs_without_the_proxy(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory, client: str
) -> None:
    proxy, cold = write_lockfile(tmp_path, registry, proxy_factory, client)
    proxy.stop()
    # as on a machine without the cache: the client pointed at the registry, trusting its CA
    for extra in [()] if client != "npm" else [(), ("--allow-remote=none",)]:
        direct = new_project(tmp_path, client, DEPENDENCIES, lockfile=cold.lockfile)
        configure(direct, registry.npm_url, endpoint=False, ca=registry.certs.ca_cert)
        result = install(direct, client_env(bundle=registry.certs.ca_cert), frozen=True, extra_args=extra)
        assert result.returncode == 0, report(result)
        assert direct.installed(list(INSTALLED)) == INSTALLED


@pytest.mark.parametrize("client", ["npm", "pnpm", "yarn"])
def test_a_lockfile_written_through_the_endpoint_installs_from_the_cache_with_the_registry_stopped(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory, client: str
) -> None:
    """npm ci from a lockfile without "resolved" asks for the abbreviated packuments where npm install
    stored full ones: its Accept admits those (application/json, q=0.8), so the cache serves them."""
    proxy, cold = write_lockfile(tmp_path, registry, proxy_factory, client)
    registry.stop()
    # a fresh project, cache and store, with the lockfile
    warm = new_project(tmp_path, client, DEPENDENCIES, lockfile=cold.lockfile)
    configure(warm, proxy.endpoint() + "/", endpoint=True)
    result = install(warm, client_env(bundle=registry.certs.ca_cert), frozen=True)
    assert result.returncode == 0, report(result, proxy)
    assert warm.installed(list(INSTALLED)) == INSTALLED
    tarballs = {registry.tarball_url(name, version) for name, version in INSTALLED.items()}
    # Yarn Berry asks for a scoped tarball as @scope%2fname/-/..., npm and pnpm as @scope/name/-/...
    hits = {url.replace("%2f", "/") for outcome, url in proxy.cache_log() if outcome == "HIT"}
    assert tarballs <= hits, proxy.log_tail()


def test_an_npm_lockfile_written_without_the_cache_installs_through_the_endpoint(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    """package-lock.json naming the registry's own tarball URLs (as one written without the cache does): npm
    sends them to its configured registry, the endpoint, by its replace-registry-host (registry.npmjs.org by
    default; here the fake registry's host), so `npm ci` comes through the cache, npm 12's
    allow-remote=none accepts it, and with the registry stopped it installs from the cache."""
    if client_command("npm") is None:
        pytest.skip("npm is not installed")
    env = client_env(bundle=registry.certs.ca_cert)
    direct = new_project(tmp_path, "npm", DEPENDENCIES)
    configure(direct, registry.npm_url, endpoint=False, ca=registry.certs.ca_cert)
    written = install(direct, env)
    assert written.returncode == 0, report(written)
    assert registry.tarball_url("papa", "1.0.0") in direct.lockfile.read_text()

    proxy = proxy_factory(endpoints=[registry.index.url])
    replace = (f"--replace-registry-host={registry.index.hostname}", "--allow-remote=none")
    tarballs = {registry.tarball_url(name, version) for name, version in INSTALLED.items()}
    for expected in ("MISS", "HIT"):
        mark = proxy.log_size()
        project = new_project(tmp_path, "npm", DEPENDENCIES, lockfile=direct.lockfile)
        configure(project, proxy.endpoint() + "/", endpoint=True)
        result = install(project, env, frozen=True, extra_args=replace)
        assert result.returncode == 0, report(result, proxy)
        assert project.installed(list(INSTALLED)) == INSTALLED
        outcomes = {url: outcome for outcome, url in proxy.cache_log(mark)}
        assert {url: outcomes.get(url) for url in tarballs} == dict.fromkeys(tarballs, expected), (
            proxy.log_text(mark)
        )
        registry.stop()
