"""Pure decisions about the shared tier: what it may hold, which of its records to use, how its answers are
told apart. No I/O, no clock."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from cacheaddon import policy
from cacheaddon.entry import Entry
from cacheaddon.keys import redact
from cacheaddon.policy import Decision

TIER = "shared tier"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.1: a field name
_UNSENDABLE = re.compile(r"[\x00\r\n]")  # RFC 9110 5.5: never in a field value


def why_not_shared(key: str, entry: Entry | None = None) -> str | None:
    """None when an answer under this cache key may go to (or come from) the shared tier, else why not.
    Private answers never leave the host: a key with a credential fingerprint (its salt is this cache
    directory's own, so no other proxy could match it anyway), a URL with a token in its query, an answer
    chosen by Vary values (stored as digests salted per cache directory)."""
    if "\ncred=" in key:
        return "private: the request carried credentials"
    url = key.split("\n", 1)[0]
    if redact(url) != url:
        return "private: the URL carries a token"
    if entry is not None and entry.vary:
        return "varies on request fields other proxies cannot match"
    return None


def admissible(entry: Entry, now: float, max_size: int) -> Entry | None:
    """A record read from the tier as this proxy may use it, else None: what this proxy would store itself
    (a storable status, no larger than its cache_max_object_size, a sha256 for a name, fields it can send
    without letting them split the answer). A record stored in the future (a writer whose clock is ahead)
    counts as stored now: it would otherwise stay fresh longer, and newer than every later copy."""
    if entry.status not in policy.STORABLE_STATUS and entry.status not in policy.NEGATIVE_STATUS:
        return None
    if not 0 <= entry.size <= max_size or not _SHA256.fullmatch(entry.sha256):
        return None
    if _UNSENDABLE.search(entry.reason) or not all(
        _TOKEN.fullmatch(name) and not _UNSENDABLE.search(value) for name, value in entry.headers
    ):
        return None
    return replace(entry, stored_at=now) if entry.stored_at > now else entry


def newest(
    found: Iterable[tuple[str, Entry | None]], local: Entry | None, now: float, max_size: int
) -> tuple[str, Entry] | None:
    """The newest admissible shared record (with the key it was found under) that is newer than the local
    entry; None when the local entry is as new (the tier has nothing to add)."""
    checked = ((k, admissible(e, now, max_size) if e is not None else None) for k, e in found)
    usable = [(k, e) for k, e in checked if e is not None and why_not_shared(k, e) is None]
    if not usable:
        return None
    key, entry = max(usable, key=lambda pair: pair[1].stored_at)
    if local is not None and entry.stored_at <= local.stored_at:
        return None
    return key, entry


def from_tier(decision: Decision) -> Decision:
    """The decision on an entry just copied from the shared tier: its X-Cache-Detail says so."""
    return replace(decision, reason=f"{decision.reason} ({TIER})")
