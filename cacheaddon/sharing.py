"""Pure decisions about the shared tier: what it may hold, which of its records to use, how its answers are
told apart. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from cacheaddon.entry import Entry
from cacheaddon.keys import redact
from cacheaddon.policy import Decision

TIER = "shared tier"


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


def newest(found: Iterable[tuple[str, Entry | None]], local: Entry | None) -> tuple[str, Entry] | None:
    """The newest shared record (with the key it was found under) that is newer than the local entry;
    None when the local entry is as new (the tier has nothing to add)."""
    usable = [(k, e) for k, e in found if e is not None and why_not_shared(k, e) is None]
    if not usable:
        return None
    key, entry = max(usable, key=lambda pair: pair[1].stored_at)
    if local is not None and entry.stored_at <= local.stored_at:
        return None
    return key, entry


def from_tier(decision: Decision) -> Decision:
    """The decision on an entry just copied from the shared tier: its X-Cache-Detail says so."""
    return replace(decision, reason=f"{decision.reason} ({TIER})")
