"""Fills the cache through a running proxy: the files a lockfile pins are fetched straight through it and
checked against their digests; requirements and package specs are handed to the real client (pip download,
npm install) with its own cache off and a clean environment, so the proxy sees exactly what a build asks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cacheaddon.lockfiles import Download

# What pip, uv and npm send for package files: the same request fields give the same cache key.
FILE_HEADERS = {"Accept": "*/*", "Accept-Encoding": "identity"}
CLIENT_TIMEOUT = 3600.0  # seconds one client run may take


@dataclass
class Fetched:
    url: str
    size: int = 0
    cached: bool = False  # X-Cache said HIT, REVALIDATED or STALE
    error: str | None = None


@dataclass
class ClientRun:
    command: list[str]
    returncode: int
    files: int
    bytes: int
    output: str = field(repr=False, default="")


OnFile = Callable[[Fetched], None]
OnBytes = Callable[[int], None]


async def fetch_all(
    downloads: Sequence[Download],
    proxy: str,
    verify: ssl.SSLContext,
    jobs: int,
    on_file: OnFile,
    on_bytes: OnBytes,
    timeout: float = 60.0,
) -> list[Fetched]:
    limit = asyncio.Semaphore(jobs)
    async with httpx.AsyncClient(
        proxy=proxy, verify=verify, trust_env=False, timeout=timeout, follow_redirects=True
    ) as client:

        async def one(download: Download) -> Fetched:
            async with limit:
                result = await _fetch(client, download, on_bytes)
            on_file(result)
            return result

        return await asyncio.gather(*(one(d) for d in downloads))


async def _fetch(client: httpx.AsyncClient, download: Download, on_bytes: OnBytes) -> Fetched:
    result = Fetched(download.url)
    algo, _, expected = download.digest.partition("=")
    try:
        digest = hashlib.new(algo)
    except ValueError:
        result.error = f"unknown digest algorithm {algo}"
        return result
    try:
        async with client.stream("GET", download.url, headers=FILE_HEADERS) as response:
            if response.status_code != 200:
                detail = response.headers.get("x-cache-detail", response.reason_phrase)
                result.error = f"HTTP {response.status_code} ({detail})"
                return result
            result.cached = response.headers.get("x-cache", "MISS") != "MISS"
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                result.size += len(chunk)
                on_bytes(len(chunk))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: a lockfile's URL no client could ask
        result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return result
    if digest.hexdigest() != expected:
        result.error = f"does not match the lockfile's {algo}"
    return result


def clean_env(proxy: str, bundle: Path) -> dict[str, str]:
    """This process's environment without client, proxy and CA settings, then the proxy and the bundle."""
    dropped = ("PIP_", "NPM_CONFIG_", "UV_", "REQUESTS_CA", "CURL_CA", "SSL_CERT", "NODE_EXTRA_CA")
    proxies = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(dropped) and k.upper() not in proxies
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "PIP_CERT", "CURL_CA_BUNDLE"):
        env[name] = str(bundle)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[name] = proxy
    return env


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
        )
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(command, 127, "", f"{exc}")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"killed after {CLIENT_TIMEOUT:.0f} s")


def _files(directory: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in directory.rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)


def pip_download(
    args: Sequence[str], proxy: str, bundle: Path, index_url: str | None, extra: Sequence[str]
) -> ClientRun:
    """`pip download` of requirements (`-r FILE`) or specs into a temporary directory, through the proxy."""
    with tempfile.TemporaryDirectory(prefix="cacheaddon-prewarm-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-cache-dir", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", "--proxy", proxy, "--cert", str(bundle),
            "-d", str(Path(tmp) / "files"),
        ]  # fmt: skip
        command += ["--index-url", index_url] if index_url else []
        command += [*extra, *args]
        done = _run(command, clean_env(proxy, bundle), Path(tmp))
        files, size = _files(Path(tmp) / "files") if (Path(tmp) / "files").is_dir() else (0, 0)
    return ClientRun(command, done.returncode, files, size, done.stdout + done.stderr)


def npm_install(
    specs: Sequence[str], proxy: str, bundle: Path, registry: str | None, extra: Sequence[str]
) -> ClientRun:
    """`npm install` of specs in a throw-away project, empty npm cache and config, through the proxy."""
    npm = shutil.which("npm") or "npm"
    with tempfile.TemporaryDirectory(prefix="cacheaddon-prewarm-") as tmp:
        project, cache = Path(tmp) / "project", Path(tmp) / "npm-cache"
        project.mkdir()
        (project / "package.json").write_text(json.dumps({"name": "cacheaddon-prewarm", "private": True}))
        # Two empty files: npm refuses one file as both user and global config.
        user, system = Path(tmp) / "user.npmrc", Path(tmp) / "global.npmrc"
        user.write_text("")
        system.write_text("")
        command = [
            npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-update-notifier",
            "--cache", str(cache), "--userconfig", str(user), "--globalconfig", str(system),
            "--cafile", str(bundle), "--https-proxy", proxy, "--proxy", proxy,
        ]  # fmt: skip
        command += ["--registry", registry] if registry else []
        command += [*extra, *specs]
        done = _run(command, clean_env(proxy, bundle), project)
        content = cache / "_cacache" / "content-v2"
        files, size = _files(content) if content.is_dir() else (0, 0)
    return ClientRun(command, done.returncode, files, size, done.stdout + done.stderr)
