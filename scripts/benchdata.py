"""Real packages for the benchmarks, and a local registry that serves them over plain HTTP on loopback.

`prepare` fetches them once into the data folder (default ~/.cache/cacheaddon-bench, outside the repository)
with the ordinary clients: `pip download` of 26 pinned wheels from PyPI, and for two npm workloads a lockfile
resolved by `npm install --package-lock-only` plus `npm pack` of every package in it. Later runs reuse them.

`serve` is the registry (run as its own process, so that its threads do not share the benchmark's GIL):
an index host (PyPI simple pages with absolute links to a files host, as pypi.org links to
files.pythonhosted.org; npm packuments whose tarball links are absolute, on the index host as on the npm
registry) and a files host (wheels). Each answers GET /_requests with the number of requests it served.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

DATA = Path(os.environ.get("CACHEADDON_BENCH_DATA", "~/.cache/cacheaddon-bench")).expanduser()

# 26 pure-Python wheels (py3-none-any: the same files on any machine), pinned so every run measures the same.
WHEELS = (
    "requests==2.32.3 urllib3==2.2.3 idna==3.10 certifi==2024.8.30 click==8.1.7 flask==3.0.3 werkzeug==3.0.4 "
    "jinja2==3.1.4 itsdangerous==2.2.0 blinker==1.8.2 attrs==24.2.0 packaging==24.1 six==1.16.0 "
    "python-dateutil==2.9.0.post0 tomli==2.0.2 typing-extensions==4.12.2 pluggy==1.5.0 iniconfig==2.0.0 "
    "pytest==8.3.3 rich==13.9.2 pygments==2.18.0 markdown-it-py==3.0.0 mdurl==0.1.2 h11==0.14.0 anyio==4.6.2 "
    "sniffio==1.3.1"
).split()
# npm workloads: the top-level dependencies; their closure is resolved once by npm and kept in the lockfile.
NPM_WORKLOADS: Mapping[str, Mapping[str, str]] = {
    "npm-small": {
        "chalk": "4.1.2",
        "commander": "11.1.0",
        "debug": "4.3.4",
        "semver": "7.6.0",
        "yargs": "17.7.2",
        "glob": "8.1.0",
        "uuid": "9.0.1",
        "minimist": "1.2.8",
    },
    # a test runner, a bundler and a linter, as a front-end project's devDependencies pull them in
    "npm-large": {
        "jest": "29.7.0",
        "webpack": "5.94.0",
        "webpack-cli": "5.1.4",
        "eslint": "8.57.0",
        "@babel/preset-env": "7.25.4",
        "mocha": "10.7.3",
    },
}
_TIMEOUT = 900


# --- prepare ------------------------------------------------------------------------------------------------


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... failed: {(done.stdout + done.stderr).strip()[-800:]}")
    return done.stdout


def prepare_wheels(data: Path) -> Path:
    folder = data / "wheels"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fetching {len(WHEELS)} wheels from PyPI into {folder} (once)...", flush=True)
    _run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
        + WHEELS,
        folder,
    )
    if len(list(folder.glob("*.whl"))) != len(WHEELS):
        raise RuntimeError(f"expected {len(WHEELS)} wheels in {folder}")
    (folder / "done").write_text("")
    return folder


def _platform_ok(meta: Mapping[str, object]) -> bool:
    """Whether npm installs this lockfile entry here (optional platform packages of other systems: not)."""
    arch = {"x86_64": "x64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    for field, here in (("os", "linux"), ("cpu", arch)):
        wanted = meta.get(field)
        if isinstance(wanted, list) and wanted:
            allowed = [w for w in wanted if not str(w).startswith("!")]
            if (allowed and here not in allowed) or f"!{here}" in wanted:
                return False
    return True


def lock_packages(lock: Mapping[str, object]) -> dict[str, tuple[str, str, str]]:
    """'node_modules/...' path -> (name, version, integrity) of what `npm ci` installs from the lockfile."""
    found: dict[str, tuple[str, str, str]] = {}
    packages = lock.get("packages", {})
    assert isinstance(packages, dict)
    for path, meta in packages.items():
        if not path or not isinstance(meta, dict) or meta.get("link") or not _platform_ok(meta):
            continue
        name = meta.get("name") or path.rsplit("node_modules/", 1)[1]
        found[path] = (str(name), str(meta["version"]), str(meta.get("integrity", "")))
    return found


def tarball_name(name: str, version: str) -> str:
    """What `npm pack` names a package's file: `@scope/pkg` -> `scope-pkg-1.0.0.tgz`."""
    return f"{name.removeprefix('@').replace('/', '-')}-{version}.tgz"


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def prepare_npm(data: Path, workload: str) -> Path:
    folder = data / workload
    if (folder / "done").exists():
        return folder
    tarballs = data / "npm-tarballs"
    tarballs.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    deps = dict(NPM_WORKLOADS[workload])
    (folder / "package.json").write_text(
        json.dumps({"name": f"bench-{workload}", "version": "1.0.0", "private": True, "dependencies": deps})
    )
    print(f"resolving {workload} ({', '.join(deps)}) with npm (once)...", flush=True)
    npm_flags = ["--ignore-scripts", "--no-audit", "--no-fund", "--registry", "https://registry.npmjs.org/"]
    _run(["npm", "install", "--package-lock-only", *npm_flags], folder)
    lock = json.loads((folder / "package-lock.json").read_text())
    wanted = sorted({(n, v, i) for n, v, i in lock_packages(lock).values()})
    missing = [(n, v, i) for n, v, i in wanted if not (tarballs / tarball_name(n, v)).exists()]
    print(f"{workload}: {len(wanted)} packages, fetching {len(missing)} with npm pack...", flush=True)
    for start in range(0, len(missing), 100):
        specs = [f"{n}@{v}" for n, v, _ in missing[start : start + 100]]
        _run(["npm", "pack", "--silent", *npm_flags[3:], *specs], tarballs)
    for name, version, integrity in wanted:
        body = (tarballs / tarball_name(name, version)).read_bytes()
        if integrity.startswith("sha512-") and _integrity(body) != integrity:
            raise RuntimeError(f"{name}@{version}: the packed tarball differs from the lockfile's integrity")
    (folder / "done").write_text("")
    return folder


