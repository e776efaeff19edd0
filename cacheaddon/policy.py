"""Pure cache decisions: cacheability, storability, freshness and what to do with a request. No I/O, no
clock (`now` is passed in)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from cacheaddon.entry import Entry
from cacheaddon.keys import RequestView, unkeyed_credentials, vary_matches, vary_names
from cacheaddon.settings import Settings

# RFC 9110 7.6.1 plus the proxy-only fields: never stored, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
STORABLE_STATUS = frozenset({200, 203, 300, 301, 308})
NEGATIVE_STATUS = frozenset({404, 410})


class Outcome(enum.Enum):
    """Exactly the X-Cache values."""

    HIT = "HIT"
    MISS = "MISS"
    REVALIDATED = "REVALIDATED"
    STALE = "STALE"


class Action(enum.Enum):
    SERVE = "serve"  # answer from the entry
    FETCH = "fetch"  # ask the upstream (conditionally when the entry has validators)
    OFFLINE_MISS = "offline-miss"  # 504 naming the URL


@dataclass(frozen=True)
class Decision:
    action: Action
    outcome: Outcome
    reason: str  # the X-Cache-Detail text
    probe: bool = False  # also revalidate in the background (host in back-off)


def request_cacheability(request: RequestView) -> str | None:
    """None when the cache may answer this request, else why not (the X-Cache-Detail of a pass-through)."""
    if request.method not in ("GET", "HEAD"):
        return f"not cacheable: method {request.method}"
    return None


def storability(
    status: int, headers: Mapping[str, str], content_length: int | None, settings: Settings
) -> str | None:
    """None when a response may be stored, else why not. Cache-Control is ignored on purpose."""
    if status not in STORABLE_STATUS and status not in NEGATIVE_STATUS:
        return f"not stored: status {status}"
    if vary_names(headers.get("vary", "")) is None:
        return "not stored: Vary: *"
    if "content-range" in headers:
        return "not stored: partial content"
    if content_length is not None and content_length > settings.max_object_size:
        return f"not stored: larger than cache_max_object_size ({content_length} bytes)"
    return None


def private_storability(request: RequestView, response_headers: Mapping[str, str]) -> str | None:
    """None when storing is safe, else why not: a private answer to a request whose credentials the key does
    not hold would be served to clients without them. (Keyed credentials keep private answers to
    themselves, so there Cache-Control is ignored like everywhere else.)"""
    directives = {
        d.split("=", 1)[0].strip() for d in response_headers.get("cache-control", "").lower().split(",")
    }
    if "private" not in directives:
        return None
    unkeyed = unkeyed_credentials(request)
    if not unkeyed:
        return None
    return f"not stored: private answer to a request with {unkeyed[0]}"


def is_immutable(url: str, settings: Settings) -> bool:
    return settings.immutable_path.match(urlsplit(url).path) is not None


def age(entry: Entry, now: float) -> int:
    return max(0, int(now - entry.stored_at))


def is_fresh(entry: Entry, now: float, settings: Settings) -> bool:
    if entry.status in NEGATIVE_STATUS:
        return age(entry, now) < settings.negative_ttl
    if is_immutable(entry.url, settings):
        return True
    return age(entry, now) < settings.ttl


def decide(
    request: RequestView,
    entry: Entry | None,
    now: float,
    settings: Settings,
    host_backing_off: bool,
    salt: bytes = b"",
) -> Decision:
    """What to do with a cacheable request, given what the store holds for its key (salt: the store's, which
    the entry's Vary digests were made with)."""
    if entry is not None and not vary_matches(entry, request, salt):
        entry = None
    if entry is None:
        if settings.offline:
            return Decision(Action.OFFLINE_MISS, Outcome.MISS, "offline: not in cache")
        return Decision(Action.FETCH, Outcome.MISS, "miss")
    if is_fresh(entry, now, settings):
        return Decision(Action.SERVE, Outcome.HIT, "fresh" if settings.offline is False else "fresh, offline")
    if settings.offline:
        return Decision(Action.SERVE, Outcome.STALE, "stale: offline mode")
    if host_backing_off and settings.stale_on_error:
        return Decision(Action.SERVE, Outcome.STALE, "stale: upstream failing recently", probe=True)
    return Decision(Action.FETCH, Outcome.REVALIDATED, "stale: revalidating")


def on_failure(entry: Entry | None, failure: str, settings: Settings) -> Decision | None:
    """After the upstream failed: the stale answer to serve, or None when the client gets the error."""
    if entry is not None and settings.stale_on_error:
        return Decision(Action.SERVE, Outcome.STALE, f"stale: upstream {failure}")
    return None
