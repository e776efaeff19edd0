"""cacheaddon: a caching proxy for package registries, as a mitmproxy addon.

    mitmdump -s cacheaddon/addon.py            (or: cacheaddon run)

Design, in short. mitmproxy cannot time out an upstream, ignores a response set in its error hook, and
(with connection_strategy=eager) drops clients of a dead upstream before any hook runs. So for every
cacheable request to a cached host (GET/HEAD) this addon decides in the `request` hook and performs the
upstream request itself (httpx, with connect and read timeouts) instead of letting mitmproxy do it:

  * a fresh entry is answered from the cache without touching the upstream (HIT);
  * a stale entry is revalidated with its validators; 304 refreshes it (REVALIDATED); a new body replaces it;
  * any upstream failure (refused, DNS, TLS, no byte for cache_upstream_timeout seconds, 5xx, a body cut
    short) is answered from the entry, however stale (STALE), and puts the host in back-off: for
    cache_upstream_backoff seconds its stale entries are served at once while one background request probes;
  * a miss is fetched and streamed to the client while it is written to the cache; it is stored only if it
    arrived whole.
Bodies mitmproxy would otherwise hold in memory (large hits, streamed misses) are served by a loopback relay
inside mitmproxy's own event loop (relay.py). Other requests (other methods, other hosts) are left to
mitmproxy. Disk work runs in a small thread pool; connection_strategy is forced to lazy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net import encoding
from mitmproxy.proxy.mode_specs import ReverseMode

from cacheaddon import policy, responses, rewrite, settings, tasks
from cacheaddon.health import HostHealth
from cacheaddon.relay import Job, Relay
from cacheaddon.service import CacheService, Reply
from cacheaddon.store import Store, StoreError
from cacheaddon.upstream import Upstream, tls_context

logger = logging.getLogger(__name__)

_META = "cacheaddon"  # flow.metadata key: {"url": original URL, "outcome": ..., "detail": ...}
_UPSTREAM_OPTIONS = {
    "cache_upstream_timeout",
    "ssl_insecure",
    "ssl_verify_upstream_trusted_ca",
    "ssl_verify_upstream_trusted_confdir",
}


def _headers(request: http.Request) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in request.headers.items(multi=True):
        name = name.lower()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


def _client_ip(flow: http.HTTPFlow) -> str:
    return str(flow.client_conn.peername[0]) if flow.client_conn.peername else ""


class CacheAddon:
    def __init__(self) -> None:
        self.settings: settings.Settings | None = None
        self.store: Store | None = None
        self.upstream: Upstream | None = None
        self.service: CacheService | None = None
        self.relay = Relay()
        self.health = HostHealth()
        self.pools = (
            ThreadPoolExecutor(1, thread_name_prefix="cacheaddon-db"),
            ThreadPoolExecutor(4, thread_name_prefix="cacheaddon-io"),
        )

    def load(self, loader: Any) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at info
        for name, typespec, default, help_text in settings.OPTIONS:
            loader.add_option(name, typespec, default, help_text)

    def configure(self, updated: set[str]) -> None:
        # Validate before touching any other option: updating one re-enters configure, and a bad value would
        # then fail over and over again while mitmproxy rolls back.
        try:
            new = settings.from_options({name: getattr(ctx.options, name) for name in settings.OPTION_NAMES})
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        if ctx.options.connection_strategy != "lazy":
            # eager connects upstream before any hook runs, so a dead registry would drop clients the cache
            # could have answered.
            logger.info(
                "cacheaddon: using connection_strategy=lazy (needed to answer from the cache during outages)"
            )
            ctx.options.update(connection_strategy="lazy")
        if ctx.options.stream_large_bodies is None:
            # What passes through untouched (other hosts, uploads, ranges) must not be buffered whole either.
            ctx.options.update(stream_large_bodies="1m")
        if not updated & (set(settings.OPTION_NAMES) | _UPSTREAM_OPTIONS) and self.service is not None:
            return
        old, self.settings = self.settings, new
        if (
            old is None
            or (old.cache_dir, old.size_limit) != (new.cache_dir, new.size_limit)
            or self.store is None
        ):
            try:
                store = Store(new.cache_dir, new.size_limit)
            except StoreError as exc:
                raise exceptions.OptionsError(f"cache_dir: {exc}") from None
            if self.store is not None:
                self.store.close()
            self.store = store
        if self.upstream is None or updated & _UPSTREAM_OPTIONS:
            verify = tls_context(
                ctx.options.ssl_insecure,
                ctx.options.ssl_verify_upstream_trusted_ca,
                ctx.options.ssl_verify_upstream_trusted_confdir,
            )
            old_upstream, self.upstream = self.upstream, Upstream(new.upstream_timeout, verify)
            if old_upstream is not None:
                _close_later(old_upstream)
        self.service = CacheService(new, self.store, self.upstream, self.health, self.pools)

    async def running(self) -> None:
        await self.relay.start()

    async def done(self) -> None:
        await self.relay.close()
        if self.upstream is not None:
            await self.upstream.aclose()
        if self.store is not None:
            self.store.close()
        for pool in self.pools:
            pool.shutdown(wait=False)

    def _refusal(self, flow: http.HTTPFlow) -> str | None:
        """Why this client or destination is refused, if it is: not an open proxy; egress firewall."""
        assert self.settings is not None
        ip = _client_ip(flow)
        if not self.settings.is_allowed_client(ip):
            return f"client {ip} is not in cache_allow_clients"
        if self.settings.strict_hosts and not self.settings.is_cached_host(
            flow.request.host, flow.request.port
        ):
            return f"{flow.request.host}:{flow.request.port} is not in cache_hosts (cache_strict_hosts)"
        return None

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or self.settings is None:
            return
        refusal = self._refusal(flow)
        if refusal:
            logger.warning("refused CONNECT from %s: %s", _client_ip(flow), refusal)
            flow.response = responses.forbidden(refusal)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refusals are decided here, before mitmproxy reads the body: a large upload (stream_large_bodies)
        is streamed upstream before the request hook runs, and a chunked one can switch to streaming midway
        without another hook. An addon cannot answer a streamed request, and flow.kill() here leaves the
        client's socket open (mitmproxy 12.3), so a refused request is streamed to the relay instead, which
        drops its body and answers 403: not a byte leaves the host."""
        if flow.response or flow.error or self.settings is None:
            return
        refusal = self._refusal(flow)
        if refusal:
            url = policy.redact(flow.request.url)
            logger.warning("refused %s %s from %s: %s", flow.request.method, url, _client_ip(flow), refusal)
            forbidden = responses.forbidden(refusal)
            fields = [*forbidden.headers.items(multi=True), ("Connection", "close")]
            flow.metadata[_META] = {"url": flow.request.url, "refused": True}
            flow.request.stream = True
            await self.relay.start()
            self._relay(flow, Job(403, "Forbidden", fields, body=forbidden.raw_content or b""))

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.settings is None or self.service is None:
            return
        if flow.request.stream:  # refused in requestheaders, or already streamed upstream: nothing to do
            return
        refusal = self._refusal(flow)
        if refusal:
            url = policy.redact(flow.request.url)
            logger.warning("refused %s %s from %s: %s", flow.request.method, url, _client_ip(flow), refusal)
            flow.response = responses.forbidden(refusal)
            return
        req = flow.request
        endpoint = _endpoint(flow)
        if endpoint is not None and (routed := rewrite.route(req.path)) is not None:
            origin, path = routed
            if not self.settings.is_cached_host(origin.host, origin.port):
                # Only rewritten links lead here; anything else would make the endpoint an open proxy.
                flow.response = responses.forbidden(f"{origin.host}:{origin.port} is not in cache_hosts")
                return
            req.scheme, req.host, req.port, req.path = origin.scheme, origin.host, origin.port, path
            req.host_header = rewrite.hostport(origin)
            if origin != endpoint:
                # Clients send the endpoint's credentials with every link it rewrote: they are not for
                # the other hosts behind it.
                for name in policy.CREDENTIAL_HEADERS:
                    req.headers.pop(name, None)
        if endpoint is not None and ("range" in req.headers or "if-range" in req.headers):
            if not policy.is_immutable(req.pretty_url, self.settings):
                # Documents are rewritten per endpoint, so a slice of the stored original would not be a
                # slice of what the client was sent: answer them whole (RFC 9110 14.2 allows it).
                req.headers.pop("range", None)
                req.headers.pop("if-range", None)
        if not self.settings.is_cached_host(req.host, req.port):
            return
        view = policy.RequestView(
            req.method, policy.normalize_url(req.scheme, req.host, req.port, req.path), _headers(req)
        )
        why_not = policy.request_cacheability(view)
        if why_not is not None:
            if self.settings.offline:
                detail = f"offline: {why_not}"
                self._apply(flow, Reply(policy.Outcome.MISS, detail, responses.error(504, req.url, detail)))
            else:
                flow.metadata[_META] = {"url": req.url, "outcome": policy.Outcome.MISS, "detail": why_not}
            return
        reply = await self.service.answer(view, req.url, req.host)
        if reply is None:
            detail = "range request: passed to the upstream, not stored"
            flow.metadata[_META] = {"url": req.url, "outcome": policy.Outcome.MISS, "detail": detail}
            return
        if endpoint is not None and req.method == "GET":
            reply = await self._rewritten(flow, endpoint, reply)
        if reply.job is not None:
            await self.relay.start()
        self._apply(flow, reply)

    async def _rewritten(self, flow: http.HTTPFlow, endpoint: rewrite.Origin, reply: Reply) -> Reply:
        """An index document served through an endpoint, its links pointing back at the endpoint."""
        assert self.settings is not None
        status, fields = _status_fields(reply)
        ctype = next((v for k, v in fields if k.lower() == "content-type"), "")
        if status != 200 or not rewrite.is_rewritable(ctype):
            return reply
        body = await _materialize(reply)
        if body is None:
            detail = "document could not be read for rewriting"
            return Reply(reply.outcome, detail, responses.error(502, flow.request.url, detail, reply.outcome))
        content_encoding = next((v for k, v in fields if k.lower() == "content-encoding"), "identity")
        host, port = flow.client_conn.sockname[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if flow.client_conn.tls_established else "http"
        base = f"{scheme}://{host}:{port}"
        new_body = await asyncio.to_thread(
            _decode_and_rewrite, body, content_encoding, base, endpoint, self.settings.is_cached_host
        )
        if new_body is None:
            return Reply(reply.outcome, reply.detail, responses.make(status, "OK", fields, body))
        # The rewritten document is sent unencoded; its ETag still names the upstream's document.
        kept = [
            (k, v)
            for k, v in fields
            if k.lower() not in ("content-encoding", "content-length", "accept-ranges")
        ]
        return Reply(reply.outcome, reply.detail, responses.make(status, "OK", kept, new_body))

    def _apply(self, flow: http.HTTPFlow, reply: Reply) -> None:
        flow.metadata[_META] = {"url": flow.request.url, "outcome": reply.outcome, "detail": reply.detail}
        if reply.response is not None:
            if flow.request.method == "HEAD" and reply.response.raw_content:
                # A body after a HEAD answer would be read by a keep-alive client as its next response.
                length = reply.response.headers.get("content-length")
                reply.response.raw_content = b""
                if length is not None:
                    reply.response.headers["content-length"] = length
            flow.response = reply.response
            return
        assert reply.job is not None
        if not flow.live:  # the client left while we worked
            tasks.spawn(reply.discard())
            return
        self._relay(flow, reply.job)

    def _relay(self, flow: http.HTTPFlow, job: Job) -> None:
        """Re-points the flow at the relay, which answers it with `job`."""
        token = self.relay.register(job)
        flow.metadata[_META]["relay"] = True
        flow.request.scheme, flow.request.host, flow.request.port = "http", "127.0.0.1", self.relay.port
        flow.request.path = "/" + token

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(_META)
        if meta is None or flow.response is None:
            return
        if meta.get("relay"):
            flow.response.stream = True
        elif "x-cache" not in flow.response.headers:  # passed through: say so before any byte streams
            for name, value in responses.cache_fields(meta["outcome"], meta["detail"]):
                flow.response.headers[name] = value

    def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(_META)
        if meta is None or flow.response is None:
            return
        if meta.get("relay"):
            flow.request.url = meta["url"]  # logs and other addons see the real URL, not the relay's
        if meta.get("refused"):
            return  # logged when refused
        if not meta.get("relay") and "x-cache" not in flow.response.headers:
            for name, value in responses.cache_fields(meta["outcome"], meta["detail"]):
                flow.response.headers[name] = value
        size = flow.response.headers.get("content-length", "-")
        logger.info(
            "%s %s %s %s",
            flow.response.headers.get("x-cache", "-"),
            flow.response.status_code,
            size,
            policy.redact(meta["url"]),
        )

    def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(_META)
        if meta is None:
            return
        if meta.get("relay"):
            flow.request.url = meta["url"]
        if meta.get("refused"):
            return
        logger.warning("%s failed %s: %s", meta["outcome"].value, policy.redact(meta["url"]), flow.error)


def _endpoint(flow: http.HTTPFlow) -> rewrite.Origin | None:
    """The upstream origin of the registry endpoint (reverse-proxy listener) this flow came through."""
    mode = flow.client_conn.proxy_mode
    if isinstance(mode, ReverseMode) and mode.scheme in ("http", "https"):
        return rewrite.Origin(mode.scheme, mode.address[0].lower(), mode.address[1])
    return None


def _status_fields(reply: Reply) -> tuple[int, list[tuple[str, str]]]:
    if reply.response is not None:
        return reply.response.status_code, list(reply.response.headers.items(multi=True))
    assert reply.job is not None
    return reply.job.status, reply.job.headers


async def _materialize(reply: Reply) -> bytes | None:
    """The whole body of a reply (documents only: they are rewritten in memory)."""
    if reply.response is not None:
        return reply.response.raw_content or b""
    job: Job | None = reply.job
    assert job is not None
    try:
        if job.file is not None:
            job.file.seek(job.offset)
            data = await asyncio.to_thread(job.file.read, job.length)
            if job.sha256 is not None and hashlib.sha256(data).hexdigest() != job.sha256:
                logger.warning("a cached document changed on disk: dropped, will fetch again")
                if job.on_corrupt is not None:
                    await job.on_corrupt()
                return None
            return data
        assert job.stream is not None
        return b"".join([chunk async for chunk in job.stream])
    except Exception as exc:
        logger.warning("could not read a document to rewrite: %s", exc)
        return None
    finally:
        await job.aclose()


def _decode_and_rewrite(
    body: bytes,
    content_encoding: str,
    base: str,
    endpoint: rewrite.Origin,
    cached: Callable[[str, int], bool],
) -> bytes | None:
    """In a thread: a 20 MB npm document takes ~0.1 s to decode and rewrite. None if it cannot be decoded."""
    try:
        decoded = encoding.decode(body, content_encoding)
    except ValueError:
        return None
    data = decoded if isinstance(decoded, bytes) else decoded.encode()
    return rewrite.rewrite_links(data, base, endpoint, cached)


def _close_later(upstream: Upstream) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop yet: nothing was opened
        return
    tasks.spawn(upstream.aclose())


addons = [CacheAddon()]
