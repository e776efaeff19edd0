"""Registry endpoints (mitmproxy reverse-proxy listeners): which flows came through one, the address its
client reached it by, and the index documents and redirects it serves, rewritten to point back at it."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from cacheaddon import documents, responses, rewrite
from cacheaddon.keys import redact
from cacheaddon.memo import Lru
from cacheaddon.reply import Reply
from cacheaddon.settings import HostPattern

logger = logging.getLogger(__name__)

_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")
_RELOCATING = ("location", "content-location")
_NOT_KEPT = ("content-encoding", "content-length", "accept-ranges")  # of a document sent rewritten

Cached = Callable[[str, int], bool]


def origin_of(flow: http.HTTPFlow) -> rewrite.Origin | None:
    """The origin (upstream) of the endpoint this flow came through; None for the forward proxy."""
    mode = flow.client_conn.proxy_mode
    if isinstance(mode, ReverseMode) and mode.scheme in ("http", "https"):
        return rewrite.Origin(mode.scheme, mode.address[0].lower(), mode.address[1])
    return None


def origin_hosts(modes: list[str]) -> tuple[HostPattern, ...]:
    """The origins of the endpoints (reverse modes) are cached hosts, whatever cache_hosts says."""
    hosts = []
    for spec in modes:
        try:
            mode = ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy reports it
        if isinstance(mode, ReverseMode) and mode.scheme in ("http", "https"):
            hosts.append(HostPattern(mode.address[0].lower(), mode.address[1]))
    return tuple(hosts)


def client_base(flow: http.HTTPFlow, host_header: str | None) -> str:
    """The endpoint's origin as its client reached it: the Host it sent (through a port forward, a container's
    published port or a name, the socket address is not one the client can reach), else the socket's."""
    scheme = "https" if flow.client_conn.tls_established else "http"
    if host_header and _AUTHORITY.fullmatch(host_header):
        return f"{scheme}://{host_header.lower()}"
    host, port = flow.client_conn.sockname[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


async def rewritten(
    reply: Reply,
    base: str,
    endpoint_origin: rewrite.Origin,
    cached: Cached,
    url: str,
    memo: Lru | None = None,
) -> Reply:
    """The reply as the endpoint serves it: links in index documents and redirect targets that point at a
    cached host point back at the endpoint instead. memo: rewritten documents kept for the settings that
    `cached` belongs to, by the sha256 of the stored document the reply sends unchanged (reply.sha256: a
    reply whose body was changed, e.g. filtered by the guard, has none), so a hit rewrites nothing."""
    status, fields = documents.status_fields(reply)
    if 300 <= status < 400:
        _relocate(reply, base, endpoint_origin, cached)
        return reply
    content_type = documents.field(fields, "content-type") or ""
    if status != 200 or not rewrite.is_rewritable(content_type):
        return reply
    content_encoding = documents.field(fields, "content-encoding") or ""
    known = (reply.sha256, content_encoding, base, endpoint_origin) if reply.sha256 else None
    if known is not None and memo is not None and (done := memo.get(known)) is not None:
        await reply.discard()
        return _with_body(reply, status, fields, done)
    body = await documents.read_whole(reply, url, "to rewrite")
    if body is documents.Unread.TOO_LARGE:
        return reply
    if body is documents.Unread.FAILED:
        return documents.unreadable(reply, url, "rewriting")
    new_body = await asyncio.to_thread(
        _decode_and_rewrite, body, content_encoding, base, endpoint_origin, cached
    )
    if new_body is None:
        logger.warning("%s: document could not be decoded for rewriting: served as is", redact(url))
        return Reply(reply.outcome, reply.detail, responses.make(status, "OK", fields, body))
    if known is not None and memo is not None:
        memo.put(known, new_body)
    return _with_body(reply, status, fields, new_body)


def _with_body(reply: Reply, status: int, fields: list[tuple[str, str]], new_body: bytes) -> Reply:
    """The reply with its document rewritten: sent unencoded, whole (a range of the original would not be a
    range of this) and with the ETag of the upstream's document, which is what the client's conditional
    requests are answered against."""
    if reply.response is not None:  # a hit from memory: its response changes body, not built again
        response = reply.response
        for name in _NOT_KEPT:
            response.headers.pop(name, None)
        response.headers["content-length"] = str(len(new_body))
        response.raw_content = new_body
        return Reply(reply.outcome, reply.detail, response, stored=reply.stored)
    kept = [(k, v) for k, v in fields if k.lower() not in _NOT_KEPT]
    response = responses.make(status, "OK", kept, new_body)
    return Reply(reply.outcome, reply.detail, response, stored=reply.stored)


def _relocate(reply: Reply, base: str, endpoint_origin: rewrite.Origin, cached: Cached) -> None:
    """A redirect to a cached host leads back through the endpoint, or the client would leave the cache."""
    if reply.response is not None:
        for name in _RELOCATING:
            if name in reply.response.headers:
                value = reply.response.headers[name]
                reply.response.headers[name] = rewrite.rewrite_url(value, base, endpoint_origin, cached)
    elif reply.job is not None:
        reply.job.headers = [
            (k, rewrite.rewrite_url(v, base, endpoint_origin, cached) if k.lower() in _RELOCATING else v)
            for k, v in reply.job.headers
        ]


def _decode_and_rewrite(
    body: bytes, content_encoding: str, base: str, endpoint_origin: rewrite.Origin, cached: Cached
) -> bytes | None:
    """In a thread: a 20 MB npm document takes ~0.1 s to decode and rewrite. None if it cannot be decoded
    (or would decode to more than documents.LIMIT bytes)."""
    data = documents.decode(body, content_encoding)
    return None if data is None else rewrite.rewrite_links(data, base, endpoint_origin, cached)
