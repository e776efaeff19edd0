"""`cacheaddon bundle create RECORD OUT.tar | --since TIME OUT.tar` and `cacheaddon bundle import FILE`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cacheaddon import bundle, inventory, recording
from cacheaddon.cli_ops import UsageError, open_store
from cacheaddon.display import Output, fail, parse_time, size
from cacheaddon.settings import Settings
from cacheaddon.store import Store


def run(args: argparse.Namespace, config: Settings) -> int:
    out = Output(args.json)
    command = f"bundle {args.action}"
    if args.action == "create":
        record, target, since = _create_arguments(args)
        store = open_store(config)
    else:
        store = open_store(config, create=True)
    try:
        if args.action == "create":
            return create(out, store, record, target, since)
        return load(out, store, Path(args.file))
    except bundle.BundleError as exc:
        fail(command, str(exc))
        return 1
    finally:
        store.close()


def _create_arguments(args: argparse.Namespace) -> tuple[Path | None, Path, float | None]:
    if args.since is not None:
        if len(args.paths) != 1:
            raise UsageError("--since: give only OUT.tar (the entries come from the cache, not a record)")
        return None, Path(args.paths[0]), parse_time("--since", args.since, time.time())
    if len(args.paths) != 2:
        raise UsageError(
            "give RECORD OUT.tar (a cache_record file and the bundle to write), or --since TIME OUT.tar"
        )
    return Path(args.paths[0]), Path(args.paths[1]), None


def _chosen(store: Store, record: Path | None, since: float | None) -> tuple[list[inventory.Item], str]:
    """The entries to bundle, and a note on what was left out."""
    if record is None:
        assert since is not None
        found, _ = inventory.items(store)
        recent = [i for i in found if i.used_at >= since or i.entry.stored_at >= since]
        private_items = [i for i in recent if i.credentialed]
        note = f"{len(private_items)} entries private to a credential left out" if private_items else ""
        return [i for i in recent if not i.credentialed], note
    try:
        lines, bad = recording.read(record)
    except ValueError as exc:
        raise bundle.BundleError(str(exc)) from None
    chosen: list[inventory.Item] = []
    missing: list[str] = []
    private = 0
    for line in lines:
        if "\ncred=" in line.key:
            private += 1
            continue
        entry = store.peek_record(line.key)
        if entry is None:
            missing.append(line.url)
        else:
            chosen.append(inventory.Item(line.key, entry, 0.0))
    if missing:
        raise bundle.BundleError(
            f"{len(missing)} recorded entries are no longer in the cache (purged or evicted), "
            f"e.g. {missing[0]}; record the build again"
        )
    notes = [f"{private} entries private to a credential left out" if private else ""]
    notes.append(f"{bad} unreadable record lines skipped" if bad else "")
    return chosen, "; ".join(n for n in notes if n)


def create(out: Output, store: Store, record: Path | None, target: Path, since: float | None) -> int:
    chosen, note = _chosen(store, record, since)
    with out.progress(sum(i.entry.size for i in chosen), "bundling") as advance:
        result = bundle.create(store, chosen, target, advance)
    if result.cache_bound:
        bound = (
            f"{result.cache_bound} entries vary on a request field's value (Vary), which this cache keeps "
            "only as a salted digest: another cache will not match them"
        )
        note = "; ".join(n for n in (note, bound) if n)
    if out.as_json:
        out.json(
            {
                "file": str(target),
                "entries": result.entries,
                "bodies": result.bodies,
                "bytes": result.bytes,
                "note": note,
            }
        )
    else:
        out.line(f"wrote {target}: {result.entries} entries, {result.bodies} bodies, {size(result.bytes)}")
        if note:
            out.line(note)
    return 0


def load(out: Output, store: Store, path: Path) -> int:
    total = path.stat().st_size if path.is_file() else 0
    with out.progress(total, "importing") as advance:
        result = bundle.import_bundle(store, path, advance)
    if out.as_json:
        out.json(
            {"imported": result.imported, "kept": result.kept, "bodies": result.bodies, "bytes": result.bytes}
        )
    else:
        out.line(
            f"imported {result.imported} entries into {store.directory} "
            f"({result.bodies} bodies, {size(result.bytes)}); {result.kept} already there, kept"
        )
    return 0
