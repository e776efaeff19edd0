"""npm, pnpm, Yarn Berry and Yarn classic as the tests drive them: one project directory each, configured as a
user would (an .npmrc or .yarnrc.yml in the project, from `cacheaddon config` when going through an
endpoint), with a HOME, cache and store of the test's own."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cacheaddon import clientconfig

from .clients import ClientResult, node_client, node_home_env, run_client

# What each client's lockfile is called, and the command that installs from it without changing it.
LOCKFILES = {"npm": "package-lock.json", "pnpm": "pnpm-lock.yaml", "yarn": "yarn.lock", "yarn1": "yarn.lock"}


def client_command(name: str) -> list[str] | None:
    if name == "npm":
        npm = shutil.which("npm")
        return [npm] if npm else None
    return node_client(name)


@dataclass
class Project:
    dir: Path
    client: str

    @property
    def lockfile(self) -> Path:
        return self.dir / LOCKFILES[self.client]

    def installed(self, names: list[str]) -> dict[str, str | None]:
        found = {}
        for name in names:
            manifest = self.dir / "node_modules" / name / "package.json"
            found[name] = json.loads(manifest.read_text())["version"] if manifest.is_file() else None
        return found


def new_project(
    tmp_path: Path, client: str, dependencies: Mapping[str, str], lockfile: Path | None = None
) -> Project:
    """A fresh project directory with package.json (and a copy of `lockfile`, if given)."""
    project = Project(Path(tempfile.mkdtemp(prefix=f"{client}-", dir=tmp_path)), client)
    manifest = {
        "name": "e2e-project",
        "version": "1.0.0",
        "private": True,
        "dependencies": dict(dependencies),
    }
    (project.dir / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if lockfile is not None:
        shutil.copy(lockfile, project.lockfile)
    return project


def configure(
    project: Project, registry: str, *, endpoint: bool, proxy: str | None = None, ca: Path | None = None
) -> None:
    """Writes the project's client configuration: for an endpoint, what `cacheaddon config CLIENT` prints;
    else a plain registry setting (a machine without the cache). `proxy`: the HTTPS proxy; `ca`: a CA file the
    client must trust (the proxy's bundle, or the fake registry's CA)."""
    if project.client == "yarn":
        if endpoint:
            lines = clientconfig.snippet("yarn", registry).splitlines()
        else:
            lines = [f'npmRegistryServer: "{registry.rstrip("/")}"']
        lines += ["nodeLinker: node-modules", "enableTelemetry: false", "enableGlobalCache: false"]
        lines += ["cacheFolder: ./.yarn-cache", "enableImmutableInstalls: false"]
        if proxy:
            lines += [f'httpsProxy: "{proxy}"', f'httpProxy: "{proxy}"']
        if ca:
            lines.append(f'httpsCaFilePath: "{ca}"')
        (project.dir / ".yarnrc.yml").write_text("\n".join(lines) + "\n")
        return
    # npm and pnpm take the .npmrc `cacheaddon config` prints; Yarn classic reads an .npmrc's registry too
    if endpoint and project.client in ("npm", "pnpm"):
        lines = clientconfig.snippet(project.client, registry).splitlines()
    else:
        lines = [f"registry={registry}"]
    if proxy:
        lines += [f"https-proxy={proxy}", f"proxy={proxy}"]
    if ca:
        lines.append(f"cafile={ca}")
    (project.dir / ".npmrc").write_text("\n".join(lines) + "\n")


def install(
    project: Project,
    env: Mapping[str, str],
    *,
    frozen: bool = False,
    extra_args: tuple[str, ...] = (),
    timeout: float = 120,
) -> ClientResult:
    """The client's install in the project (`frozen`: from the lockfile only, failing if it would change)."""
    command = client_command(project.client)
    if command is None:
        raise FileNotFoundError(f"{project.client} is not installed")
    home = project.dir.parent / f"{project.dir.name}-home"
    env = node_home_env(env, home)
    if project.client == "npm":
        args = ["ci"] if frozen else ["install"]
        args += ["--cache", str(home / "npm-cache"), "--no-audit", "--no-fund", "--fetch-retries=0"]
    elif project.client == "pnpm":
        args = ["install", "--frozen-lockfile" if frozen else "--no-frozen-lockfile"]
        args += [
            "--store-dir",
            str(home / "pnpm-store"),
            "--config.fetch-retries=0",
            "--reporter=append-only",
        ]
    elif project.client == "yarn":
        args = ["install", "--immutable"] if frozen else ["install"]
        env["YARN_GLOBAL_FOLDER"] = str(home / "yarn-berry")
    else:
        args = ["install", "--frozen-lockfile"] if frozen else ["install"]
        args += ["--cache-folder", str(home / "yarn1-cache"), "--no-progress", "--non-interactive"]
        args += ["--network-timeout", "60000"]
    result = run_client([*command, *args, *extra_args], env, project.dir, timeout)
    result.dir = project.dir
    return result
