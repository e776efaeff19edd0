"""Talks to upstream registries ourselves, with timeouts mitmproxy does not have, and reads bodies safely.

mitmproxy has no connect or read timeout, ignores a response set in its error hook, and cannot let an addon
answer once it waits on the upstream (see MITMPROXY-NOTES.md). So cacheable requests are fetched here, inside
the request hook, where every failure can still be turned into a stale answer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import httpx

from cacheaddon.parent import Route
from cacheaddon.policy import HOP_BY_HOP, Failure

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
_HTTPX_DEFAULTS = ("accept", "accept-encoding", "user-agent")


class UpstreamFailure(Exception):
    """The upstream could not give a complete answer; str() is the human reason ('connection refused'), and
    the failure's kind its label (policy.Failure.kind)."""

    def __init__(self, reason: str, kind: str, timeout: bool = False) -> None:
        super().__init__(reason)
        self.failure = Failure(reason, timeout, kind=kind)


def _timed_out(exc: BaseException | None = None) -> UpstreamFailure:
    return UpstreamFailure("timed out", "timeout", timeout=True)


def _tls(exc: BaseException) -> UpstreamFailure:
    return UpstreamFailure(f"TLS failure ({getattr(exc, 'reason', None) or exc})", "tls")


def _protocol(exc: BaseException) -> UpstreamFailure:
    return UpstreamFailure(f"protocol error ({exc})", "protocol")


def _connect(exc: BaseException) -> UpstreamFailure:
    return UpstreamFailure(f"connection failed ({exc})", "connect")


# What each library exception means, most telling first: the whole chain of causes (__cause__, __context__)
# is searched for each type in turn, so an OS error wrapped by httpcore and then httpx is still recognised.
_FAILURES: tuple[tuple[type[BaseException], Callable[[BaseException], UpstreamFailure]], ...] = (
    (httpx.TimeoutException, _timed_out),
    (TimeoutError, _timed_out),
    (socket.gaierror, lambda exc: UpstreamFailure("name resolution failed", "dns")),
    (ssl.SSLError, _tls),
    (ConnectionRefusedError, lambda exc: UpstreamFailure("connection refused", "refused")),
    (ConnectionResetError, lambda exc: UpstreamFailure("connection reset", "reset")),
    (httpx.ProxyError, lambda exc: UpstreamFailure(f"parent proxy refused ({exc})", "proxy")),
    (httpx.RemoteProtocolError, _protocol),
    (httpx.ConnectError, _connect),
)
# While a body is read, a protocol error from h11 means the body did not arrive whole: the peer closed the
# connection before Content-Length was reached, or before the last chunk.
_CUT = "connection closed before the body was complete"


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def classify(exc: BaseException, reading_body: bool = False) -> UpstreamFailure:
    """Our failure for a library's exception, by its type (and those of its causes), never by its text."""
    if isinstance(exc, UpstreamFailure):
        return exc
    chain = _causes(exc)
    for kind, failure in _FAILURES:
        found = next((cause for cause in chain if isinstance(cause, kind)), None)
        if found is None:
            continue
        if reading_body and kind is httpx.RemoteProtocolError:
            return UpstreamFailure(_CUT, "truncated")
        return failure(found)
    # The variable part in parentheses, as in the reasons above: what comes before is a short, fixed text.
    return UpstreamFailure(f"{type(exc).__name__} ({exc})" if str(exc) else type(exc).__name__, "other")


def tls_context(insecure: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext | bool:
    """Upstream verification that follows mitmproxy's own ssl_* options."""
    if insecure:
        return False
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    # The system's CAs (SSL_CERT_FILE honoured: corporate roots live there) and certifi's, as mitmproxy uses.
    import certifi

    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    return context


class _NoCookies(httpx.Cookies):
    """A shared client must not keep one client's cookies for the next; and httpx's extraction costs
    O(n^2) in the number of request fields, which a hostile request could use to stall the event loop."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass

    def set_cookie_header(self, request: httpx.Request) -> None:
        pass


class UpstreamClient:
    """The HTTP client every upstream request the addon makes goes through."""

    def __init__(
        self, timeout: int, verify: ssl.SSLContext | bool, parents: Sequence[Route] = ()
    ) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=32)
        # Through a parent proxy (parent.py): CONNECT for https, absolute-form requests for http, with the
        # parent's credentials as Proxy-Authorization. The same timeouts apply to the parent's answers.
        mounts: dict[str, httpx.AsyncBaseTransport | None] = {
            route.pattern: None
            if route.proxy is None
            else httpx.AsyncHTTPTransport(
                verify=verify, limits=limits, trust_env=False, proxy=httpx.Proxy(route.proxy, auth=route.auth)
            )
            for route in parents
        }
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(float(timeout)),
            verify=verify,
            trust_env=False,
            follow_redirects=False,
            limits=limits,
            mounts=mounts,
        )
        self._client._cookies = _NoCookies()  # the public setter would copy it into a plain jar
        # httpx's timeouts are per read: a server trickling its response head a byte at a time would never
        # trip them. The whole head must arrive within a few timeouts.
        self._head_deadline = 4.0 * timeout

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None = None
    ) -> httpx.Response:
        """Sends the request and waits for the response head. Raises UpstreamFailure."""
        # RFC 9110 7.6.1: the fields a client names in Connection are for this hop only, like the fixed ones.
        named = {n.strip().lower() for n in headers.get("connection", "").split(",")}
        dropped = {*HOP_BY_HOP, *named, "host", "content-length"}  # httpx frames the body itself
        forwarded = {k: v for k, v in headers.items() if k not in dropped}
        request = self._client.build_request(method, url, headers=forwarded, content=content or None)
        for name in _HTTPX_DEFAULTS:  # send what the client sent, not httpx's own defaults
            if name not in forwarded:
                del request.headers[name]
        try:
            async with asyncio.timeout(self._head_deadline):
                return await self._client.send(request, stream=True)
        except TimeoutError:
            raise _timed_out() from None
        except Exception as exc:  # every way an upstream can fail ends up here
            raise classify(exc) from exc


def expected_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.isdigit() or "chunked" in response.headers.get("transfer-encoding", ""):
        return None
    return int(value)


async def raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent (still content-encoded); raises UpstreamFailure on a timeout or a short body."""
    # A HEAD answer, a 304 and a 204 announce a length but carry no body (RFC 9110 6.4.1).
    bodiless = response.request.method == "HEAD" or response.status_code in (204, 304)
    expected, seen = (None if bodiless else expected_length(response)), 0
    try:
        async for chunk in response.aiter_raw(CHUNK):
            seen += len(chunk)
            yield chunk
    except Exception as exc:
        raise classify(exc, reading_body=True) from exc
    finally:
        await response.aclose()
    if expected is not None and seen != expected:
        raise UpstreamFailure(f"body cut short ({seen} of {expected} bytes)", "truncated")
