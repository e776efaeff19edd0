"""What the cache holds, and the operator's edits to it: list, purge, refresh (mark stale), verify.

Safe while proxies serve from the same directory: records and bodies are only ever deleted or rewritten in
diskcache transactions, a body goes only when no record points to it, and a record whose body went missing
is a miss to a proxy (fetched again), never a wrong answer.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cacheaddon import policy
from cacheaddon.entry import Entry
from cacheaddon.settings import Settings
from cacheaddon.store import Store

# A body younger than this with no record is a commit in progress (body first, record next), not an orphan.
_COMMIT_GRACE = 120.0
# diskcache files no row names are left alone this long: one may be a body being moved into place.
_STRAY_AGE = 3600.0


@dataclass(frozen=True)
class Item:
    """One cached response: its record key, record, and when a proxy last looked it up."""

    key: str
    entry: Entry
    used_at: float

    @property
    def url(self) -> str:
        return self.entry.url

    def state(self, settings: Settings, now: float) -> str:
        if not self.entry.invalidated and self.entry.status not in policy.NEGATIVE_STATUS:
            if policy.is_immutable(self.url, settings):
                return "immutable"
        return "fresh" if policy.is_fresh(self.entry, now, settings) else "stale"

    @property
    def credentialed(self) -> bool:
        return "\ncred=" in self.key

    def variant(self) -> dict[str, str]:
        """The key's request fields beyond the URL (accept=..., accept-encoding=... or any-coding)."""
        fields = {}
        for line in self.key.split("\n")[1:]:
            name, _, value = line.partition("=")
            fields[name] = value if name != "cred" else "yes"
        return fields

    def to_json(self, settings: Settings, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "key": self.key,
            "status": self.entry.status,
            "size": self.entry.size,
            "sha256": self.entry.sha256,
            "stored_at": self.entry.stored_at,
            "age": policy.age(self.entry, now),
            "state": self.state(settings, now),
            "last_used": self.used_at,
            "variant": self.variant(),
        }


def items(store: Store) -> tuple[list[Item], list[str]]:
    """Every readable record, and the keys of unreadable ones."""
    found, unreadable = [], []
    for key, entry, used in store.record_rows():
        if entry is None:
            unreadable.append(key)
        else:
            found.append(Item(key, entry, used))
    return found, unreadable


def matches(url: str, pattern: str) -> bool:
    """PATTERN as a glob on the whole URL, or as a substring of it."""
    return pattern in url or fnmatch.fnmatchcase(url, pattern)


_SEPARATORS = re.compile(r"[-_.]+")


def names_package(url: str, name: str) -> bool:
    """Whether a URL is about package NAME: a path segment equal to it (PyPI's /simple/NAME/, /pypi/NAME/json,
    npm's /NAME and /@scope%2fNAME), names compared as PEP 503 normalises them."""
    path = unquote(urlsplit(url).path).rstrip("/")
    wanted = _SEPARATORS.sub("-", name.lower())
    if "/" in name:  # a scoped npm name: @scope/name
        return path.lower().endswith("/" + name.lower())
    return any(_SEPARATORS.sub("-", segment.lower()) == wanted for segment in path.split("/"))


def select(
    found: Iterable[Item],
    settings: Settings,
    now: float,
    pattern: str | None = None,
    older_than: float | None = None,
    stale: bool = False,
) -> list[Item]:
    """The items every given filter admits: URL pattern, age over `older_than` seconds, stale now."""
    chosen = []
    for item in found:
        if pattern is not None and not matches(item.url, pattern):
            continue
        if older_than is not None and policy.age(item.entry, now) <= older_than:
            continue
        if stale and item.state(settings, now) != "stale":
            continue
        chosen.append(item)
    return chosen


@dataclass(frozen=True)
class Purged:
    entries: int
    bytes: int  # the removed entries' sizes
    freed: int  # bytes of bodies removed (a body shared with a kept entry stays)


