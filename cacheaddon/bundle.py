"""Bundles: chosen cache entries in one portable tar file, to replay a build on a machine with no network.

    cacheaddon-bundle/manifest.json      {"format": "cacheaddon-bundle", "version": 1, "created": ...,
                                          "entries": [{"key": ..., "record": {Entry record}}, ...],
                                          "bodies": {sha256: size, ...}}
    cacheaddon-bundle/bodies/<sha256>    each body once, as stored (content-encoded if the upstream said so)
    cacheaddon-bundle/manifest.sha256    the manifest's sha256 (last: a bundle cut short is missing it)

Writing goes to OUT.partial, renamed into place when complete. Importing checks everything before it
changes the cache: each body is streamed into the cache's temporary directory and hashed, and only when the
whole file has been read and found sound are the bodies and records committed (body first, as the proxy
does). An entry the cache already holds, as new or newer, is kept: importing twice changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from cacheaddon import keys
from cacheaddon.entry import Entry
from cacheaddon.inventory import Item
from cacheaddon.store import Store

FORMAT, VERSION = "cacheaddon-bundle", 1
ROOT = "cacheaddon-bundle"
MANIFEST, CHECKSUM = f"{ROOT}/manifest.json", f"{ROOT}/manifest.sha256"
_BODY = re.compile(rf"{ROOT}/bodies/([0-9a-f]{{64}})")
_MANIFEST_LIMIT = 256 * 1024 * 1024

Progress = Callable[[int], None]


class BundleError(Exception):
    """A bundle that cannot be written or is refused; str() says why."""


@dataclass(frozen=True)
class Created:
    entries: int
    bodies: int
    bytes: int
    # Entries chosen by the value of a request field the response's Vary names: their record holds that
    # value only as a digest salted with this cache's secret salt, so another cache never matches them.
    cache_bound: int = 0


@dataclass(frozen=True)
class Imported:
    imported: int
    kept: int  # the cache already held them, as new or newer
    bodies: int
    bytes: int


class _Hashing(io.RawIOBase):
    """Reads through to `source`, hashing what passes."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source, self.digest, self.length = source, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.digest.update(data)
        self.length += len(data)
        return data


def create(store: Store, chosen: list[Item], out: Path, progress: Progress | None = None) -> Created:
    """Writes the chosen entries and their bodies to `out`. Raises BundleError (nothing is left at `out`)."""
    sizes = {item.entry.sha256: item.entry.size for item in chosen}
    records = [_portable(item.entry, store.salt) for item in chosen]
    entries = [{"key": item.key, "record": r.to_record()} for item, r in zip(chosen, records, strict=True)]
    manifest = json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "created": time.time(),
            "entries": entries,
            "bodies": sizes,
        },
        sort_keys=True,
    ).encode()
    cache_bound = sum(1 for r in records if any(v != _UNSENT for _, v in r.vary))
    urls = {item.entry.sha256: item.url for item in chosen}
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, len(manifest), io.BytesIO(manifest))
            for sha, length in sizes.items():
                value = store.peek_body(sha)
                if value is None:
                    raise BundleError(f"the body of {urls[sha]} is no longer in the cache")
                source = io.BytesIO(value) if isinstance(value, bytes) else value
                with source:
                    reader = _Hashing(source)
                    try:
                        _add(tar, f"{ROOT}/bodies/{sha}", length, reader)
                    except OSError as exc:  # tarfile: "unexpected end of data" for a short file
                        raise BundleError(f"the cached body of {urls[sha]} is damaged ({exc})") from None
                    if reader.digest.hexdigest() != sha or source.read(1):
                        raise BundleError(
                            f"the cached body of {urls[sha]} does not match its sha256 "
                            "(`cacheaddon verify --fix` drops it)"
                        )
                if progress is not None:
                    progress(length)
            checksum = hashlib.sha256(manifest).hexdigest().encode()
            _add(tar, CHECKSUM, len(checksum), io.BytesIO(checksum))
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Created(len(chosen), len(sizes), sum(sizes.values()), cache_bound)


# The digest of a request field no client sent, unsalted: it tells nothing, and every cache matches it
# (keys.vary_matches accepts unsalted digests).
_UNSENT = keys.vary_digest("")


def _portable(entry: Entry, salt: bytes) -> Entry:
    """The entry as another cache can match it: Vary digests of fields the request did not send (a
    registry's `Vary: Origin` to clients that send none) are made unsalted; others stay as they are."""
    unsent = keys.vary_digest("", salt)
    return replace(entry, vary=tuple((name, _UNSENT if v == unsent else v) for name, v in entry.vary))


