"""`cacheaddon prewarm` through a real proxy: from an npm lockfile (each file fetched and checked) and from a
pip requirements file (real pip, caches off); then the registry is stopped and the installs still work."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from .clients import (
    ProxyFactory,
    client_env,
    installed_version,
    npm_installed_version,
    pip_compat_args,
    pip_install,
    report,
    run_client,
)
from .fakeregistry import FakeRegistry
from .ops import cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _lockfile(registry: FakeRegistry, project: Path) -> Path:
    """package.json and a lockfile-v3 package-lock.json pinning papa 1.0.0 and its dependency oscar."""
    papa, oscar = registry.npm_version("papa", "1.0.0"), registry.npm_version("oscar", "3.1.0")
    (project / "package.json").write_text(
        json.dumps({"name": "app", "version": "1.0.0", "private": True, "dependencies": {"papa": "1.0.0"}})
    )
    lock = {
        "name": "app",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"name": "app", "version": "1.0.0", "dependencies": {"papa": "1.0.0"}},
            "node_modules/papa": {
                "version": "1.0.0",
                "resolved": registry.tarball_url("papa", "1.0.0"),
                "integrity": papa.integrity,
                "dependencies": {"oscar": "^3.0.0"},
            },
            "node_modules/oscar": {
                "version": "3.1.0",
                "resolved": registry.tarball_url("oscar", "3.1.0"),
                "integrity": oscar.integrity,
            },
        },
    }
    path = project / "package-lock.json"
    path.write_text(json.dumps(lock, indent=2))
    return path


def _npm_ci(tmp_path: Path, project: Path, registry_url: str, env: dict[str, str]) -> object:
    cache = Path(tempfile.mkdtemp(prefix="npm-cache-", dir=tmp_path))
    config = Path(tempfile.mkdtemp(prefix="npmrc-", dir=tmp_path))
    (config / "user").write_text("")
    (config / "global").write_text("")
    npm = shutil.which("npm") or "npm"
    cmd = [
        npm, "ci", "--registry", registry_url, "--cache", str(cache), "--userconfig", str(config / "user"),
        "--globalconfig", str(config / "global"), "--cafile", env["SSL_CERT_FILE"], "--no-audit", "--no-fund",
        "--fetch-retries=0", "--https-proxy", env["HTTPS_PROXY"], "--proxy", env["HTTPS_PROXY"],
    ]  # fmt: skip
    return run_client(cmd, env, project)


def test_prewarm_from_a_package_lock_then_install_with_the_registry_down(
    tmp_path: Path, npm_registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    project = tmp_path / "app"
    project.mkdir()
    lock = _lockfile(npm_registry, project)
    args = ["prewarm", lock, "--proxy", proxy.url, "--cafile", proxy.bundle]
    first = cli(*args, "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    summary = json.loads(first.stdout)
    sizes = len(npm_registry.npm_version("papa").data) + len(npm_registry.npm_version("oscar").data)
    assert (summary["files"], summary["bytes"], summary["new"], summary["already_cached"]) == (2, sizes, 2, 0)
    again = json.loads(cli(*args, "--json").stdout)
    assert (again["new"], again["already_cached"], again["failures"]) == (0, 2, [])
    plain = cli(*args)  # not a terminal: one plain line per file, then the summary
    assert (
        plain.returncode == 0 and plain.stdout.count("cached ") == 2 and "prewarmed 2 files" in plain.stdout
    )

    npm_registry.stop()
    result = _npm_ci(tmp_path, project, npm_registry.npm_url, client_env(proxy))
    assert result.returncode == 0, report(result, proxy)  # type: ignore[arg-type]
    assert npm_installed_version(project, "oscar") == "3.1.0"


def test_prewarm_refuses_a_file_that_does_not_match_the_lockfile(
    tmp_path: Path, npm_registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    lock = _lockfile(npm_registry, tmp_path)
    doc = json.loads(lock.read_text())
    doc["packages"]["node_modules/oscar"]["integrity"] = npm_registry.npm_version("papa").integrity
    lock.write_text(json.dumps(doc))
    result = cli("prewarm", lock, "--proxy", proxy.url, "--cafile", proxy.bundle, "--json")
    assert result.returncode == 1
    failures = json.loads(result.stdout)["failures"]
    assert [f["what"] for f in failures] == [npm_registry.tarball_url("oscar", "3.1.0")]
    assert "does not match" in failures[0]["error"]


def test_prewarm_from_requirements_then_install_with_the_registry_down(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("foxtrot==1.0.0\n")
    compat = [f"--pip-arg={arg}" for arg in pip_compat_args()]
    result = cli(
        "prewarm", "-r", requirements, "--index-url", registry.pypi_url, "--proxy", proxy.url,
        "--cafile", proxy.bundle, *compat, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr + proxy.log_tail()
    summary = json.loads(result.stdout)
    assert summary["client_runs"][0]["exit"] == 0 and summary["files"] == 2  # foxtrot and echo

    registry.stop()
    install = pip_install(tmp_path, ["foxtrot==1.0.0"], registry.pypi_url, client_env(proxy))
    assert install.returncode == 0, report(install, proxy)
    assert install.dir is not None and installed_version(install.dir, "echo") == "3.1.0"
