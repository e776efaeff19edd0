"""What the supply-chain guard lets a client see of one version: its release age, the advisories naming it,
its project's status. Pure: the time (`now`) and the loaded advisories come in with the Rules."""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from cacheaddon import versions
from cacheaddon.advisories import EMPTY, AdvisoryIndex
from cacheaddon.settings import Settings


class Reason(enum.Enum):
    YOUNG = "young"  # published less than cache_min_release_age ago
    ADVISORY = "advisory"  # named by an advisory of cache_block_advisories
    MISSING = "missing"  # no publish time known (refused only with cache_release_age_missing=refuse)
    QUARANTINED = "quarantined"  # the project is quarantined upstream (PEP 792)


@dataclass(frozen=True)
class Ruling:
    refused: bool
    reason: Reason
    ecosystem: str
    name: str
    version: str  # or the file name, where the version is unknown
    detail: str  # what the 403 body and the log line say
    advisory: str = ""


def parse_time(text: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (PyPI's upload-time, npm's time map), else None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        # A time that cannot be told back in UTC (year 9999 at -14:00) is no publish time anyone meant.
        dt.datetime.fromtimestamp(moment.timestamp(), dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return moment.timestamp()


def format_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Dates:
    """Publish times learned from another document (by version, or PyPI file name), and the time as of which
    that document was the registry's: what it does not list was published after that."""

    times: Mapping[str, float | None]
    as_of: float | None = None

    def of(self, key: str) -> tuple[float | None, float | None]:
        """(publish time, or None; a time it is known to be later than, or None)."""
        if key in self.times:
            return self.times[key], None
        return None, self.as_of


@dataclass(frozen=True)
class Rules:
    """The guard's settings and advisories as in force for one answer."""

    now: float
    min_age: float = 0.0
    min_age_text: str = ""
    exempt: tuple[tuple[str, str], ...] = ()
    refuse_missing: bool = False
    advisories: AdvisoryIndex = field(default=EMPTY)
    generation: int = 0  # of the advisories: a reload changes the filtered documents' validators

    @classmethod
    def of(cls, settings: Settings, now: float, index: AdvisoryIndex = EMPTY, generation: int = 0) -> Rules:
        return cls(
            now=now,
            min_age=settings.min_release_age,
            min_age_text=settings.min_release_age_text,
            exempt=settings.release_age_exempt,
            refuse_missing=settings.release_age_missing == "refuse",
            advisories=index,
            generation=generation,
        )

    @property
    def cutoff(self) -> float:
        """Versions published after this are too young."""
        return self.now - self.min_age

    def ages_apply(self, ecosystem: str, name: str) -> bool:
        """Whether the release age applies to this package (it is on and the package is not exempt)."""
        if self.min_age <= 0:
            return False
        name = versions.normalize_name(ecosystem, name)
        return not any(eco == ecosystem and fnmatch.fnmatchcase(name, pat) for eco, pat in self.exempt)

    def fingerprint(self) -> str:
        """Changes whenever what a client may see changes for reasons other than time passing."""
        text = repr((self.min_age, self.exempt, self.refuse_missing, self.generation))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def advised(self, ecosystem: str, name: str, version: str | None) -> Ruling | None:
        """The refusal of a version an advisory names, else None."""
        advisory = self.advisories.advisory_for(ecosystem, name, version) if version is not None else None
        if advisory is None or version is None:
            return None
        detail = (
            f"{ecosystem} package {name} {version} is named by advisory {advisory} (cache_block_advisories)"
        )
        return Ruling(True, Reason.ADVISORY, ecosystem, name, version, detail, advisory)

    def judge(
        self,
        ecosystem: str,
        name: str,
        version: str | None,
        published: float | None,
        label: str | None = None,
        after: float | None = None,
    ) -> Ruling | None:
        """None when the version may be seen; else why not (or, for a missing publish time that is let
        through, refused=False). `label` names it where the version is unknown (a file name); `after`, when
        the publish time is unknown, is a time it is known to be later than (a document fetched then did
        not list it yet)."""
        shown = version or label or "?"
        advised = self.advised(ecosystem, name, version)
        if advised is not None:
            return advised
        if not self.ages_apply(ecosystem, name):
            return None
        if published is None and after is not None and after > self.cutoff:
            detail = (
                f"{ecosystem} package {name} {shown} was not yet listed by the registry at "
                f"{format_time(after)}, less than cache_min_release_age ({self.min_age_text}) ago"
            )
            return Ruling(True, Reason.YOUNG, ecosystem, name, shown, detail)
        if published is None:
            detail = f"{ecosystem} package {name} {shown} has no known publish time"
            if self.refuse_missing:
                detail += " (cache_release_age_missing=refuse)"
            return Ruling(self.refuse_missing, Reason.MISSING, ecosystem, name, shown, detail)
        if published > self.cutoff:
            detail = (
                f"{ecosystem} package {name} {shown} was published {format_time(published)}, less than "
                f"cache_min_release_age ({self.min_age_text}) ago"
            )
            return Ruling(True, Reason.YOUNG, ecosystem, name, shown, detail)
        return None


def quarantined(ecosystem: str, name: str, label: str = "") -> Ruling:
    detail = f"{ecosystem} project {name} is quarantined upstream (PEP 792 project status)"
    return Ruling(True, Reason.QUARANTINED, ecosystem, name, label or "*", detail)


@dataclass(frozen=True)
class Screened:
    """A document after the guard: `body` None when nothing had to change."""

    body: bytes | None
    removed: tuple[Ruling, ...] = ()  # one per version (or file) hidden
    moved: tuple[tuple[str, str, str | None], ...] = ()  # npm dist-tags: (tag, from, to or None: dropped)
    noted: tuple[Ruling, ...] = ()  # let through without a publish time
    # What the document itself tells, for the downloads that follow: publish times (by PyPI file name or
    # npm version), the PEP 792 project status, and the PyPI file links as written.
    times: Mapping[str, float | None] = field(default_factory=dict)
    status: str = "active"
    links: tuple[str, ...] = ()

    @property
    def lacks_dates(self) -> bool:
        """Some version was judged without a publish time that a sibling document might give."""
        return not self.times and any(v.reason is Reason.MISSING for v in (*self.removed, *self.noted))

    def summary(self, rules: Rules) -> str:
        """The X-Cache-Detail text: 'filtered: 2 versions younger than 3d, latest 2.0.0 -> 1.1.0'."""
        groups: dict[str, set[str]] = {}
        for ruling in self.removed:
            why = {
                Reason.YOUNG: f"younger than {rules.min_age_text}",
                Reason.ADVISORY: f"named by {ruling.advisory}",
                Reason.MISSING: "without a publish time",
                Reason.QUARANTINED: "of a project quarantined upstream",
            }[ruling.reason]
            groups.setdefault(why, set()).add(ruling.version)
        parts = [f"{len(v)} version{'s' if len(v) != 1 else ''} {why}" for why, v in groups.items()]
        parts += [f"{tag} {old} -> {new or 'dropped'}" for tag, old, new in self.moved]
        return "filtered: " + ", ".join(parts) if parts else ""