def purge(store: Store, every: list[Item], chosen: list[Item], everything: bool = False) -> Purged:
    """Removes the chosen records, then each of their bodies that no other record points to."""
    refs = Counter(item.entry.sha256 for item in every)
    gone = Counter(item.entry.sha256 for item in chosen)
    bodies = [sha for sha, n in gone.items() if refs[sha] <= n]
    sizes = {item.entry.sha256: item.entry.size for item in chosen}
    store.remove((item.key for item in chosen), bodies, digests=everything)
    return Purged(len(chosen), sum(item.entry.size for item in chosen), sum(sizes[sha] for sha in bodies))


@dataclass(frozen=True)
class Refreshed:
    marked: list[Item]
    immutable: int  # matched, but package files never go stale
    changed: int  # replaced by a proxy meanwhile (already new)


def refresh(store: Store, chosen: list[Item], settings: Settings) -> Refreshed:
    """Marks the chosen metadata entries stale: the next request revalidates them (a 304 keeps the body, a
    new document replaces it), and until then, or if the upstream fails, they still answer."""
    marked, immutable, changed = [], 0, 0
    for item in chosen:
        if policy.is_immutable(item.url, settings) and item.entry.status not in policy.NEGATIVE_STATUS:
            immutable += 1
            continue
        if item.entry.invalidated:
            marked.append(item)
            continue
        if store.replace_record(item.key, item.entry, replace(item.entry, invalidated=True)):
            marked.append(item)
        else:
            changed += 1
    return Refreshed(marked, immutable, changed)


@dataclass
class Problem:
    kind: str  # corrupt-body, missing-body, unreadable-record, orphaned-body, stray-file
    what: str  # a URL, a sha256 or a path
    detail: str
    keys: list[str] = field(default_factory=list)  # records to drop with it
    body: str | None = None  # body to drop
    path: Path | None = None  # file to delete


@dataclass
class Verified:
    bodies: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    fixed: bool = False


def verify(
    store: Store, now: float, fix: bool = False, progress: Callable[[int], None] | None = None
) -> Verified:
    """Re-hashes every stored body; finds corrupt and missing bodies, unreadable records, bodies no record
    points to and files no row names. `fix` drops them all (and the records of bad bodies)."""
    found, unreadable = items(store)
    report = Verified()
    report.problems += [
        Problem("unreadable-record", k.split("\n", 1)[0], "record unreadable", [k]) for k in unreadable
    ]
    by_body: dict[str, list[Item]] = {}
    for item in found:
        by_body.setdefault(item.entry.sha256, []).append(item)
    seen = set()
    for sha, stored_at in store.body_rows():
        seen.add(sha)
        users = by_body.get(sha, [])
        if not users:
            if stored_at < now - _COMMIT_GRACE:
                report.problems.append(Problem("orphaned-body", sha, "no record points to it", body=sha))
            continue
        ok, length = _check(store, sha, users[0].entry.size)
        report.bodies += 1
        report.bytes += length
        if progress is not None:
            progress(length)
        if ok is None:  # removed by a proxy while we looked: nothing to report
            continue
        if not ok:
            detail = f"does not match its sha256 ({length} of {users[0].entry.size} bytes read)"
            report.problems.append(Problem("corrupt-body", users[0].url, detail, [i.key for i in users], sha))
    for sha, users in by_body.items():
        if sha not in seen:
            detail = "its body is missing"
            report.problems += [Problem("missing-body", i.url, detail, [i.key]) for i in users]
    report.problems += [
        Problem("stray-file", str(p), "a file no cache row names", path=p)
        for p in store.stray_files(_STRAY_AGE)
    ]
    if fix and report.problems:
        store.remove(
            [k for p in report.problems for k in p.keys],
            [p.body for p in report.problems if p.body is not None],
        )
        for problem in report.problems:
            if problem.path is not None:
                problem.path.unlink(missing_ok=True)
        report.fixed = True
    return report


def _check(store: Store, sha: str, expected_size: int) -> tuple[bool | None, int]:
    """(matches, bytes read); matches is None when the body is gone."""
    value = store.peek_body(sha)
    if value is None:
        return None, 0
    digest = hashlib.sha256()
    if isinstance(value, bytes):
        digest.update(value)
        length = len(value)
    else:
        length = 0
        with value:
            while chunk := value.read(1 << 20):
                digest.update(chunk)
                length += len(chunk)
    return digest.hexdigest() == sha and length == expected_size, length
