"""A PyPI project quarantined upstream (PEP 792) offers no files through the proxy, even files it cached
before: pip and uv fail to install it, and a direct download of its cached wheel is refused with 403."""

from __future__ import annotations

import time
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
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e


def test_a_quarantined_project_fails_to_install_although_its_files_are_cached(
    tmp_path: Path, registry_factory: Callable[..., FakeRegistry], proxy_factory: ProxyFactory
) -> None:
    registry = registry_factory(default_packages=False)
    wheel = registry.add_wheel("uniform", "1.0.0", published=time.time() - 200 * 86400)
    # A TTL of a second: the index is asked again on the next install and tells of the quarantine.
    proxy = proxy_factory(cache_min_release_age="3d", cache_ttl=1)
    env = client_env(proxy)
    first = pip_install(tmp_path, ["uniform"], registry.pypi_url, env)
    assert first.returncode == 0, report(first, proxy)
    assert first.dir is not None and installed_version(first.dir, "uniform") == "1.0.0"

    registry.project_status["uniform"] = "quarantined"
    time.sleep(1.5)
    registry.clear_requests()
    pip = pip_install(tmp_path, ["uniform"], registry.pypi_url, env)
    assert pip.returncode != 0, report(pip, proxy)
    assert "uniform" in pip.stderr and "from versions: none" in pip.stderr, report(pip, proxy)
    if uv_binary() is not None:
        uv = uv_install(tmp_path, ["uniform"], registry.pypi_url, env)
        assert uv.returncode != 0, report(uv, proxy)
        assert "uniform" in uv.stderr, report(uv, proxy)

    status, headers, body = fetch(proxy, registry.file_url(wheel.filename))
    assert status == 403, body
    assert b"PyPI project uniform is quarantined upstream (PEP 792 project status)" in body
    assert f"/packages/{wheel.filename}" not in registry.paths()  # refused, not fetched, although cached
    assert "guard: refused a download: PyPI project uniform is quarantined upstream" in proxy.log_text()
