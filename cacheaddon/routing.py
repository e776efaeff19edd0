"""Where a request to the proxy goes: refused, answered with our own error, left to mitmproxy, forwarded by
us, or answered by the cache, and to which URL (a rewritten endpoint link leads to another host). Pure
decisions, no I/O and no mitmproxy; gate.py carries them out."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cacheaddon import access, keys, policy, rewrite
from cacheaddon.keys import RequestView
from cacheaddon.settings import Settings

# What a client can have meant by a request target: no control characters (a NUL, a line break), and no more
# than an HTTP client would send (httpx, which fetches for us, refuses longer URLs).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_URL_LENGTH = 65536
BAD_TARGET = "invalid request target"


class Way(enum.Enum):
    REFUSE = "refuse"  # 403: access rules, or an endpoint route to a host outside cache_hosts
    ERROR = "error"  # our own error page (status): offline, a request target no client can have meant
    PASS = "pass"  # left to mitmproxy: a host the cache does not serve, a protocol switch
    FORWARD = "forward"  # sent upstream by us, with our timeouts and back-off, not stored
    ANSWER = "answer"  # answered by the cache


@dataclass(frozen=True)
class Target:
    """The request as the client sent it (after mitmproxy's parsing)."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    headers: Mapping[str, str]  # lower-case names, repeated fields joined with ", "
    client_ip: str
    endpoint_origin: rewrite.Origin | None  # the upstream of the endpoint it came by; None: forward proxy


@dataclass(frozen=True)
class Route:
    way: Way
    url: str  # where the request goes (for pages and logs)
    detail: str = ""  # the X-Cache-Detail text, or the refusal
    status: int = 0  # of an ERROR
    destination: rewrite.Origin | None = None  # set when an endpoint route leads to another origin
    path: str = ""  # the request target there, with destination
    drop_credentials: bool = False  # the endpoint's credentials are not for the destination
    view: RequestView | None = None  # of FORWARD and ANSWER
    origin: str = ""  # scheme://host:port, the back-off key, of FORWARD and ANSWER


def url_of(scheme: str, host: str, port: int, path: str) -> str:
    return f"{scheme}://{rewrite.hostport(rewrite.Origin(scheme, host, port))}{path}"


def route(target: Target, settings: Settings) -> Route:
    scheme, host, port, path = target.scheme, target.host, target.port, target.path
    url = url_of(scheme, host, port, path)
    refusal = access.refusal(settings, target.client_ip, host, port)
    if refusal:
        return Route(Way.REFUSE, url, refusal)
    destination, drop_credentials = None, False
    if target.endpoint_origin is not None and (routed := rewrite.route(path)) is not None:
        destination, path = routed
        if not settings.is_cached_host(destination.host, destination.port) or not (
            settings.is_permitted_destination(destination.host, destination.port)
        ):
            # Only rewritten links lead here; anything else would make the endpoint an open proxy.
            return Route(Way.REFUSE, url, f"{destination.host}:{destination.port} is not in cache_hosts")
        scheme, host, port = destination.scheme, destination.host, destination.port
        url = url_of(scheme, host, port, path)
        # Clients send the endpoint's credentials with every link it rewrote: they are not for the other
        # hosts behind it.
        drop_credentials = destination != target.endpoint_origin
    base = Route(Way.PASS, url, destination=destination, path=path, drop_credentials=drop_credentials)
    if not settings.is_cached_host(host, port):
        if settings.offline:  # a reproducible build must not reach out anywhere
            return replace(base, way=Way.ERROR, detail="offline: not a cached host", status=504)
        return base
    # HTTP/2 lets a client send any :path; glued to the host it could name another host entirely.
    if not path.startswith("/") or _CONTROL.search(path) or len(url) > MAX_URL_LENGTH:
        return replace(base, way=Way.ERROR, detail=BAD_TARGET, status=400)
    if "upgrade" in target.headers and not settings.offline:
        # A protocol switch (WebSocket) is mitmproxy's to relay, and never an answer to keep.
        return replace(base, detail="protocol switch: passed to the upstream")
    method = target.method
    if target.endpoint_origin is not None and method == "HEAD" and not policy.is_immutable(url, settings):
        method = "GET"  # a document's headers as the endpoint serves it (rewritten) need its body
    headers = target.headers
    if drop_credentials:
        headers = {k: v for k, v in headers.items() if k not in keys.CREDENTIAL_HEADERS}
    view = RequestView(method, keys.normalize_url(scheme, host, port, path), headers)
    base = replace(base, view=view, origin=url_of(scheme, host, port, ""))
    why_not = policy.request_cacheability(view)
    if why_not is None:
        return replace(base, way=Way.ANSWER)
    if settings.offline:
        return replace(base, way=Way.ERROR, detail=f"offline: {why_not}", status=504, view=None, origin="")
    return replace(base, way=Way.FORWARD, detail=why_not)
