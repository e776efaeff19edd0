"""The guard on npm packuments, full (`application/json`, with the `time` map) and abbreviated
(`application/vnd.npm.install-v1+json`, whose dates come from the full document). Pure: bytes in, bytes out.

A refused version leaves `versions` and `time`; every `dist-tags` entry that pointed at one moves to the
newest remaining version not above it (no prerelease for a stable tag), or is dropped when there is none,
so that `latest` never names a version the document does not have. What is kept is untouched (integrity,
shasum and tarball URLs stay as published).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cacheaddon import versions
from cacheaddon.rulings import Dates, Rules, Ruling, Screened, parse_time

FULL_TYPE = "application/json"
ABBREVIATED_TYPE = "application/vnd.npm.install-v1+json"
_NOT_VERSIONS = frozenset({"created", "modified", "unpublished"})


def parse(data: bytes) -> dict[str, Any] | None:
    """A packument (an object with a versions object), else None."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    if isinstance(doc, dict) and isinstance(doc.get("versions"), dict) and isinstance(doc.get("name"), str):
        return doc
    return None


def looks_like(data: bytes) -> bool:
    """A cheap test before parsing: packuments have dist-tags, other JSON documents rarely do."""
    return data.lstrip()[:1] == b"{" and b'"dist-tags"' in data


def times(doc: Mapping[str, Any]) -> dict[str, float | None]:
    """Version -> publish time, from the full document's `time` map."""
    raw = doc.get("time")
    if not isinstance(raw, dict):
        return {}
    return {v: parse_time(t) for v, t in raw.items() if v not in _NOT_VERSIONS}


def document_path(name: str, prefix: str = "") -> str:
    """The path of a package's packument as npm asks for it (`/@scope%2fname`)."""
    return f"{prefix.rstrip('/')}/{quote(name, safe='@')}"


def tarball_document(url: str) -> tuple[str, str, str] | None:
    """(package, version, packument URL) of a tarball URL, else None."""
    parts = urlsplit(url)
    found = versions.npm_tarball(parts.path)
    if found is None:
        return None
    name, version = found
    path = unquote(parts.path)
    prefix = path[: path.rfind("/-/")].removesuffix(name)  # what a registry's base path puts before names
    return name, version, f"{parts.scheme}://{parts.netloc}{document_path(name, quote(prefix))}"


def screen(data: bytes, rules: Rules, known: Dates | None = None) -> Screened:
    """The packument as the guard serves it. Dates come from its own `time` map when it has one, else from
    `known` (the full document's, for an abbreviated one; None when it could not be had)."""
    doc = parse(data)
    if doc is None:
        return Screened(None)
    name = doc["name"]
    own = times(doc)
    dates = Dates(own) if isinstance(doc.get("time"), dict) else known or Dates({})
    removed: list[Ruling] = []
    noted: list[Ruling] = []
    for version in list(doc["versions"]):
        published, after = dates.of(version)
        ruling = rules.judge(versions.NPM, name, version, published, after=after)
        if ruling is None:
            continue
        if ruling.refused:
            removed.append(ruling)
        else:
            noted.append(ruling)
    if not removed:
        return Screened(None, noted=tuple(noted), times=own)
    gone = {v.version for v in removed}
    for version in gone:
        doc["versions"].pop(version, None)
        if isinstance(doc.get("time"), dict):
            doc["time"].pop(version, None)
    moved = _move_tags(doc, gone)
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return Screened(body, tuple(removed), tuple(moved), tuple(noted), times=own)


def _move_tags(doc: dict[str, Any], gone: set[str]) -> list[tuple[str, str, str | None]]:
    tags = doc.get("dist-tags")
    if not isinstance(tags, dict):
        return []
    moved: list[tuple[str, str, str | None]] = []
    for tag, target in list(tags.items()):
        if not isinstance(target, str) or target not in gone:  # a tag naming no version is left as it is
            continue
        new = versions.newest_at_most(versions.NPM, doc["versions"], str(target))
        if new is None:
            del tags[tag]
        else:
            tags[tag] = new
        moved.append((tag, str(target), new))
    return moved