def prepare(data: Path = DATA) -> Path:
    prepare_wheels(data)
    for workload in NPM_WORKLOADS:
        prepare_npm(data, workload)
    return data


# --- the registry -------------------------------------------------------------------------------------------


def _manifest(body: bytes) -> dict[str, object]:
    with tarfile.open(fileobj=__import__("io").BytesIO(body), mode="r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.count("/") == 1 and member.name.endswith("/package.json"):
                extracted = tar.extractfile(member)
                assert extracted is not None
                return json.loads(extracted.read())  # type: ignore[no-any-return]
    raise ValueError("no package.json in the tarball")


_VERSION_FIELDS = (
    "name",
    "version",
    "dependencies",
    "optionalDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bin",
    "engines",
    "os",
    "cpu",
)


class Content:
    """Everything the registry serves, read from the data folder once."""

    def __init__(self, data: Path) -> None:
        self.wheels: dict[str, bytes] = {}
        self.projects: dict[str, list[tuple[str, str]]] = {}  # normalized name -> [(file, sha256)]
        for path in sorted((data / "wheels").glob("*.whl")):
            body = path.read_bytes()
            self.wheels[path.name] = body
            project = re.sub(r"[-_.]+", "-", path.name.split("-", 1)[0]).lower()
            self.projects.setdefault(project, []).append((path.name, hashlib.sha256(body).hexdigest()))
        self.tarballs: dict[str, bytes] = {}
        self.versions: dict[str, dict[str, dict[str, object]]] = {}  # name -> version -> manifest
        cache = data / "npm-manifests.json"
        manifests = json.loads(cache.read_text()) if cache.exists() else {}
        for path in sorted((data / "npm-tarballs").glob("*.tgz")):
            body = path.read_bytes()
            self.tarballs[path.name] = body
            if path.name not in manifests:
                full = _manifest(body)
                manifests[path.name] = {k: full[k] for k in _VERSION_FIELDS if k in full}
            meta = dict(manifests[path.name])
            meta["dist"] = {
                "integrity": _integrity(body),
                "shasum": hashlib.sha1(body).hexdigest(),
                "file": path.name,
            }
            self.versions.setdefault(str(meta["name"]), {})[str(meta["version"])] = meta
        cache.write_text(json.dumps(manifests))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_requests":
            self._send(200, "text/plain", f"{self.server.count}\n".encode(), "no-store", head)
            return
        with self.server.lock:
            self.server.count += 1
        found = self.server.route(self.server, unquote(path))
        if found is None:
            self._send(404, "text/plain", b"not found\n", "no-store", head)
        else:
            self._send(200, *found, head)

    def _send(self, status: int, content_type: str, body: bytes, cache_control: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache_control)
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


Found = tuple[str, bytes, str]
_INDEX_CC = "max-age=600, public"  # PyPI's and npm's
_FILE_CC = "max-age=365000000, immutable, public"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], content: Content, route: object) -> None:
        super().__init__(address, _Handler)
        self.content, self.route, self.lock, self.count = content, route, threading.Lock(), 0
        self.index_base = self.files_base = ""
        self.packuments: dict[str, bytes] = {}