def _add(tar: tarfile.TarFile, name: str, length: int, data: IO[bytes] | _Hashing) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = length, int(time.time()), 0o600
    tar.addfile(info, data)


def import_bundle(store: Store, path: Path, progress: Progress | None = None) -> Imported:
    """Loads a bundle into the store, after checking all of it. Raises BundleError (the cache unchanged)."""
    held: dict[str, str] = {}  # sha256 -> verified temporary file in the store's tmp directory
    try:
        entries, sizes = _read(store, path, held, progress)
        return _commit(store, entries, sizes, held)
    except BundleError as exc:
        if str(path) in str(exc):
            raise
        raise BundleError(f"{path}: {exc}") from None
    finally:
        for tmp in held.values():
            store.discard(tmp)


def _read(
    store: Store, path: Path, held: dict[str, str], progress: Progress | None
) -> tuple[list[tuple[str, Entry]], dict[str, int]]:
    manifest: dict[str, Any] | None = None
    digest, checksum = "", None
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if manifest is None:
                    if member.name != MANIFEST or not member.isfile() or member.size > _MANIFEST_LIMIT:
                        raise BundleError(
                            f"{path} is not a cacheaddon bundle (it starts with {member.name!r})"
                        )
                    raw = _member_bytes(tar, member)
                    digest = hashlib.sha256(raw).hexdigest()
                    manifest = _parse_manifest(raw, path)
                elif member.name == CHECKSUM and member.isfile() and member.size <= 1024:
                    checksum = _member_bytes(tar, member).decode("ascii", "replace").strip()
                elif (m := _BODY.fullmatch(member.name)) and member.isfile():
                    _take_body(store, tar, member, m[1], manifest["bodies"], held)
                    if progress is not None:
                        progress(member.size)
                else:
                    raise BundleError(f"{path} holds an unexpected member {member.name!r}")
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path} is damaged or cut short ({exc})") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    if manifest is None:
        raise BundleError(f"{path} is not a cacheaddon bundle (empty)")
    if checksum != digest:
        raise BundleError(f"{path} is cut short or its manifest is damaged (manifest checksum mismatch)")
    missing = set(manifest["bodies"]) - set(held)
    if missing:
        raise BundleError(f"{path} lacks {len(missing)} of the bodies its manifest lists")
    return manifest["entries"], manifest["bodies"]


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None
    data = f.read()
    if len(data) != member.size:
        raise BundleError(f"member {member.name} is cut short")
    return data


def _parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    """The manifest, checked: entries as (key, Entry) whose bodies it lists with their sizes."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT:
            raise ValueError("not a bundle manifest")
        if doc.get("version") != VERSION:
            raise BundleError(
                f"{path} is a bundle of version {doc.get('version')!r}; this cacheaddon reads {VERSION}"
            )
        sizes = {str(sha): int(n) for sha, n in doc["bodies"].items()}
        entries = []
        for item in doc["entries"]:
            key, entry = str(item["key"]), Entry.from_record(item["record"])
            if entry is None or key.split("\n", 1)[0] != entry.url or sizes.get(entry.sha256) != entry.size:
                raise ValueError(f"inconsistent entry {key.split(chr(10), 1)[0]!r}")
            entries.append((key, entry))
    except BundleError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        # OverflowError: a size of 1e999; RecursionError: JSON nested deeper than the parser goes.
        raise BundleError(f"{path} has a damaged or foreign manifest ({type(exc).__name__}: {exc})") from None
    return {"entries": entries, "bodies": sizes}


def _take_body(
    store: Store,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    sha: str,
    sizes: dict[str, int],
    held: dict[str, str],
) -> None:
    if sizes.get(sha) != member.size or sha in held:
        raise BundleError(f"body {sha} is not what the manifest lists")
    source = tar.extractfile(member)
    assert source is not None
    handle, tmp = store.new_body_file()
    held[sha] = tmp
    digest = hashlib.sha256()
    with handle:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            handle.write(chunk)
    if digest.hexdigest() != sha:
        raise BundleError(f"body {sha} does not match its sha256: the bundle is damaged")


def _commit(
    store: Store, entries: list[tuple[str, Entry]], sizes: dict[str, int], held: dict[str, str]
) -> Imported:
    imported = kept = 0
    for key, entry in entries:
        current = store.peek_record(key)
        if current is not None and current.stored_at >= entry.stored_at:
            kept += 1
            continue
        # commit() moves the file in (or finds the body already stored) and removes the temporary file.
        store.commit(key, entry, held[entry.sha256])
        imported += 1
    return Imported(imported, kept, len(sizes), sum(sizes.values()))
