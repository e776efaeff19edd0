"""cache_block_advisories with real clients: the version an OSV advisory names is never installed (pip and
npm pick another), the package's other versions are untouched, its file is refused with 403 naming the
advisory, and a change to the advisories takes effect without a restart."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .clients import (
    Proxy,
    ProxyFactory,
    client_env,
    fetch,
    installed_version,
    npm_install,
    npm_installed_version,
    pip_install,
    report,
)
from .fakeregistry import NPM_INDEX_HOSTNAME, NPM_INDEX_IP, PYPI_JSON, FakeRegistry
from .guardpackages import add_packages, write_advisory

pytestmark = pytest.mark.e2e


def versions_offered(proxy: Proxy, registry: FakeRegistry) -> tuple[list[str], list[str]]:
    _, _, page = fetch(proxy, registry.pypi_url + "sierra/", {"Accept": PYPI_JSON})
    _, _, packument = fetch(proxy, registry.index.url + "/tango", {"Accept": "application/json"})
    return json.loads(page)["versions"], sorted(json.loads(packument)["versions"])


def test_a_malicious_version_is_never_installed_and_a_change_takes_effect_without_a_restart(
    tmp_path: Path, registry_factory: Callable[..., FakeRegistry], proxy_factory: ProxyFactory
) -> None:
    registry = registry_factory(
        default_packages=False, index_ip=NPM_INDEX_IP, index_hostname=NPM_INDEX_HOSTNAME
    )
    add_packages(registry)
    osv = tmp_path / "osv"
    write_advisory(osv, "MAL-2099-1", "PyPI", "Sierra", "1.2.0")
    write_advisory(osv, "MAL-2099-2", "npm", "tango", "2.0.0")
    write_advisory(osv, "GHSA-0000-0000-0001", "npm", "tango", "1.1.0")  # not malicious: not blocked
    proxy = proxy_factory(cache_block_advisories=str(osv))
    env = client_env(proxy)

    pip = pip_install(tmp_path, ["sierra"], registry.pypi_url, env)
    assert pip.returncode == 0, report(pip, proxy)
    assert pip.dir is not None and installed_version(pip.dir, "sierra") == "1.1.0"
    npm = npm_install(tmp_path, ["tango"], registry.npm_url, env)
    assert npm.returncode == 0, report(npm, proxy)
    assert npm.dir is not None and npm_installed_version(npm.dir, "tango") == "1.1.0"
    assert versions_offered(proxy, registry) == (["1.0.0", "1.1.0"], ["1.0.0", "1.1.0"])

    for url, advisory in (
        (registry.file_url(registry.wheel("sierra", "1.2.0").filename), "MAL-2099-1"),
        (registry.tarball_url("tango", "2.0.0"), "MAL-2099-2"),
    ):
        status, _, body = fetch(proxy, url)
        assert status == 403 and advisory.encode() in body, body

    # The advisories now name other versions: the next answers follow, the proxy running on.
    shutil.rmtree(osv)
    write_advisory(osv, "MAL-2099-3", "PyPI", "sierra", "1.1.0")
    write_advisory(osv, "MAL-2099-4", "npm", "tango", "1.1.0")
    deadline = time.monotonic() + 30
    while versions_offered(proxy, registry) != (["1.0.0", "1.2.0"], ["1.0.0", "2.0.0"]):
        assert time.monotonic() < deadline, proxy.log_tail()
        time.sleep(0.5)
    pip = pip_install(tmp_path, ["sierra"], registry.pypi_url, env)
    assert pip.returncode == 0, report(pip, proxy)
    assert pip.dir is not None and installed_version(pip.dir, "sierra") == "1.2.0"
    npm = npm_install(tmp_path, ["tango"], registry.npm_url, env)
    assert npm.returncode == 0, report(npm, proxy)
    assert npm.dir is not None and npm_installed_version(npm.dir, "tango") == "2.0.0"
    assert "cache_block_advisories: reloaded 2 advisories" in proxy.log_text()