def _index_route(server: _Server, path: str) -> Found | None:
    content = server.content
    if path == "/simple/":
        links = "".join(f'<a href="/simple/{p}/">{p}</a><br/>\n' for p in sorted(content.projects))
        return "text/html", _page("Simple index", links), _INDEX_CC
    if path.startswith("/simple/") and path.endswith("/"):
        files = content.projects.get(path.split("/")[2])
        if files is None:
            return None
        links = "".join(
            f'<a href="{server.files_base}/packages/{quote(f)}#sha256={sha}">{html.escape(f)}</a><br/>\n'
            for f, sha in files
        )
        return "text/html", _page(f"Links for {path.split('/')[2]}", links), _INDEX_CC
    if "/-/" in path:
        body = content.tarballs.get(path.rsplit("/", 1)[1])
        return None if body is None else ("application/octet-stream", body, _FILE_CC)
    name = path.lstrip("/")
    if name not in content.versions:
        return None
    with server.lock:
        doc = server.packuments.get(name)
        if doc is None:
            doc = server.packuments[name] = _packument(server.index_base, name, content.versions[name])
    return "application/json", doc, _INDEX_CC


def _packument(base: str, name: str, versions: Mapping[str, Mapping[str, object]]) -> bytes:
    out: dict[str, object] = {}
    for version, meta in versions.items():
        dist = dict(meta["dist"])  # type: ignore[call-overload]
        dist["tarball"] = f"{base}/{name}/-/{dist.pop('file')}"
        out[version] = {**meta, "dist": dist}
    latest = max(versions, key=lambda v: [int(x) if x.isdigit() else 0 for x in re.split(r"[.+-]", v)])
    doc = {"name": name, "dist-tags": {"latest": latest}, "versions": out}
    return json.dumps(doc).encode()


def _files_route(server: _Server, path: str) -> Found | None:
    body = server.content.wheels.get(path.removeprefix("/packages/"))
    return None if body is None else ("application/octet-stream", body, _FILE_CC)


def _page(title: str, links: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>\n{links}</body></html>\n"
    ).encode()


def serve(data: Path, index: tuple[str, int], files: tuple[str, int]) -> None:
    content = Content(data)
    servers = [_Server(index, content, _index_route), _Server(files, content, _files_route)]
    index_base = f"http://{index[0]}:{servers[0].server_address[1]}"
    files_base = f"http://{files[0]}:{servers[1].server_address[1]}"
    for server in servers:
        server.index_base, server.files_base = index_base, files_base
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threads = [threading.Thread(target=s.serve_forever, args=(0.2,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    print(f"serving {index_base} {files_base}", flush=True)
    try:
        threading.Event().wait()
    finally:
        for server in servers:
            server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch the packages once into the data folder")
    prep.add_argument("--data", type=Path, default=DATA)
    srv = sub.add_parser("serve", help="serve the registry until SIGTERM")
    srv.add_argument("--data", type=Path, default=DATA)
    srv.add_argument("--index", default="127.0.0.2:0")
    srv.add_argument("--files", default="127.0.0.3:0")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.data)
        return 0
    host, _, port = args.index.rpartition(":")
    fhost, _, fport = args.files.rpartition(":")
    serve(args.data, (host, int(port)), (fhost, int(fport)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
