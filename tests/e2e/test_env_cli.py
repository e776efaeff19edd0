"""`eval "$(cacheaddon env ...)"` alone sets a shell up for the forward proxy: a real pip install from an
HTTPS registry then goes through the proxy and trusts mitmproxy's CA, from an environment with no CA or proxy
settings of its own. Without the eval the same command fails."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .clients import CACHEADDON, ProxyFactory, installed_version, pip_compat_args, report, run_client
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

# What this machine (or a CI runner) may export that would set pip up without `cacheaddon env`.
STRIPPED = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "NO_PROXY", "ALL_PROXY")
STRIPPED_PREFIXES = ("PIP_", "UV_", "NPM_CONFIG_")
PROXIES = ("HTTPS_PROXY", "HTTP_PROXY")


def bare_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in STRIPPED + PROXIES
        and not k.upper().startswith(STRIPPED_PREFIXES)
        and k != "PYTHONPATH"
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def pip_command(venv: Path, index_url: str, packages: list[str]) -> str:
    cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-cache-dir"]
    cmd += ["--disable-pip-version-check", "--no-input", "--retries", "0", "--timeout", "30"]
    cmd += [*pip_compat_args(), "--index-url", index_url, *packages]
    return shlex.join(cmd)


def new_venv(tmp_path: Path, name: str) -> Path:
    venv = tmp_path / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    return venv


def test_eval_of_cacheaddon_env_is_all_pip_needs_to_install_through_the_proxy(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    env = bare_env()
    env_cmd = shlex.join([str(CACHEADDON), "env", "--proxy", proxy.url, "--confdir", str(proxy.confdir)])
    packages = ["foxtrot", "alpha"]

    control = new_venv(tmp_path, "control")
    without = run_client(["bash", "-c", pip_command(control, registry.pypi_url, packages)], env, tmp_path, 90)
    assert without.returncode != 0, report(without, proxy)  # the registry's CA is trusted by nobody here
    assert "CERTIFICATE_VERIFY_FAILED" in without.output, report(without, proxy)
    assert proxy.cache_log() == [], "the client used the proxy although nothing told it to"

    venv = new_venv(tmp_path, "venv")
    script = f'set -e\neval "$({env_cmd})"\n{pip_command(venv, registry.pypi_url, packages)}'
    result = run_client(["bash", "-c", script], env, tmp_path, 120)
    assert result.returncode == 0, report(result, proxy)
    assert installed_version(venv, "foxtrot") == "1.0.0"
    assert installed_version(venv, "echo") == "3.1.0"
    assert installed_version(venv, "alpha") == "1.1.0"

    # NO_PROXY (localhost, 127.0.0.1, ::1) does not cover the registry on 127.0.0.2/.3: all of it was proxied.
    seen = {url for _, url in proxy.cache_log()}
    wanted = {f"{registry.pypi_url}{name}/" for name in ("foxtrot", "echo", "alpha")}
    wanted |= {registry.file_url(registry.wheel(name).filename) for name in ("foxtrot", "echo", "alpha")}
    assert wanted <= seen, proxy.log_tail()
