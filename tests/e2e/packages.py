"""Tiny real packages built in memory: pure-python wheels and npm tarballs, byte-stable across runs."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterable, Mapping

# 2020-01-01T00:00:00Z: a fixed timestamp so the same package always has the same bytes.
FIXED_MTIME = 1577836800
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def normalize(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_filename(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(name: str, version: str, deps: Iterable[str] = ()) -> tuple[str, bytes]:
    """A pure-python py3-none-any wheel whose module `name` holds `VERSION = "<version>"`."""
    module = re.sub(r"[-.]+", "_", name).lower()
    dist_info = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: e2e test package {name}",
        "Requires-Python: >=3.8",
    ]
    metadata += [f"Requires-Dist: {dep}" for dep in deps]
    files: dict[str, bytes] = {
        f"{module}/__init__.py": f'VERSION = "{version}"\n'.encode(),
        f"{dist_info}/METADATA": ("\n".join(metadata) + "\n\n").encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: cacheaddon-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n\n"
        ),
        f"{dist_info}/top_level.txt": f"{module}\n".encode(),
    }
    record_path = f"{dist_info}/RECORD"
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[record_path] = (record + f"{record_path},,\n").encode()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return wheel_filename(name, version), buf.getvalue()


def npm_tarball_name(name: str, version: str) -> str:
    """The file part of a tarball URL: `@scope/pkg` -> `pkg-1.0.0.tgz`."""
    return f"{name.rsplit('/', 1)[-1]}-{version}.tgz"


def make_npm_tarball(name: str, version: str, deps: Mapping[str, str] | None = None) -> bytes:
    """A gzip'd tar with package/package.json and package/index.js, identical bytes on every call."""
    manifest = {
        "name": name,
        "version": version,
        "description": f"e2e test package {name}",
        "main": "index.js",
        "license": "MIT",
        "dependencies": dict(deps or {}),
    }
    files = {
        "package/package.json": (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        "package/index.js": f'module.exports = {{ name: "{name}", version: "{version}" }};\n'.encode(),
    }
    return make_tgz(files)


def make_tgz(files: Mapping[str, bytes]) -> bytes:
    """A gzip'd tar of `files` (path -> bytes) with identical bytes on every call: fixed mtimes and owners in
    the tar, and no timestamp in the gzip header (tarfile's "w:gz" writes the current time there, so bytes
    hashed into an index at one second differ from those served at the next)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def npm_integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
