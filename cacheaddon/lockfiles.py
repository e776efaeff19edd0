"""The files a lockfile pins, with their digests: npm's package-lock.json / npm-shrinkwrap.json (v1-v3),
PEP 751 pylock.toml, uv.lock. Pure parsing; digests as "algo=hex" (as digests.py writes them)."""

from __future__ import annotations

import base64
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SRI_STRENGTH = ("sha512", "sha384", "sha256", "sha1")


@dataclass(frozen=True)
class Download:
    url: str
    digest: str  # "algo=hex"


def kind(path: Path) -> str | None:
    """'npm', 'pylock' or 'uv' by the file's name, else None."""
    name = path.name
    if name in ("package-lock.json", "npm-shrinkwrap.json"):
        return "npm"
    if name == "pylock.toml" or (name.startswith("pylock.") and name.endswith(".toml")):
        return "pylock"
    if name == "uv.lock":
        return "uv"
    return None


def parse(path: Path) -> list[Download]:
    """Raises ValueError (naming the file) for an unknown or unreadable lockfile, OSError when unreadable."""
    which = kind(path)
    if which is None:
        raise ValueError(
            f"{path}: not a lockfile this command reads (package-lock.json, npm-shrinkwrap.json, "
            "pylock.toml, pylock.*.toml, uv.lock)"
        )
    try:
        if which == "npm":
            found = npm_lock(json.loads(path.read_bytes()))
        else:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
            found = pylock(doc) if which == "pylock" else uv_lock(doc)
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        # RecursionError: nested deeper than the JSON or TOML parser goes.
        raise ValueError(f"{path}: unreadable {which} lockfile ({type(exc).__name__}: {exc})") from None
    return list({d.url: d for d in found}.values())


def _http(url: object) -> bool:
    return isinstance(url, str) and url.startswith(("https://", "http://"))


def sri(integrity: str) -> str | None:
    """The strongest hash of a Subresource Integrity value ('sha512-BASE64 sha1-...') as "algo=hex"."""
    options = {}
    for part in integrity.split():
        algo, _, value = part.partition("-")
        options[algo.lower()] = value.split("?", 1)[0]
    for algo in _SRI_STRENGTH:
        if algo in options:
            try:
                return f"{algo}={base64.b64decode(options[algo], validate=True).hex()}"
            except ValueError:
                return None
    return None


def npm_lock(doc: dict[str, Any]) -> list[Download]:
    found = []

    def add(meta: object) -> None:
        if isinstance(meta, dict) and _http(meta.get("resolved")) and isinstance(meta.get("integrity"), str):
            digest = sri(meta["integrity"])
            if digest:
                found.append(Download(meta["resolved"], digest))

    packages = doc.get("packages")
    if isinstance(packages, dict):  # lockfileVersion 2 and 3
        for path, meta in packages.items():
            if path and not (isinstance(meta, dict) and meta.get("link")):
                add(meta)
        return found

    # lockfileVersion 1: dependencies nested in dependencies, walked without recursion (however deep).
    pending = [doc.get("dependencies")]
    while pending:
        deps = pending.pop()
        if isinstance(deps, dict):
            for meta in deps.values():
                add(meta)
                if isinstance(meta, dict):
                    pending.append(meta.get("dependencies"))
    return found


def _pep751_file(item: object) -> Download | None:
    if not isinstance(item, dict) or not _http(item.get("url")) or not isinstance(item.get("hashes"), dict):
        return None
    hashes = item["hashes"]
    for algo in ("sha256", "sha384", "sha512"):
        if isinstance(hashes.get(algo), str):
            return Download(item["url"], f"{algo}={hashes[algo].lower()}")
    return None


def pylock(doc: dict[str, Any]) -> list[Download]:
    found = []
    for package in doc.get("packages", []):
        files = [*package.get("wheels", []), package.get("sdist"), package.get("archive")]
        found += [d for d in map(_pep751_file, files) if d is not None]
    return found


def _uv_file(item: object) -> Download | None:
    if not isinstance(item, dict) or not _http(item.get("url")) or not isinstance(item.get("hash"), str):
        return None
    algo, _, value = item["hash"].partition(":")
    return Download(item["url"], f"{algo.lower()}={value.lower()}") if value else None


def uv_lock(doc: dict[str, Any]) -> list[Download]:
    found = []
    for package in doc.get("package", []):
        files = [*package.get("wheels", []), package.get("sdist")]
        found += [d for d in map(_uv_file, files) if d is not None]
    return found
