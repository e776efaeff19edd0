"""uv.lock and pylock.toml name every file by its absolute URL. Written through the forward proxy, those are
the registry's own URLs: `uv sync --frozen` then installs from the cache with the registry stopped, and
straight from the registry with the proxy stopped. Written through a PyPI endpoint they would name the
endpoint (the README says so and why), so lockfiles are written through the forward proxy."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from .clients import ClientResult, ProxyFactory, client_env, report, run_client, uv_binary, uv_env
from .fakeregistry import FakeRegistry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(uv_binary() is None, reason="uv is not installed"),
]

DEPENDENCIES = ["foxtrot", "alpha"]


def uv(project: Path, args: list[str], env: Mapping[str, str], timeout: float = 120) -> ClientResult:
    return run_client([str(uv_binary()), *args], uv_env(env), project, timeout)


def new_project(tmp_path: Path, lockfile: Path | None = None) -> Path:
    project = Path(tempfile.mkdtemp(prefix="uv-project-", dir=tmp_path))
    deps = ", ".join(f'"{d}"' for d in DEPENDENCIES)
    meta = '[project]\nname = "e2e-project"\nversion = "1.0.0"\nrequires-python = ">=3.8"\n'
    (project / "pyproject.toml").write_text(f"{meta}dependencies = [{deps}]\n")
    if lockfile is not None:
        (project / "uv.lock").write_text(lockfile.read_text())
    return project


def sync(project: Path, env: Mapping[str, str]) -> ClientResult:
    """`uv sync --frozen`: installs exactly what uv.lock says, from the URLs it names, with no cache."""
    args = ["sync", "--frozen", "--no-install-project", "--no-cache", "--python", sys.executable]
    return uv(project, args, env)


def installed(venv_parent: Path) -> set[str]:
    return {p.name.split("-")[0] for p in venv_parent.glob(".venv/lib/python*/site-packages/*.dist-info")}


def test_uv_lock_written_through_the_proxy_syncs_with_and_without_it(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    through = client_env(proxy)

    cold = new_project(tmp_path)
    locked = uv(cold, ["lock", "--no-cache", "--default-index", registry.pypi_url], through)
    assert locked.returncode == 0, report(locked, proxy)
    lock = (cold / "uv.lock").read_text()
    assert registry.file_url(registry.wheel("foxtrot").filename) in lock, lock
    assert str(proxy.port) not in lock, lock
    first = sync(cold, through)
    assert first.returncode == 0, report(first, proxy)
    assert installed(cold) == {"foxtrot", "echo", "alpha"}

    registry.stop()
    warm = new_project(tmp_path, cold / "uv.lock")
    second = sync(warm, through)
    assert second.returncode == 0, report(second, proxy)
    assert installed(warm) == {"foxtrot", "echo", "alpha"}

    registry.start()
    proxy.stop()
    direct = new_project(tmp_path, cold / "uv.lock")
    without = client_env(bundle=registry.certs.ca_cert)
    third = sync(direct, without)
    assert third.returncode == 0, report(third)
    assert installed(direct) == {"foxtrot", "echo", "alpha"}

    # the same lock as PEP 751's pylock.toml installs without the proxy too
    exported = uv(direct, ["export", "--frozen", "--format", "pylock.toml", "-o", "pylock.toml"], without)
    assert exported.returncode == 0, report(exported)
    assert registry.file_url(registry.wheel("foxtrot").filename) in (direct / "pylock.toml").read_text()
    target = Path(tempfile.mkdtemp(prefix="venv-", dir=tmp_path))
    made = run_client([sys.executable, "-m", "venv", "--without-pip", str(target)], without, tmp_path, 60)
    assert made.returncode == 0, report(made)
    args = ["pip", "install", "--no-cache", "--python", str(target / "bin" / "python"), "-r", "pylock.toml"]
    fourth = uv(direct, args, without)
    assert fourth.returncode == 0, report(fourth)


def test_uv_lock_written_through_an_endpoint_names_the_endpoint(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    """Why the README sends Python lockfiles through the forward proxy: uv records the index and each file
    by the URL it used, and an endpoint's links lead back to itself (or the files would bypass the cache)."""
    proxy = proxy_factory(endpoints=[registry.index.url])
    project = new_project(tmp_path)
    index = proxy.endpoint() + "/simple/"
    locked = uv(project, ["lock", "--no-cache", "--default-index", index], client_env(bundle=proxy.bundle))
    assert locked.returncode == 0, report(locked, proxy)
    lock = (project / "uv.lock").read_text()
    assert f'registry = "{index.rstrip("/")}' in lock, lock
    assert f"{proxy.endpoint()}/_cacheaddon/https/" in lock, lock
