"""Pure cache decisions: cacheability, storability, freshness and what to do with a request. No I/O, no
clock (`now` is passed in)."""

from __future__ import annotations

import enum
import math
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
# Bodies up to this size are answered from memory; larger ones stream through the relay.
INLINE_LIMIT = 1024 * 1024
# A new body for a stale entry is read whole before answering, so that a failure midway can still fall back
# to the entry: when it announces up to this size (or no size). It is kept in memory up to this size and
# spooled to a temporary file beyond, up to the larger of this and cache_max_object_size.
BUFFER_LIMIT = 8 * 1024 * 1024


class Outcome(enum.Enum):
    """Exactly the X-Cache values."""

    HIT = "HIT"
    MISS = "MISS"
    REVALIDATED = "REVALIDATED"
    STALE = "STALE"


class Action(enum.Enum):
    SERVE = "serve"  # answer from the entry
    FETCH = "fetch"  # ask the upstream (conditionally when the entry has validators)
    ERROR = "error"  # our own error page (status), naming the URL and the reason
    PASS = "pass"  # the upstream's own error answer, passed on and not stored


@dataclass(frozen=True)
class Decision:
    action: Action
    outcome: Outcome
    reason: str  # the X-Cache-Detail text
    probe: bool = False  # also ask the upstream in the background, one probe per origin (origin in back-off)
    status: int = 0  # of an ERROR


@dataclass(frozen=True)
class Backoff:
    """An origin (scheme://host:port) that failed recently, and when its back-off ends."""

    origin: str
    until: float


@dataclass(frozen=True)
class Failure:
    """How the upstream failed: no complete answer (refused, timed out, a body cut short...), or an answer
    that is an outage as far as builds go (status: 5xx or 429)."""

    reason: str  # "connection refused", "answered 503"
    timeout: bool = False
    status: int | None = None
    # A short, bounded label for the metrics, set where the failure is recognised (upstream.py's table of
    # exception types, or `answered`): timeout, dns, tls, refused, reset, truncated, protocol, connect, proxy,
    # http_5xx, http_429, other.
    kind: str = "other"


def answered(status: int) -> Failure:
    """An upstream answer that is an outage (is_failure: 5xx or 429)."""
    return Failure(f"answered {status}", status=status, kind="http_429" if status == 429 else "http_5xx")


class Verdict(enum.Enum):
    FAILED = "failed"  # 5xx or 429: see on_failure
    NOT_MODIFIED = "not-modified"  # a 304 to our validators: the entry is refreshed and served
    NEW = "new"  # a new answer: passed on, and stored when storable


@dataclass(frozen=True)
class Answer:
    """What to do with the upstream's answer head."""

    verdict: Verdict
    reason: str  # the X-Cache-Detail text
    why_not: str | None = None  # why the answer is not stored; None: store it once it arrived whole
    buffer: bool = False  # read it whole before answering (a failure midway can still fall back to stale)


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
    return oversize(content_length, settings)


def oversize(size: int | None, settings: Settings) -> str | None:
    if size is not None and size > settings.max_object_size:
        return f"not stored: larger than cache_max_object_size ({size} bytes)"
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
    if entry.invalidated:
        return False
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
    backoff: Backoff | None,
    salt: bytes = b"",
) -> Decision:
    """What to do with a cacheable request, given what the store holds for its key (salt: the store's, which
    the entry's Vary digests were made with) and whether its origin is in back-off."""
    if entry is not None and not vary_matches(entry, request, salt):
        entry = None
    if entry is None:
        if settings.offline:
            return Decision(Action.ERROR, Outcome.MISS, "offline: not in cache", status=504)
        if backoff is not None:
            return unavailable(backoff, now, probe=True)
        return Decision(Action.FETCH, Outcome.MISS, "miss")
    if is_fresh(entry, now, settings):
        return Decision(Action.SERVE, Outcome.HIT, "fresh" if settings.offline is False else "fresh, offline")
    if settings.offline:
        return Decision(Action.SERVE, Outcome.STALE, "stale: offline mode")
    if backoff is not None and settings.stale_on_error:
        return Decision(Action.SERVE, Outcome.STALE, "stale: upstream failing recently", probe=True)
    return Decision(Action.FETCH, Outcome.REVALIDATED, "stale: revalidating")


def unavailable(backoff: Backoff, now: float, probe: bool = False) -> Decision:
    """A 503 at once for what the cache cannot answer while its origin backs off: an outage costs a build one
    timeout, not one per request."""
    left = max(1, math.ceil(backoff.until - now))
    reason = (
        f"upstream failing recently: {backoff.origin} not tried for another {left} s (cache_upstream_backoff)"
    )
    return Decision(Action.ERROR, Outcome.MISS, reason, probe=probe, status=503)


def is_failure(status: int) -> bool:
    """Overloaded or rate-limited: an outage as far as builds go."""
    return status >= 500 or status == 429


def on_answer(
    request: RequestView,
    entry: Entry | None,
    status: int,
    headers: Mapping[str, str],
    length: int | None,
    settings: Settings,
) -> Answer:
    """What to do with the upstream's answer to a miss or a revalidation (headers: case-insensitive, a
    repeated field read as its values joined with ", "; length: the Content-Length, if it frames the body)."""
    if is_failure(status):
        return Answer(Verdict.FAILED, f"upstream answered {status}")
    if status == 304 and entry is not None:
        return Answer(Verdict.NOT_MODIFIED, "revalidated: 304")
    why_not = storability(status, headers, length, settings) or private_storability(request, headers)
    if request.method == "HEAD":
        why_not = why_not or "not stored: HEAD"
    reason = why_not or ("refreshed: entry was stale" if entry is not None else "miss")
    small = length is not None and length <= INLINE_LIMIT
    buffer = small or request.method == "HEAD" or (entry is not None and (length or 0) <= BUFFER_LIMIT)
    return Answer(Verdict.NEW, reason, why_not, buffer)


def on_failure(entry: Entry | None, failure: Failure, settings: Settings) -> Decision:
    """After the upstream failed: the stale answer to serve if there is one (SERVE), else the upstream's own
    error answer (PASS) or our error page: 504 when it timed out, 502 otherwise."""
    if entry is not None and settings.stale_on_error:
        return Decision(Action.SERVE, Outcome.STALE, f"stale: upstream {failure.reason}")
    if failure.status is not None:
        return Decision(Action.PASS, Outcome.MISS, f"upstream {failure.reason}")
    return Decision(
        Action.ERROR, Outcome.MISS, f"upstream {failure.reason}", status=504 if failure.timeout else 502
    )


def on_unheld(entry: Entry | None, why: str, settings: Settings) -> Decision:
    """The upstream answered, but its new body could not be held to be served (too large, disk failed)."""
    reason = f"new body could not be held ({why})"
    if entry is not None and settings.stale_on_error:
        return Decision(Action.SERVE, Outcome.STALE, f"stale: {reason}")
    return Decision(Action.ERROR, Outcome.MISS, reason, status=502)
