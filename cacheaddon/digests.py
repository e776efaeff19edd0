"""Digests that registries publish for their files (PyPI's #sha256= links and hashes, npm's dist.integrity).

A file whose bytes do not match what its index published is not cached. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from urllib.parse import urljoin, urlsplit

from cacheaddon.keys import normalize_url

_HREF = re.compile(rb"""href\s*=\s*["']([^"'#]+)#(sha256|sha384|sha512|sha1|md5)=([0-9a-fA-F]+)["']""", re.I)
_STRONG = ("sha512", "sha384", "sha256", "sha1")  # md5 is too weak to trust, but would not hurt


def canonical(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return normalize_url(parts.scheme, parts.hostname, port, path)


def _from_html(doc_url: str, body: bytes) -> dict[str, str]:
    found = {}
    for href, algo, value in _HREF.findall(body):
        url = canonical(urljoin(doc_url, html.unescape(href.decode("utf-8", "replace"))))
        if url:
            found[url] = f"{algo.decode().lower()}={value.decode().lower()}"
    return found


def _best(hashes: object) -> str | None:
    if not isinstance(hashes, dict):
        return None
    for algo in ("sha256", *_STRONG):
        value = hashes.get(algo)
        if isinstance(value, str) and value:
            return f"{algo}={value.lower()}"
    return None


def _npm_dist(dist: object) -> str | None:
    if not isinstance(dist, dict):
        return None
    integrity = dist.get("integrity")
    if isinstance(integrity, str):
        # SRI: several space-separated "algo-base64" values may be listed; take the strongest.
        options = dict(item.split("-", 1) for item in integrity.split() if "-" in item)
        for algo in _STRONG:
            if algo in options:
                try:
                    return f"{algo}={base64.b64decode(options[algo]).hex()}"
                except ValueError:
                    return None
    shasum = dist.get("shasum")
    return f"sha1={shasum.lower()}" if isinstance(shasum, str) and shasum else None


def _from_json(doc_url: str, doc: object) -> dict[str, str]:
    found: dict[str, str] = {}
    if not isinstance(doc, dict):
        return found

    def add(url: object, digest: str | None) -> None:
        if isinstance(url, str) and digest:
            key = canonical(urljoin(doc_url, url))
            if key:
                found[key] = digest

    for item in doc.get("files") or []:  # PEP 691
        if isinstance(item, dict):
            add(item.get("url"), _best(item.get("hashes")))
    releases = doc.get("releases")
    files = list(doc.get("urls") or [])  # PyPI JSON API
    if isinstance(releases, dict):
        files += [f for group in releases.values() if isinstance(group, list) for f in group]
    for item in files:
        if isinstance(item, dict):
            add(item.get("url"), _best(item.get("digests")))
    versions = doc.get("versions")  # npm packument, full or abbreviated
    if isinstance(versions, dict):
        for meta in versions.values():
            if isinstance(meta, dict) and isinstance(meta.get("dist"), dict):
                add(meta["dist"].get("tarball"), _npm_dist(meta["dist"]))
    return found


def published(doc_url: str, content_type: str, body: bytes) -> dict[str, str]:
    """File URL (canonical) -> "algo=hex" for every file the index document lists with a digest."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype.endswith("html"):
        return _from_html(doc_url, body)
    if ctype.endswith("json"):
        try:
            return _from_json(doc_url, json.loads(body))
        except (ValueError, RecursionError):
            return {}
    return {}


def matches(expected: str, data_hashes: dict[str, str]) -> bool | None:
    """Whether the computed hex digests match "algo=hex"; None when that algorithm was not computed."""
    algo, _, value = expected.partition("=")
    computed = data_hashes.get(algo)
    return None if computed is None else computed == value


def hasher(expected: str) -> hashlib._Hash | None:
    algo = expected.partition("=")[0]
    return hashlib.new(algo) if algo in hashlib.algorithms_available else None
