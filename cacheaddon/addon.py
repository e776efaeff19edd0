"""cacheaddon: a caching proxy for package registries, as a mitmproxy addon.

    mitmdump -s cacheaddon/addon.py            (or: cacheaddon run)

Design, in short. mitmproxy cannot time out an upstream, ignores a response set in its error hook, and
(with connection_strategy=eager) drops clients of a dead upstream before any hook runs. So for every
cacheable request to a cached host (GET/HEAD) this addon decides in the `request` hook and performs the
upstream request itself (httpx, with connect and read timeouts) instead of letting mitmproxy do it:

  * a fresh entry is answered from the cache without touching the upstream (HIT);
  * a stale entry is revalidated with its validators; 304 refreshes it (REVALIDATED); a new body replaces it;
  * any upstream failure (refused, DNS, TLS, no byte for cache_upstream_timeout seconds, 5xx, a body cut
    short) is answered from the entry, however stale (STALE), and puts the origin in back-off: for
    cache_upstream_backoff seconds its stale entries are served at once, and what is not cached is answered
    503 at once, while one background request probes;
  * a miss is fetched and streamed to the client while it is written to the cache; it is stored only if it
    arrived whole.
  * what the cache cannot answer on a cached host (other methods, a Range of something not cached) is sent
    by the same client, with the same timeouts and back-off, and not stored.
Bodies mitmproxy would otherwise hold in memory (large hits, streamed misses) are served by a loopback relay
inside mitmproxy's own event loop (relay.py). Requests to other hosts, and uploads large enough to be
streamed, are left to mitmproxy. Access is checked at every door: requestheaders and CONNECT for HTTP,
server_connect for any connection mitmproxy opens (raw TCP/UDP modes), dns_request for DNS mode. Disk work
runs in a small thread pool; connection_strategy is forced to lazy, keep_host_header on (endpoints).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mitmproxy import connection, ctx, dns, exceptions, http
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import server_hooks

from cacheaddon import (
    access,
    endpoint,
    fleet,
    gate,
    guard,
    parent,
    responses,
    rewrite,
    settings,
    startup,
    tasks,
)
from cacheaddon.health import HostHealth
from cacheaddon.idle import IdleClients
from cacheaddon.keys import redact
from cacheaddon.observe import Observer
from cacheaddon.policy import Outcome
from cacheaddon.relay import Job, Relay
from cacheaddon.service import CacheService
from cacheaddon.sharedtier import SharedTier
from cacheaddon.store import Store, StoreError
from cacheaddon.upstream import UpstreamClient, tls_context

logger = logging.getLogger(__name__)

_META = "cacheaddon"  # flow.metadata key: {"url": original URL, "outcome": ..., "detail": ...}
_UPSTREAM_OPTIONS = {
    "cache_upstream_timeout",
    "cache_env_proxy",
    "mode",
    "upstream_auth",
    "ssl_insecure",
    "ssl_verify_upstream_trusted_ca",
    "ssl_verify_upstream_trusted_confdir",
}


# ctx.master attribute: the user's own keep_host_header, read before the first addon instance changed it
# (the master outlives a script reload; a new instance would otherwise take our change for the user's).
_USER_KEEP_HOST = "_cacheaddon_user_keep_host_header"


class CacheAddon:
    def __init__(self, stop_on_bad_options: bool = False) -> None:
        # True for the instance `mitmdump -s` loads: a bad option value then stops the proxy (startup.py).
        # `cacheaddon run` reports bad values itself, and tests want the OptionsError.
        self.stop_on_bad_options = stop_on_bad_options
        self.idle = IdleClients()
        self.addons = [self.idle]  # mitmproxy calls a sub-addon's hooks too
        self.settings: settings.Settings | None = None
        self.store: Store | None = None
        self.client: UpstreamClient | None = None
        self.service: CacheService | None = None
        self.tier: SharedTier | None = None
        self.guard: guard.Guard | None = None  # the supply-chain guard, when one of its options is set
        self.observer: Observer | None = None
        self.relay = Relay()
        self.health = HostHealth()
        self.pools = (
            ThreadPoolExecutor(1, thread_name_prefix="cacheaddon-db"),
            ThreadPoolExecutor(4, thread_name_prefix="cacheaddon-io"),
        )
        self.own_host_header = False  # we turned keep_host_header on, and restore Host ourselves
        self.strip_proxy_auth = True  # False when mitmproxy's upstream_auth puts Proxy-Authorization there

    def load(self, loader: Any) -> None:
        # httpx logs every request at info and httpcore ten lines at debug: each record is a hook call on
        # every mitmproxy addon, which cost a miss more than the fetch itself.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.relay.bind()
        for name, typespec, default, help_text in settings.OPTIONS:
            loader.add_option(name, typespec, default, help_text)
        if self.stop_on_bad_options:
            startup.apply_deferred(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        except exceptions.OptionsError as exc:
            if self.stop_on_bad_options and not startup.is_running(ctx.master):
                startup.stop(str(exc))
            raise

    def _configure(self, updated: set[str]) -> None:
        # Everything that can fail comes before any option is updated: an update re-enters configure, and
        # a failure there makes mitmproxy roll back, which re-enters it again, for ever.
        try:
            new = settings.from_options({name: getattr(ctx.options, name) for name in settings.OPTION_NAMES})
            env = os.environ if new.env_proxy else None
            parents = parent.routes(ctx.options.mode, getattr(ctx.options, "upstream_auth", None), env)
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        modes = list(ctx.options.mode)
        new = dataclasses.replace(new, hosts=new.hosts + endpoint.origin_hosts(modes), parents=parents)
        if self.service is None or updated & (set(settings.OPTION_NAMES) | _UPSTREAM_OPTIONS | {"mode"}):
            self._build(new, updated)
        self._force_options()

    def _build(self, new: settings.Settings, updated: set[str]) -> None:
        """The store, the upstream client and the service for these settings (reusing what did not change)."""
        old = self.settings
        try:
            new_guard = guard.build(new, self.guard)
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        store = self.store
        if store is None or old is None or (old.cache_dir, old.size_limit) != (new.cache_dir, new.size_limit):
            try:
                store = Store(new.cache_dir, new.size_limit)
            except StoreError as exc:
                raise exceptions.OptionsError(f"cache_dir: {exc}") from None
        client = self.client
        if client is None or updated & _UPSTREAM_OPTIONS:
            try:
                verify = tls_context(
                    ctx.options.ssl_insecure,
                    ctx.options.ssl_verify_upstream_trusted_ca,
                    ctx.options.ssl_verify_upstream_trusted_confdir,
                )
            except (OSError, ValueError) as exc:
                if store is not self.store:
                    store.close()
                raise exceptions.OptionsError(f"ssl_verify_upstream_trusted_ca: {exc}") from None
            client = UpstreamClient(new.upstream_timeout, verify, new.parents)
        if self.store is not None and store is not self.store:
            self.store.close()
        if self.client is not None and client is not self.client:
            _close_later(self.client)
        self.settings, self.store, self.client, self.guard = new, store, client, new_guard
        self.idle.timeout = new.client_timeout
        self.tier = fleet.tier_for(new, self.tier)
        self.service = CacheService(new, store, client, self.health, self.pools, self.tier)
        self.observer = Observer.update(self.observer, new, store)
        self.service.fetcher.counters = self.observer.counters
        if self.guard is not None:
            self.guard.counters, self.guard.asked = self.observer.counters, self.observer.record

    def _force_options(self) -> None:
        """mitmproxy options the cache needs; each update re-enters configure, which then changes nothing."""
        if ctx.options.connection_strategy != "lazy":
            # eager connects upstream before any hook runs, so a dead registry would drop clients the cache
            # could have answered.
            logger.info(
                "cacheaddon: using connection_strategy=lazy (needed to answer from the cache during outages)"
            )
            ctx.options.update(connection_strategy="lazy")
        if ctx.options.stream_large_bodies is None:
            # What passes through untouched (other hosts, uploads) must not be buffered whole either.
            ctx.options.update(stream_large_bodies="1m")
        if not hasattr(ctx.master, _USER_KEEP_HOST):
            setattr(ctx.master, _USER_KEEP_HOST, ctx.options.keep_host_header)
        # Endpoints rewrite links to the address their client used, which only the client's Host tells;
        # mitmproxy would overwrite it before any hook. requestheaders restores the upstream's Host (and SNI).
        self.own_host_header = not getattr(ctx.master, _USER_KEEP_HOST)
        if not ctx.options.keep_host_header:
            ctx.options.update(keep_host_header=True)
        self.strip_proxy_auth = not getattr(ctx.options, "upstream_auth", None)

    # running and done are plain functions: mitmproxy calls them synchronously on a script it (re)loads or
    # unloads while running (an async one would fail there, and the relay would never serve).

    def running(self) -> None:
        startup.mark_running(ctx.master)
        tasks.spawn(self.relay.start())
        if self.service is not None and self.service.fleet is not None:
            self.service.fleet.start()  # checks the shared tier, and says so in one log line

    def done(self) -> None:
        self.relay.close()
        if self.tier is not None:
            self.tier.close()
        if self.client is not None:
            _close_later(self.client)
        if self.observer is not None:
            self.observer.close()
        if self.store is not None:
            self.store.close()
        for pool in self.pools:
            pool.shutdown(wait=False)

    def _refusal(self, client: connection.Client, host: str, port: int) -> str | None:
        assert self.settings is not None
        return access.refusal(self.settings, access.peer_ip(client.peername), host, port)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The last gate before any connection leaves: raw TCP and UDP (SOCKS5, transparent, tcp:/udp:
        reverse modes, tunnels mitmproxy does not intercept) never pass the HTTP hooks."""
        address = data.server.address
        if self.settings is None or data.server.error or address is None:
            return
        if address == ("127.0.0.1", self.relay.port):
            return
        ip, host, port = access.peer_ip(data.client.peername), str(address[0]), int(address[1])
        refusal = access.connection_refusal(self.settings, ip, host, port)
        if refusal:
            logger.warning("refused a connection to %s:%s: %s", host, port, refusal)
            data.server.error = refusal

    def dns_request(self, flow: dns.DNSFlow) -> None:
        if self.settings is None or flow.response or flow.error:
            return
        names = [q.name for q in flow.request.questions] or [""]
        refusal = access.dns_refusal(self.settings, access.peer_ip(flow.client_conn.peername), names)
        if refusal:
            logger.warning("refused a DNS query for %s: %s", ", ".join(names), refusal)
            flow.response = flow.request.fail(response_codes.REFUSED)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or self.settings is None:
            return
        refusal = self._refusal(flow.client_conn, flow.request.host, flow.request.port)
        if refusal:
            logger.warning("refused CONNECT from %s: %s", gate.client_ip(flow), refusal)
            flow.response = responses.forbidden(refusal)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refusals are decided here, before mitmproxy reads the body: a large upload (stream_large_bodies)
        is streamed upstream before the request hook runs, and a chunked one can switch to streaming midway
        without another hook. An addon cannot answer a streamed request, and flow.kill() here leaves the
        client's socket open (mitmproxy 12.3), so a refused request is streamed to the relay instead, which
        drops its body and answers 403: not a byte leaves the host."""
        if flow.response or flow.error or self.settings is None:
            return
        if self.observer is not None and self.observer.is_metrics(flow, self.settings):
            return  # answered in request, whatever cache_strict_hosts says of the proxy's own address
        req = flow.request
        for name in access.hop_fields(req.headers.get("connection", ""), self.strip_proxy_auth):
            req.headers.pop(name, None)
        endpoint_origin = endpoint.origin_of(flow)
        if endpoint_origin is not None:
            flow.metadata[gate.CLIENT_HOST] = req.host_header
            if self.own_host_header:
                req.host_header = rewrite.hostport(endpoint_origin)
                if endpoint_origin.scheme == "https" and flow.server_conn.sni is None:
                    flow.server_conn.sni = endpoint_origin.host  # as mitmproxy does without keep_host_header
        refusal = self._refusal(flow.client_conn, req.host, req.port)
        if refusal:
            logger.warning(
                "refused %s %s from %s: %s",
                req.method,
                redact(gate.url_of_request(req)),
                gate.client_ip(flow),
                refusal,
            )
            forbidden = responses.forbidden(refusal)
            fields = [*forbidden.headers.items(multi=True), ("Connection", "close")]
            flow.metadata[_META] = {"url": gate.url_of_request(req), "refused": True}
            flow.request.stream = True
            job = Job(403, "Forbidden", fields, body=forbidden.raw_content or b"")
            self._relay(flow, job, streamed_body=True)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.settings is None or self.service is None:
            return
        if flow.request.stream:  # refused in requestheaders, or already streamed upstream: nothing to do
            return
        if self.observer is not None and self.observer.is_metrics(flow, self.settings):
            return await self.observer.serve_metrics(flow)
        self._apply(flow, await gate.handle(flow, self.settings, self.service, self.guard))

    def _apply(self, flow: http.HTTPFlow, handled: gate.Handled) -> None:
        reply = handled.reply
        if reply is None:  # left to mitmproxy
            if handled.detail is not None:
                flow.metadata[_META] = {"url": handled.url, "outcome": Outcome.MISS, "detail": handled.detail}
            return
        flow.metadata[_META] = {"url": handled.url, "outcome": reply.outcome, "detail": reply.detail}
        if handled.refused:
            flow.metadata[_META]["refused"] = True
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

    def _relay(self, flow: http.HTTPFlow, job: Job, streamed_body: bool = False) -> None:
        """Re-points the flow at the relay, which answers it with `job`. The relay needs none of the client's
        fields (kept aside for logs and other addons, and put back in `response`), nor its body, which was
        sent upstream already, except a refused upload's, which streams on and is dropped there."""
        token = self.relay.register(job)
        meta = flow.metadata[_META]
        meta["relay"], meta["token"], meta["headers"] = True, token, flow.request.headers.copy()
        req = flow.request
        fields = [(b"Host", f"127.0.0.1:{self.relay.port}".encode())]
        if streamed_body:
            framing = (b"content-length", b"transfer-encoding")
            fields += [(k, v) for k, v in req.headers.fields if k.lower() in framing]
        else:
            meta["content"] = req.raw_content
            req.raw_content = b""
        req.headers = http.Headers(fields)
        req.scheme, req.host, req.port, req.path = "http", "127.0.0.1", self.relay.port, "/" + token
        if flow.server_conn.via is not None:  # --mode upstream: the relay is ours, never the parent's
            flow.server_conn = connection.Server(address=("127.0.0.1", self.relay.port))

    def _unrelay(self, flow: http.HTTPFlow, meta: dict[str, Any]) -> None:
        """The flow as the client sent it, for logs and other addons; and the relay's job released if the
        flow never reached it."""
        if meta.pop("relay", None):
            self.relay.cancel(meta.pop("token"))
            flow.request.url = meta["url"]
            flow.request.headers = meta.pop("headers")
            if "content" in meta:
                flow.request.raw_content = meta.pop("content")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(_META)
        if meta is None or flow.response is None:
            return
        if meta.get("relay"):
            flow.response.stream = True
            # The client's request again now that the relay answers, before mitmproxy logs the flow
            # (flow_detail): its log must show what the client asked, never our internal loopback request.
            self._unrelay(flow, meta)
        elif "x-cache" not in flow.response.headers:  # passed through: say so before any byte streams
            for name, value in responses.cache_fields(meta["outcome"], meta["detail"]):
                flow.response.headers[name] = value

    def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(_META)
        if meta is None or flow.response is None:
            return
        relayed = meta.get("relay")
        self._unrelay(flow, meta)
        if meta.get("refused"):
            return  # logged when refused
        if not relayed and "x-cache" not in flow.response.headers:
            for name, value in responses.cache_fields(meta["outcome"], meta["detail"]):
                flow.response.headers[name] = value
        size = flow.response.headers.get("content-length", "-")
        logger.info(
            "%s %s %s %s",
            flow.response.headers.get("x-cache", "-"),
            flow.response.status_code,
            size,
            redact(meta["url"]),
        )
        if self.observer is not None:
            self.observer.answered(flow, meta)

    def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(_META)
        if meta is None:
            return
        self._unrelay(flow, meta)
        if meta.get("refused"):
            return
        logger.warning("%s failed %s: %s", meta["outcome"].value, redact(meta["url"]), flow.error)
        if self.observer is not None:
            self.observer.interrupted(meta)


def _close_later(client: UpstreamClient) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop yet: nothing was opened
        return
    tasks.spawn(client.aclose())


# mitmproxy's script loader runs this file as module __mitmproxy_script__.addon.
addons = [CacheAddon(stop_on_bad_options=__name__.startswith("__mitmproxy_script__"))]
