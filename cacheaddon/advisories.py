"""OSV advisories (https://ossf.github.io/osv-schema/) indexed by ecosystem and package, and the question
whether one names a given version. Pure: records come in as parsed JSON, nothing is read here.

A version is named by an advisory when its ecosystem, its normalised package name and the version itself
match an `affected` entry: the version is in its `versions` list, or inside one of its `ranges` of type
ECOSYSTEM or SEMVER (introduced / fixed / last_affected events; PEP 440 ordering for PyPI, SemVer for npm).
Never by name alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cacheaddon import versions

ECOSYSTEMS = {versions.PYPI.lower(): versions.PYPI, versions.NPM.lower(): versions.NPM}
_RANGE_TYPES = ("ECOSYSTEM", "SEMVER")


@dataclass(frozen=True)
class Event:
    kind: str  # introduced | fixed | last_affected
    version: str


@dataclass(frozen=True)
class Affected:
    """One `affected` entry of one advisory, for one package."""

    advisory: str
    versions: tuple[str, ...]
    ranges: tuple[tuple[Event, ...], ...]

    def names(self, ecosystem: str, version: str) -> bool:
        if any(versions.same_version(ecosystem, version, v) for v in self.versions):
            return True
        key = versions.order_key(ecosystem, version)
        return key is not None and any(_in_range(ecosystem, key, events) for events in self.ranges)


def _in_range(ecosystem: str, key: Any, events: tuple[Event, ...]) -> bool:
    """OSV's evaluation: walk the events in version order; introduced opens the range, fixed closes it
    at that version, last_affected just after it. A range with a version we cannot order is skipped."""
    ordered = []
    for event in events:
        if event.kind == "introduced" and event.version == "0":
            ordered.append((0, None, event))
            continue
        event_key = versions.order_key(ecosystem, event.version)
        if event_key is None:
            return False
        ordered.append((1, event_key, event))
    ordered.sort(key=lambda item: (item[0], item[1]) if item[1] is not None else (item[0],))
    affected = False
    for _, event_key, event in ordered:
        if event.kind == "introduced" and (event_key is None or key >= event_key):
            affected = True
        elif event.kind == "fixed" and key >= event_key:
            affected = False
        elif event.kind == "last_affected" and key > event_key:
            affected = False
    return affected


@dataclass(frozen=True)
class AdvisoryIndex:
    """(ecosystem, normalised name) -> what the loaded advisories say about it."""

    by_package: Mapping[tuple[str, str], tuple[Affected, ...]]
    records: int = 0  # advisories that named at least one PyPI or npm package
    skipped: int = 0  # files that were not OSV JSON

    def advisory_for(self, ecosystem: str, name: str, version: str) -> str | None:
        """The id of an advisory naming this version, or None."""
        for affected in self.by_package.get((ecosystem, versions.normalize_name(ecosystem, name)), ()):
            if affected.names(ecosystem, version):
                return affected.advisory
        return None

    def __len__(self) -> int:
        return self.records


EMPTY = AdvisoryIndex({})


def is_malicious(record: Mapping[str, Any]) -> bool:
    """A MAL- advisory (OSV's malicious-packages database), or one that another database files under an
    alias of one."""
    ids = [record.get("id"), *_list(record.get("aliases"))]
    return any(isinstance(i, str) and i.startswith("MAL-") for i in ids)


def _list(value: object) -> list[Any]:
    """A field the schema makes a list, or nothing when a file has something else there."""
    return value if isinstance(value, list) else []


def affected_entries(record: Mapping[str, Any]) -> list[tuple[str, str, Affected]]:
    """(ecosystem, normalised name, Affected) for each PyPI or npm package the record names; nothing for a
    withdrawn record or one without an id."""
    advisory = record.get("id")
    if not isinstance(advisory, str) or record.get("withdrawn"):
        return []
    found = []
    for item in _list(record.get("affected")):
        if not isinstance(item, dict):
            continue
        package = item.get("package")
        if not isinstance(package, dict):
            continue
        ecosystem = ECOSYSTEMS.get(str(package.get("ecosystem", "")).lower())
        name = package.get("name")
        if ecosystem is None or not isinstance(name, str) or not name:
            continue
        listed = tuple(v for v in _list(item.get("versions")) if isinstance(v, str))
        ranges = tuple(
            events
            for r in _list(item.get("ranges"))
            if isinstance(r, dict) and r.get("type") in _RANGE_TYPES
            if (events := _events(r.get("events")))
        )
        if listed or ranges:
            found.append(
                (ecosystem, versions.normalize_name(ecosystem, name), Affected(advisory, listed, ranges))
            )
    return found


def _events(raw: object) -> tuple[Event, ...]:
    events = []
    for event in raw if isinstance(raw, list) else ():
        if isinstance(event, dict):
            for kind in ("introduced", "fixed", "last_affected"):
                if isinstance(event.get(kind), str):
                    events.append(Event(kind, event[kind]))
    return tuple(events)


def build_index(records: Iterable[Mapping[str, Any] | None], include_all: bool) -> AdvisoryIndex:
    """The index of the MAL- advisories among `records` (all of them with include_all); None stands for a
    file that was not an OSV record."""
    by_package: dict[tuple[str, str], list[Affected]] = {}
    count = skipped = 0
    for record in records:
        if not isinstance(record, Mapping):
            skipped += 1
            continue
        if not include_all and not is_malicious(record):
            continue
        entries = affected_entries(record)
        for ecosystem, name, affected in entries:
            by_package.setdefault((ecosystem, name), []).append(affected)
        count += bool(entries)
    return AdvisoryIndex({k: tuple(v) for k, v in by_package.items()}, count, skipped)
