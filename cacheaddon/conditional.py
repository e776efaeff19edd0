"""Conditional and partial requests (RFC 9110 13, 14): our validators for a stale entry, the client's own
validators answered from an entry, byte ranges and If-Range. Pure functions, no I/O."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from cacheaddon.entry import Entry
from cacheaddon.keys import RequestView
from cacheaddon.policy import STORABLE_STATUS

# Request fields that make an answer conditional or partial (RFC 9110 13.1, 14.2).
CONDITIONAL_FIELDS = (
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
)


def conditional_headers(entry: Entry | None) -> dict[str, str]:
    """Validators to revalidate a stale entry with (RFC 9111 4.3.1)."""
    if entry is None or entry.status not in STORABLE_STATUS:
        return {}
    headers = {}
    if entry.etag:
        headers["if-none-match"] = entry.etag
    if entry.last_modified:
        headers["if-modified-since"] = entry.last_modified
    return headers


def _strip_weak(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def client_has_current(entry: Entry, request: RequestView) -> bool:
    """Whether the client's own conditional request matches the entry, so a 304 answers it (RFC 9110 13.1)."""
    if entry.status not in STORABLE_STATUS:
        return False
    inm = request.header("if-none-match")
    if inm:
        if inm.strip() == "*":
            return True
        etag = entry.etag
        return etag is not None and _strip_weak(etag) in {_strip_weak(t) for t in inm.split(",")}
    ims, lm = request.header("if-modified-since"), entry.last_modified
    if ims and lm:
        try:
            return parsedate_to_datetime(lm) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False


def byte_range(value: str, size: int) -> tuple[int, int] | None | bool:
    """A single Range 'bytes=a-b' as (first, last) inclusive; None to ignore it and send the whole body
    (malformed, other units, several ranges: RFC 9110 14.2 lets us); False when it cannot be satisfied."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if (
        not dash
        or not (first_text.isdigit() or first_text == "")
        or not (last_text.isdigit() or last_text == "")
    ):
        return None
    if first_text == "":
        if last_text == "":
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if first >= size:
        return False
    last = int(last_text) if last_text else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


def if_range_allows(entry: Entry, value: str) -> bool:
    """If-Range (RFC 9110 13.1.5): the range applies only if the validator names this very entry."""
    if not value:
        return True
    value = value.strip()
    if value.startswith('"'):
        return entry.etag is not None and entry.etag.strip() == value
    return entry.last_modified is not None and entry.last_modified.strip() == value
