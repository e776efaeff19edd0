"""Carries out the route of a request (routing.py) on a mitmproxy flow: re-targets an endpoint's rewritten
link, has the cache service answer or forward it, and rewrites what an endpoint serves. Whatever fails on
the way ends in an answer of ours, with one log line: never in mitmproxy's own forwarding."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import assert_never

import httpx
from mitmproxy import http

from cacheaddon import access, endpoint, keys, responses, rewrite
from cacheaddon.guard import Guard
from cacheaddon.keys import redact
from cacheaddon.policy import Outcome
from cacheaddon.reply import Reply
from cacheaddon.routing import BAD_TARGET, Route, Target, Way, route, url_of
from cacheaddon.service import CacheService
from cacheaddon.settings import Settings

logger = logging.getLogger(__name__)

CLIENT_HOST = "cacheaddon-client-host"  # flow.metadata key: the Host an endpoint's client sent

# Exceptions on the addon's path that mean the client sent what no client can have meant (a URL our HTTP
# client refuses); anything else is our own failure.
_CLIENT_ERRORS: tuple[type[Exception], ...] = (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError)


@dataclass
class Handled:
    """What the request hook writes onto the flow."""

    url: str
    reply: Reply | None = None  # our answer (None: left to mitmproxy)
    detail: str | None = None  # left to mitmproxy: the X-Cache-Detail its answer gets (None: no X-Cache)
    refused: bool = False  # answered 403, logged already


def headers_of(request: http.Request) -> dict[str, str]:
    fields: dict[str, list[str]] = {}
    for name, value in request.headers.items(multi=True):
        fields.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in fields.items()}


def url_of_request(req: http.Request) -> str:
    """The request's URL, built from the parts mitmproxy connects by (its own .url loses an IPv6 host's
    brackets, and glues on a path that need not start with '/')."""
    return url_of(req.scheme, req.host, req.port, req.path)


def client_ip(flow: http.HTTPFlow) -> str:
    return access.peer_ip(flow.client_conn.peername)


async def handle(
    flow: http.HTTPFlow, settings: Settings, service: CacheService, guard: Guard | None = None
) -> Handled:
    """Routes the request and carries the route out; any exception becomes our 400 or 502. With a guard,
    what the cache answers passes the supply-chain guard."""
    url = url_of_request(flow.request)
    try:
        return await _carry_out(flow, settings, service, guard)
    except Exception as exc:
        client_error = isinstance(exc, _CLIENT_ERRORS)
        status, detail = (400, BAD_TARGET) if client_error else (502, "internal error")
        said = redact(str(exc))[:300]  # one line, whatever the exception carries
        logger.error(
            "%s %s answered %d: %s: %s", flow.request.method, redact(url), status, type(exc).__name__, said
        )
        return Handled(url, Reply(Outcome.MISS, detail, responses.error(status, redact(url), detail)))


async def _carry_out(
    flow: http.HTTPFlow, settings: Settings, service: CacheService, guard: Guard | None
) -> Handled:
    req = flow.request
    endpoint_origin = endpoint.origin_of(flow)
    target = Target(
        req.method,
        req.scheme,
        req.host,
        req.port,
        req.path,
        headers_of(req),
        client_ip(flow),
        endpoint_origin,
    )
    where = route(target, settings)
    _retarget(req, where)
    match where.way:
        case Way.REFUSE:
            logger.warning(
                "refused %s %s from %s: %s", req.method, redact(where.url), target.client_ip, where.detail
            )
            return Handled(
                where.url, Reply(Outcome.MISS, where.detail, responses.forbidden(where.detail)), refused=True
            )
        case Way.ERROR:
            error = responses.error(where.status, redact(where.url), where.detail)
            return Handled(where.url, Reply(Outcome.MISS, where.detail, error))
        case Way.PASS:
            return Handled(where.url, detail=where.detail or None)
        case Way.FORWARD:
            assert where.view is not None
            reply = await service.forward(where.view, where.url, where.origin, req.raw_content, where.detail)
        case Way.ANSWER:
            assert where.view is not None
            answer = functools.partial(service.answer, whole_documents=endpoint_origin is not None)
            if guard is not None:  # answers through the cache, then filters what the client may see
                reply = await guard.answer(answer, where.view, where.url, where.origin)
            else:
                reply = await answer(where.view, where.url, where.origin)
        case _:
            assert_never(where.way)
    if endpoint_origin is not None:
        base = endpoint.client_base(flow, flow.metadata.get(CLIENT_HOST))
        reply = await endpoint.rewritten(
            reply, base, endpoint_origin, settings.is_cached_host, where.url, service.memo.rewrites
        )
    return Handled(where.url, reply)


def _retarget(req: http.Request, where: Route) -> None:
    """Points the request at an endpoint route's destination, without the endpoint's credentials."""
    if where.destination is None:
        return
    origin = where.destination
    req.scheme, req.host, req.port, req.path = origin.scheme, origin.host, origin.port, where.path
    req.host_header = rewrite.hostport(origin)
    if where.drop_credentials:
        for name in keys.CREDENTIAL_HEADERS:
            req.headers.pop(name, None)
