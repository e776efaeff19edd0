"""Builds the replies the cache gives: from an entry, 304s, and its own errors, with X-Cache and Age."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from http import HTTPStatus

from mitmproxy import http

from cacheaddon import cachestatus
from cacheaddon.entry import Entry
from cacheaddon.policy import HOP_BY_HOP, Outcome

# RFC 9110 15.4.5: what a 304 carries of the full answer.
_NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "last-modified", "vary"}
)
_OURS = frozenset({"content-length", "age", "x-cache", "x-cache-detail"})  # framing and what the cache sets


def live_headers(fields: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The upstream's header fields as passed on to the client that asked: no hop-by-hop fields or framing."""
    return tuple((k, v) for k, v in fields if k.lower() not in HOP_BY_HOP and k.lower() not in _OURS)


def storable_headers(fields: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The upstream's header fields worth keeping for everyone: no cookies either, nor the Cache-Status of
    the caches before us, which describes that one answer."""
    return tuple((k, v) for k, v in live_headers(fields) if k.lower() not in ("set-cookie", "cache-status"))


# RFC 9111 3.2: these describe the stored body, which a 304 does not replace (some servers send a generic
# Content-Type or a zero Content-Length with their 304s).
_BODY_FIELDS = frozenset({"content-type", "content-encoding", "content-range", "content-length"})


def revalidated_headers(fields: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The fields of a 304 that update a stored entry."""
    return tuple((k, v) for k, v in storable_headers(fields) if k.lower() not in _BODY_FIELDS)


def cache_fields(
    outcome: Outcome, reason: str, age: int | None = None, stored: bool = False
) -> list[tuple[str, str]]:
    """stored: the upstream's answer was stored (or will be, once it arrived whole)."""
    fields = [("X-Cache", outcome.value), ("X-Cache-Detail", reason)]
    # RFC 9211, after upstream caches'
    fields.append(("Cache-Status", cachestatus.value(outcome, reason, stored)))
    if age is not None:
        fields.append(("Age", str(age)))
    return fields


def make(status: int, reason: str, fields: list[tuple[str, str]], body: bytes) -> http.Response:
    """A response whose body is sent exactly as given (already content-encoded if the headers say so)."""
    headers = http.Headers([(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields])
    headers["content-length"] = str(len(body))
    now = time.time()
    return http.Response(
        b"HTTP/1.1", status, reason.encode("latin-1", "replace"), headers, body, None, now, now
    )


def served_fields(entry: Entry, outcome: Outcome, detail: str, age: int) -> list[tuple[str, str]]:
    """The entry's headers as the cache serves them; byte ranges of a stored 200 are honoured, so say so."""
    fields = [(k, v) for k, v in entry.headers if k.lower() != "accept-ranges"]
    if entry.status == 200:
        fields.append(("Accept-Ranges", "bytes"))
    return [*fields, *cache_fields(outcome, detail, age)]


def from_entry(entry: Entry, body: bytes, outcome: Outcome, detail: str, age: int) -> http.Response:
    return make(entry.status, entry.reason, served_fields(entry, outcome, detail, age), body)


def head_from_entry(entry: Entry, outcome: Outcome, detail: str, age: int) -> http.Response:
    response = make(entry.status, entry.reason, served_fields(entry, outcome, detail, age), b"")
    response.headers["content-length"] = str(entry.size)
    return response


def partial_fields(
    entry: Entry, first: int, last: int, outcome: Outcome, detail: str, age: int
) -> list[tuple[str, str]]:
    fields = served_fields(entry, outcome, detail, age)
    return [*fields, ("Content-Range", f"bytes {first}-{last}/{entry.size}")]


def unsatisfiable(entry: Entry, outcome: Outcome, detail: str, age: int) -> http.Response:
    fields = [*cache_fields(outcome, detail, age), ("Content-Range", f"bytes */{entry.size}")]
    return make(416, "Range Not Satisfiable", fields, b"")


def not_modified(entry: Entry, outcome: Outcome, detail: str, age: int) -> http.Response:
    kept = [(k, v) for k, v in entry.headers if k.lower() in _NOT_MODIFIED_FIELDS]
    response = make(304, "Not Modified", [*kept, *cache_fields(outcome, detail, age)], b"")
    del response.headers["content-length"]
    return response


# The reason phrase carries the detail because it is what clients print: pip's error text ("504 Server Error:
# <reason> for url"), npm's ("504 <reason> - GET <url>") and uv's all quote it, and none shows a plain-text
# body. The body is RFC 9457 problem details, which uv prints ("Server message: <title>, <detail>") and curl
# shows as it is. No Retry-After: none of pip, uv and npm heeds it on a 5xx (npm and uv retry a 5xx on their
# own schedule; pip never retries a 504).
_REASON_LIMIT = 200
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def error(status: int, url: str, detail: str, outcome: Outcome = Outcome.MISS) -> http.Response:
    """The cache's own error answer, naming the URL and saying why in every form a client may show."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    reason = _UNPRINTABLE.sub(" ", f"{phrase} (cacheaddon: {detail})")[:_REASON_LIMIT]
    problem = {"type": "about:blank", "title": phrase, "status": status, "detail": f"cacheaddon: {detail}"}
    body = json.dumps({**problem, "url": url}, indent=1).encode() + b"\n"
    fields = [("Content-Type", "application/problem+json"), *cache_fields(outcome, detail)]
    return make(status, reason, fields, body)


def forbidden(detail: str) -> http.Response:
    body = f"cacheaddon: {detail}\n".encode("utf-8", "replace")
    return make(403, "Forbidden", [("Content-Type", "text/plain; charset=utf-8")], body)
