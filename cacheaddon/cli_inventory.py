"""`cacheaddon stats | ls | purge | refresh | verify`: the output side of counters.py and inventory.py."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cacheaddon import counters as c
from cacheaddon import inventory
from cacheaddon.cli_ops import UsageError, open_store
from cacheaddon.display import Output, duration, parse_duration, parse_time, size, when
from cacheaddon.settings import Settings
from cacheaddon.store import Store

OUTCOMES = ("HIT", "MISS", "REVALIDATED", "STALE")


def run(args: argparse.Namespace, config: Settings) -> int:
    out = Output(args.json)
    now = time.time()
    since = parse_time("--since", args.since, now) if getattr(args, "since", None) else None
    if args.command == "purge":
        _check_purge_usage(args)
    store = open_store(config)
    try:
        if args.command == "stats":
            return stats(out, store, config, since, args.top)
        if args.command == "ls":
            return ls(out, store, config, now, args.pattern, args.sort)
        if args.command == "purge":
            return purge(out, store, config, now, args)
        if args.command == "refresh":
            return refresh(out, store, config, now, args.target)
        return verify(out, store, now, args.fix)
    finally:
        store.close()


# --- stats ---


def summary(totals: c.Totals, top: int) -> dict[str, Any]:
    """The counters as `stats --json` prints them (without the store's entries and bytes)."""
    answers = dict.fromkeys(OUTCOMES, 0)
    hosts: dict[str, dict[str, int]] = {}
    stale: dict[str, int] = {}
    failures: dict[tuple[str, str], int] = {}
    scalars = dict.fromkeys((c.UPSTREAM_BYTES, c.INTEGRITY, c.EVICTIONS, c.EVICTED_BYTES, c.INTERRUPTED), 0)
    cache_bytes = 0
    guard: dict[str, dict[tuple[str, str], int]] = {c.GUARD_REFUSALS: {}, c.GUARD_HIDDEN: {}}
    guard_scalars = dict.fromkeys((c.GUARD_FILTERED, c.GUARD_UNDATED), 0)
    for (name, labels), value in totals.items():
        tags, n = dict(labels), int(value)
        if name in guard:
            key = (tags["ecosystem"], tags["reason"])
            guard[name][key] = guard[name].get(key, 0) + n
        elif name in guard_scalars:
            guard_scalars[name] += n
        elif name == c.ANSWERS:
            answers[tags["outcome"]] = answers.get(tags["outcome"], 0) + n
            hosts.setdefault(tags["host"], {"answers": 0, "cache_bytes": 0})["answers"] += n
        elif name == c.CACHE_BYTES:
            cache_bytes += n
            hosts.setdefault(tags["host"], {"answers": 0, "cache_bytes": 0})["cache_bytes"] += n
        elif name == c.STALE:
            stale[tags["reason"]] = stale.get(tags["reason"], 0) + n
        elif name == c.UPSTREAM_FAILURES:
            key = (tags["origin"], tags["kind"])
            failures[key] = failures.get(key, 0) + n
        elif name in scalars:
            scalars[name] += n
    total = sum(answers.values())
    ranked = sorted(hosts.items(), key=lambda kv: (-kv[1]["answers"], kv[0]))[:top]
    return {
        "answers": answers,
        "total_answers": total,
        # Answers whose body came from the cache (HIT, REVALIDATED, STALE) over all answers.
        "hit_ratio": round((total - answers["MISS"]) / total, 4) if total else None,
        "bytes_from_cache": cache_bytes,
        "bytes_from_upstream": scalars[c.UPSTREAM_BYTES],
        "stale_by_reason": stale,
        "upstream_failures": [
            {"origin": o, "kind": k, "count": n}
            for (o, k), n in sorted(failures.items(), key=lambda i: -i[1])
        ],
        "top_hosts": [{"host": h, **v} for h, v in ranked],
        "integrity_failures": scalars[c.INTEGRITY],
        "evictions": scalars[c.EVICTIONS],
        "evicted_bytes": scalars[c.EVICTED_BYTES],
        "interrupted": scalars[c.INTERRUPTED],
        "guard": {
            "refused_downloads": _by_reason(guard[c.GUARD_REFUSALS]),
            "hidden_versions": _by_reason(guard[c.GUARD_HIDDEN]),
            "filtered_documents": guard_scalars[c.GUARD_FILTERED],
            "undated_versions": guard_scalars[c.GUARD_UNDATED],
        },
    }


def _by_reason(counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    return [
        {"ecosystem": eco, "reason": reason, "count": n}
        for (eco, reason), n in sorted(counts.items(), key=lambda i: (-i[1], i[0]))
    ]


def stats(out: Output, store: Store, config: Settings, since: float | None, top: int) -> int:
    if top < 0:
        raise UsageError("--top: must be 0 or more")
    report = {
        "cache_dir": str(config.cache_dir),
        "since": since,
        "entries": store.record_count(),
        "bytes_on_disk": store.volume(),
        **summary(c.StatsDB(config.cache_dir).totals(since), top),
    }
    if out.as_json:
        out.json(report)
        return 0
    out.line(f"{report['cache_dir']}: {report['entries']} entries, {size(report['bytes_on_disk'])} on disk")
    ratio = report["hit_ratio"]
    out.line(
        f"answers since {when(since) if since else 'the start'}: {report['total_answers']}"
        + (f", hit ratio {ratio:.1%}" if ratio is not None else "")
    )
    out.table([f">{o}" for o in OUTCOMES], [[str(report["answers"][o]) for o in OUTCOMES]])
    out.line(
        f"bytes served from the cache: {size(report['bytes_from_cache'])}; "
        f"fetched from upstreams: {size(report['bytes_from_upstream'])}"
    )
    if report["stale_by_reason"]:
        rows = [[reason, str(n)] for reason, n in sorted(report["stale_by_reason"].items())]
        out.table(["stale reason", ">answers"], rows, "stale answers by reason")
    if report["upstream_failures"]:
        rows = [[f["origin"], f["kind"], str(f["count"])] for f in report["upstream_failures"]]
        out.table(["origin", "kind", ">failures"], rows, "upstream failures")
    if report["top_hosts"]:
        rows = [[h["host"], str(h["answers"]), size(h["cache_bytes"])] for h in report["top_hosts"]]
        out.table(["host", ">answers", ">from cache"], rows, "top hosts")
    extra = [
        f"{report[k]} {label}"
        for k, label in (("integrity_failures", "integrity failures"), ("evictions", "evictions"))
        if report[k]
    ]
    if extra:
        out.line("; ".join(extra))
    guard = report["guard"]
    if guard["refused_downloads"] or guard["filtered_documents"] or guard["undated_versions"]:
        hidden = sum(r["count"] for r in guard["hidden_versions"])
        out.line(
            f"supply-chain guard: {hidden} versions hidden from {guard['filtered_documents']} documents; "
            f"{guard['undated_versions']} versions without a publish time let through"
        )
        rows = [["refused", r["ecosystem"], r["reason"], str(r["count"])] for r in guard["refused_downloads"]]
        rows += [["hidden", r["ecosystem"], r["reason"], str(r["count"])] for r in guard["hidden_versions"]]
        if rows:
            out.table(["guard", "ecosystem", "reason", ">count"], rows, "supply-chain guard")
    return 0


# --- ls ---

_SORTS = {
    "url": (lambda i: (i.url, i.key), False),
    "size": (lambda i: i.entry.size, True),
    "age": (lambda i: -i.entry.stored_at, True),
    "used": (lambda i: i.used_at, True),
    "status": (lambda i: (i.entry.status, i.url), False),
}


def ls(out: Output, store: Store, config: Settings, now: float, pattern: str | None, sort: str) -> int:
    found, _ = inventory.items(store)
    chosen = inventory.select(found, config, now, pattern)
    key, reverse = _SORTS[sort]
    chosen.sort(key=key, reverse=reverse)
    if out.as_json:
        out.json([item.to_json(config, now) for item in chosen])
        return 0
    rows = [
        [
            item.url,
            str(item.entry.status),
            size(item.entry.size),
            duration(now - item.entry.stored_at),
            item.state(config, now),
            when(item.used_at),
        ]
        for item in chosen
    ]
    out.table(["URL", ">status", ">size", ">age", "state", "last used"], rows)
    out.line(f"{len(chosen)} entries, {size(sum(i.entry.size for i in chosen))}")
    return 0


# --- purge ---


def _check_purge_usage(args: argparse.Namespace) -> None:
    if args.pattern is not None and not args.pattern.strip():
        # An empty "$VAR" matches every URL: it must not remove everything without --all's question.
        raise UsageError("PATTERN: empty (it would match every entry; --all removes all, asking first)")
    filters = args.pattern is not None or args.older_than is not None or args.stale
    if args.all and filters:
        raise UsageError("--all: cannot be combined with PATTERN, --older-than or --stale")
    if not args.all and not filters:
        raise UsageError("say what to remove: PATTERN, --older-than DURATION, --stale or --all")
    if args.all and not args.yes and not sys.stdin.isatty():
        raise UsageError("--all: removes every entry; add --yes (stdin is not a terminal to ask on)")


def purge(out: Output, store: Store, config: Settings, now: float, args: argparse.Namespace) -> int:
    older = parse_duration("--older-than", args.older_than) if args.older_than is not None else None
    found, unreadable = inventory.items(store)
    chosen = found if args.all else inventory.select(found, config, now, args.pattern, older, args.stale)
    if args.all and not args.yes:
        total = size(sum(i.entry.size for i in found))
        answer = input(f"remove all {len(found)} entries ({total}) from {config.cache_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.line("nothing removed")
            return 1
    result = inventory.purge(store, found, chosen, everything=args.all)
    if args.all and unreadable:
        store.remove(unreadable)
    if out.as_json:
        out.json({"removed": result.entries, "bytes": result.bytes, "freed_bytes": result.freed})
    else:
        out.line(f"removed {result.entries} entries ({size(result.bytes)}; {size(result.freed)} freed)")
    return 0


# --- refresh ---


def refresh(out: Output, store: Store, config: Settings, now: float, target: str) -> int:
    if not target.strip():
        raise UsageError("NAME|PATTERN: empty (it would match every entry)")
    found, _ = inventory.items(store)
    if any(ch in target for ch in "*?[") or "://" in target:
        chosen = inventory.select(found, config, now, target)
    else:
        chosen = [item for item in found if inventory.names_package(item.url, target)]
    result = inventory.refresh(store, chosen, config)
    if out.as_json:
        out.json(
            {
                "marked_stale": [item.url for item in result.marked],
                "immutable_skipped": result.immutable,
                "changed_meanwhile": result.changed,
            }
        )
    else:
        for item in result.marked:
            out.line(f"stale: {item.url}")
        out.line(
            f"marked {len(result.marked)} entries stale (revalidated on their next request)"
            + (
                f"; {result.immutable} package files skipped (they never go stale)"
                if result.immutable
                else ""
            )
            + (f"; {result.changed} replaced by a proxy meanwhile" if result.changed else "")
        )
    if not result.marked and not result.changed:
        print(f"cacheaddon refresh: no metadata entry matches {target!r}", file=sys.stderr)
        return 1
    return 0


# --- verify ---


def verify(out: Output, store: Store, now: float, fix: bool) -> int:
    total = sum(i.entry.size for i in inventory.items(store)[0])
    with out.progress(total, "verifying") as advance:
        report = inventory.verify(store, now, fix, advance)
    if out.as_json:
        out.json(
            {
                "bodies_checked": report.bodies,
                "bytes_checked": report.bytes,
                "problems": [{"kind": p.kind, "what": p.what, "detail": p.detail} for p in report.problems],
                "fixed": report.fixed,
            }
        )
    else:
        if report.problems:
            rows = [[p.kind, p.what, p.detail] for p in report.problems]
            out.table(["problem", "what", "detail"], rows)
        verdict = "dropped" if report.fixed else "found"
        out.line(
            f"checked {report.bodies} bodies ({size(report.bytes)}): "
            + (f"{len(report.problems)} problems {verdict}" if report.problems else "all healthy")
        )
    return 1 if report.problems and not report.fixed else 0
