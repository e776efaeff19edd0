"""PyPI and npm package names and versions: normalising, ordering, and which package and version a file
is. Pure: PEP 440 ordering comes from `packaging`, SemVer ordering (npm) from `semver`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import semver
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

# Ecosystems as OSV spells them.
PYPI = "PyPI"
NPM = "npm"

# An npm tarball: /<name>/-/<basename>-<version>.tgz, the name scoped (@scope/name) or not; registries
# behind a path prefix (Artifactory, Verdaccio sub-paths) put segments before it.
_NPM_TARBALL = re.compile(r"(?:^|/)((?:@[^/]+/)?[^/@][^/]*)/-/([^/]+)\.tgz$")
# PEP 658/714: a distribution's metadata file is its URL plus ".metadata".
METADATA_SUFFIX = ".metadata"


def normalize_name(ecosystem: str, name: str) -> str:
    """PyPI names compare PEP 503-normalised; npm names exactly as published."""
    return canonicalize_name(name) if ecosystem == PYPI else name.strip()


def order_key(ecosystem: str, version: str) -> Any | None:
    """A key that orders versions of `ecosystem` (PEP 440 or SemVer), or None for a version it cannot
    parse (such a version is matched by exact spelling only, never by a range)."""
    try:
        if ecosystem == PYPI:
            return Version(version)
        return semver.Version.parse(version.strip().removeprefix("v"))
    except (InvalidVersion, ValueError, TypeError):
        return None


def same_version(ecosystem: str, a: str, b: str) -> bool:
    """Equal as versions (PyPI's 1.0 is 1.0.0; SemVer build metadata does not count), else as text."""
    ka, kb = order_key(ecosystem, a), order_key(ecosystem, b)
    if ka is not None and kb is not None:
        return bool(ka == kb)
    return a.strip() == b.strip()


def is_prerelease(ecosystem: str, version: str) -> bool:
    key = order_key(ecosystem, version)
    if key is None:
        return False
    if isinstance(key, Version):
        return key.is_prerelease
    return bool(key.prerelease)


def newest_at_most(ecosystem: str, candidates: Iterable[str], ceiling: str) -> str | None:
    """The highest of `candidates` not above `ceiling`; a prerelease only if `ceiling` is one too (a
    moved `latest` must not land on a beta). None when there is none."""
    top = order_key(ecosystem, ceiling)
    allow_pre = is_prerelease(ecosystem, ceiling)
    best: tuple[Any, str] | None = None
    for version in candidates:
        key = order_key(ecosystem, version)
        if key is None or (top is not None and key > top):
            continue
        if not allow_pre and is_prerelease(ecosystem, version):
            continue
        if best is None or key > best[0]:
            best = (key, version)
    return best[1] if best is not None else None


def pypi_file(filename: str) -> tuple[str, str] | None:
    """(normalised project, version) of a wheel or sdist file name (or its PEP 658 metadata file), or None
    for a name that is neither."""
    filename = unquote(filename.rsplit("/", 1)[-1]).removesuffix(METADATA_SUFFIX)
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
            return str(name), str(version)
        if filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return str(name), str(version)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return None


def npm_tarball(path: str) -> tuple[str, str] | None:
    """(package, version) of an npm tarball URL path, or None for any other path."""
    path = unquote(path.split("?", 1)[0])
    m = _NPM_TARBALL.search(path)
    if m is None:
        return None
    name, stem = m[1], m[2]
    prefix = name.rsplit("/", 1)[-1] + "-"
    if not stem.startswith(prefix) or len(stem) == len(prefix):
        return None
    return name, stem[len(prefix) :]
