"""The README's quick start, pasted into a fresh shell on a fresh clone, works: no .venv, no mitmproxy CA, no
proxy or CA variables. Its setup lines run as written (`scripts/serve &`, the `eval` of `scripts/env`); only
the install line, which names the real registries, becomes a pip install from the fake registry. The shell's
HOME is new, with a ~/.mitmproxy/config.yaml that gives the proxy a free port, the fake registry's CA and its
hosts to cache: what `scripts/serve` and `scripts/env` both read."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from .clients import REPO, free_port, installed_version, run_client
from .fakeregistry import FakeRegistry
from .test_env_cli import STRIPPED, STRIPPED_PREFIXES, new_venv, pip_command

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The clone creates its own .venv with pip: a few minutes on a busy 2-core machine, then the install.
TIMEOUT = 900
CLIENT_LINE = re.compile(r"^\s*(pip|npm|uv)\b")


def quick_start_setup() -> list[str]:
    """The lines of the README's first shell block that are not client installs."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"### As an HTTPS proxy.*?```sh\n(.*?)```", readme, re.DOTALL)
    assert block, "the README has no quick start block under 'As an HTTPS proxy'"
    lines = block.group(1).splitlines()
    setup = [line for line in lines if line.strip() and not CLIENT_LINE.match(line)]
    assert len(setup) == 2 and len(lines) == 3, lines  # serve, eval, the install (replaced below)
    return setup


def fresh_shell_env(home: Path) -> dict[str, str]:
    """This environment less every proxy, CA, client and virtualenv setting, with a new HOME. pip's own
    configuration (its index and wheel locations on this machine) and cache stay, for creating .venv."""
    dropped_prefixes = tuple(p for p in STRIPPED_PREFIXES if p != "PIP_")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in (*STRIPPED, "HTTPS_PROXY", "HTTP_PROXY", "PIP_CERT", "VIRTUAL_ENV", "PYTHONPATH")
        and not k.upper().startswith(dropped_prefixes)
    }
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    env["HOME"] = str(home)
    env.pop("XDG_CACHE_HOME", None)
    return env


def test_the_readme_quick_start_works_on_a_fresh_clone(tmp_path: Path, registry: FakeRegistry) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    assert not (clone / ".venv").exists()
    home = tmp_path / "home"
    confdir = home / ".mitmproxy"
    confdir.mkdir(parents=True)
    port = free_port()
    hosts = ", ".join(f'"{ip}"' for ip in (registry.index.ip, registry.files.ip))
    (confdir / "config.yaml").write_text(
        f"listen_port: {port}\nssl_verify_upstream_trusted_ca: {registry.certs.ca_cert}\n"
        f"cache_hosts: [{hosts}]\n"
    )
    venv = new_venv(tmp_path, "venv")
    install = "PIP_CONFIG_FILE=/dev/null " + pip_command(venv, registry.pypi_url, ["foxtrot"])
    serve, env_line = quick_start_setup()
    script = "\n".join(
        [
            f"cd {shlex.quote(str(clone))}",
            serve,
            "serve_pid=$!",
            'trap \'kill "$serve_pid" 2>/dev/null; wait "$serve_pid"\' EXIT',
            env_line,
            install,
        ]
    )
    # run_client kills the shell's process group (serve with it) if it outlives TIMEOUT; the trap stops serve.
    result = run_client(["bash", "-c", script], fresh_shell_env(home), tmp_path, TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert installed_version(venv, "foxtrot") == "1.0.0", output[-6000:]
    assert (confdir / "mitmproxy-ca-cert.pem").is_file()
    wheel = registry.file_url(registry.wheel("foxtrot").filename)
    assert re.search(rf"MISS 200 \d+ {re.escape(wheel)}", output), output[-6000:]  # through the cache
