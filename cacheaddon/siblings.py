"""Sibling documents for the guard: the JSON form of a PyPI page, the full packument of an npm package,
asked for through the cache like any request (fresh, revalidated, stale during an outage, offline), and the
URL spellings the guard keys what it learns by."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cacheaddon import documents, keys
from cacheaddon.keys import RequestView
from cacheaddon.reply import Reply
from cacheaddon.routing import url_of

# (request, url, origin) -> the cache's answer: what the guard asks the cache with.
Ask = Callable[[RequestView, str, str], Awaitable[Reply]]


@dataclass(frozen=True)
class Fetched:
    body: bytes  # decoded
    as_of: float  # when the registry last sent or confirmed it (now - its Age)


# (url, accept) -> the document, or None when there is no 200 answer for it.
Sibling = Callable[[str, str], Awaitable[Fetched | None]]


def _parts(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80), path


def origin_of(url: str) -> str:
    """scheme://host[:port], as the routes spell an origin (its back-off key)."""
    scheme, host, port, _ = _parts(url)
    return url_of(scheme, host, port, "")


def key_of(url: str) -> str:
    """The URL as the cache keys it (keys.normalize_url)."""
    return keys.normalize_url(*_parts(url))


def as_of(fields: list[tuple[str, str]], now: float) -> float:
    """When an answer was last the registry's: now, less the Age the cache gave it."""
    age = documents.field(fields, "age")
    return now - int(age) if age is not None and age.isdigit() else now


def sibling_via(
    ask: Ask,
    request: RequestView,
    url: str,
    clock: Callable[[], float],
    asked: Callable[[RequestView], None] = lambda view: None,
) -> Sibling:
    """Siblings of the document at `url` answered through the cache, with the client's credentials only
    when they go to the origin the client sent them to; `asked` is told of each request made."""
    own = origin_of(url)
    credentials = {k: v for k, v in request.headers.items() if k in keys.CREDENTIAL_HEADERS}

    async def sibling(doc_url: str, accept: str) -> Fetched | None:
        origin = origin_of(doc_url)
        headers = {"accept": accept, "accept-encoding": "gzip", **(credentials if origin == own else {})}
        view = RequestView("GET", key_of(doc_url), headers)
        reply = await ask(view, doc_url, origin)
        asked(view)
        status, fields = documents.status_fields(reply)
        if status != 200:
            await reply.discard()
            return None
        raw = await documents.read_whole(reply, doc_url, "to learn publish times from")
        if isinstance(raw, documents.Unread):
            await reply.discard()
            return None
        encoding = documents.field(fields, "content-encoding") or ""
        body = await asyncio.to_thread(documents.decode, raw, encoding)
        return None if body is None else Fetched(body, as_of(fields, clock()))

    return sibling
