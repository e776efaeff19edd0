"""Carries out the policy for one cacheable request: look up, serve, fetch, store, fall back to stale.

Everything here runs in mitmproxy's event loop; disk work goes to a small thread pool, upstream I/O is async.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar, assert_never

import httpx
from mitmproxy import http

from cacheaddon import policy, responses, rewrite, sharing, tasks
from cacheaddon.entry import Entry
from cacheaddon.fleet import Fleet
from cacheaddon.health import HostHealth
from cacheaddon.ingest import Ingest
from cacheaddon.policy import Action, Decision, Keys, Outcome, RequestView
from cacheaddon.relay import Job
from cacheaddon.settings import Settings
from cacheaddon.sharedtier import SharedTier
from cacheaddon.spool import Spool, Spooled
from cacheaddon.store import Body, Store, StoreError
from cacheaddon.upstream import Upstream, UpstreamFailure, expected_length, raw_chunks

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bodies up to this size are answered from memory; larger ones stream through the relay.
INLINE_LIMIT = 1024 * 1024
# A new body for a stale entry is read whole before answering, so that a failure midway can still fall back
# to the entry: when it announces up to this size (or no size). It is kept in memory up to this size and
# spooled to a temporary file beyond, up to the larger of this and cache_max_object_size.
BUFFER_LIMIT = 8 * 1024 * 1024
_ERROR_BODY_LIMIT = 64 * 1024
_RANGE_MISS = "range request: passed to the upstream, not stored"
# Not sent upstream: the client's validators are answered by us once we hold the whole body, and ranges are
# cut from it.
_NOT_FORWARDED = (
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
)


@dataclass
class Reply:
    """What to put on the flow: a finished response, or a relay job that streams one."""

    outcome: Outcome
    detail: str
    response: http.Response | None = None
    job: Job | None = None

    async def discard(self) -> None:
        """Releases what an unused reply holds: its open file, or its upstream stream."""
        if self.job is not None:
            await self.job.aclose()


class CacheService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        upstream: Upstream,
        health: HostHealth,
        pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
        tier: SharedTier | None = None,
    ) -> None:
        self.settings, self.store, self.upstream, self.health = settings, store, upstream, health
        # One thread for SQLite: concurrent transactions only queue on its write lock (and its busy handler
        # sleeps with back-off), one thread runs them back to back. File reads, writes and hashing get a pool.
        self.db_pool, self.pool = pools
        self.ingest = Ingest(store, pools)
        self.fleet = Fleet(tier, store, self.ingest, pools[0], settings, INLINE_LIMIT) if tier else None

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db_pool, fn, *args)

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _read(self, entry: Entry, pre: Body | BinaryIO | None | bool = False) -> Body | None:
        """The entry's checked body; `pre` is what lookup() already read (False: nothing yet)."""
        try:
            value = await self._db(self.store.open_body, entry) if pre is False else pre
            if value is None or isinstance(value, Body):
                return value
            assert not isinstance(value, bool)
            return await self._disk(self.store.check_body, entry, value, INLINE_LIMIT)
        except StoreError as exc:
            logger.warning("cache unreadable, treating as a miss: %s", exc)
            return None

    async def answer(
        self,
        request: RequestView,
        url: str,
        origin: str,
        whole_documents: bool = False,
        coordinated: bool = False,
    ) -> Reply:
        """The reply to a GET or HEAD. A Range request for something not cached is forwarded and not stored.
        whole_documents (on endpoints, which rewrite index documents): Range is ignored for them, and a miss
        is fetched whole. coordinated: the fleet already decided that this process downloads a miss."""
        key = policy.cache_keys(request, self.store.salt)
        pre: Body | BinaryIO | None | bool
        try:
            entry, pre = await self._db(self.store.lookup, key.lookup_order(), INLINE_LIMIT)
        except StoreError as exc:
            logger.warning("cache unreadable, treating as a miss: %s", exc)
            entry, pre = None, None
        if entry is not None and not policy.vary_matches(entry, request, self.store.salt):
            entry = None  # another variant: neither served nor a fallback during an outage
        now = time.time()
        shared = None if self.fleet is None else await self.fleet.lookup(key, entry, now)
        if shared is not None:  # newer than ours: copied into the local tier, and taken from there
            _close(pre)
            entry, pre = shared, False
        backing_off = self.health.backing_off(origin, now)
        decision = policy.decide(request, entry, now, self.settings, backing_off, self.store.salt)
        if shared is not None:
            decision = sharing.from_tier(decision)
        if decision.action is not Action.SERVE:
            _close(pre)
        ranged = "range" in request.headers and not whole_documents
        if ranged and decision.action is Action.FETCH and entry is None:
            return await self.forward(request, url, origin, None, _RANGE_MISS)
        match decision.action:
            case Action.SERVE:
                assert entry is not None
                reply = await self._serve(entry, decision, request, now, pre, whole_documents)
                if reply is None:  # body gone or corrupt: as if never cached
                    if ranged and not self.settings.offline:
                        return await self.forward(request, url, origin, None, _RANGE_MISS)
                    return await self.answer_without(request, url, origin, key)
                if decision.probe and self.health.start_probe(origin):
                    tasks.spawn(self._probe(request, url, origin, key, entry))
                return reply
            case Action.FETCH:
                if self.fleet is not None and entry is None and not coordinated:
                    return await self.fleet.fetch(
                        request.url,
                        key.shared,
                        lambda: self.answer(request, url, origin, whole_documents, coordinated=True),
                    )
                return await self._fetch(request, url, origin, key, entry, decision)
            case Action.OFFLINE_MISS:
                logger.warning("offline: %s is not in the cache", policy.redact(url))
                return Reply(decision.outcome, decision.reason, responses.error(504, url, decision.reason))
            case _:
                assert_never(decision.action)

    async def forward(
        self, request: RequestView, url: str, origin: str, body: bytes | None, detail: str
    ) -> Reply:
        """A request the cache does not answer (another method, a Range of something not cached), sent with
        our timeouts and back-off: a hanging registry costs one timeout here too, not mitmproxy's ten
        minutes, and during an outage it is answered 503 at once. Nothing is stored."""
        if self.health.backing_off(origin, time.time()):
            detail = "upstream failing recently: not tried (cache_upstream_backoff)"
            return Reply(Outcome.MISS, detail, responses.error(503, url, detail))
        try:
            upstream = await self.upstream.open(request.method, url, request.headers, body)
        except UpstreamFailure as failure:
            self.health.failed(origin, time.time(), self.settings.upstream_backoff)
            detail = f"upstream {failure.reason}"
            return Reply(Outcome.MISS, detail, responses.error(504 if failure.timeout else 502, url, detail))
        if upstream.status_code >= 500 or upstream.status_code == 429:
            self.health.failed(origin, time.time(), self.settings.upstream_backoff)
        else:
            self.health.succeeded(origin)
        fields = [*responses.live_headers(_fields(upstream)), *responses.cache_fields(Outcome.MISS, detail)]
        length = expected_length(upstream)
        if length is not None:
            fields.append(("Content-Length", str(length)))
        job = Job(upstream.status_code, upstream.reason_phrase, fields, stream=raw_chunks(upstream))
        job.on_close = upstream.aclose
        return Reply(Outcome.MISS, detail, job=job)

    async def answer_without(self, request: RequestView, url: str, origin: str, key: Keys) -> Reply:
        if self.settings.offline:
            detail = "offline: not in cache"
            return Reply(Outcome.MISS, detail, responses.error(504, url, detail))
        miss = Decision(Action.FETCH, Outcome.MISS, "miss")
        return await self._fetch(request, url, origin, key, None, miss)

    async def _probe(self, request: RequestView, url: str, origin: str, key: Keys, entry: Entry) -> None:
        try:
            reply = await self._fetch(
                request, url, origin, key, entry, Decision(Action.FETCH, Outcome.MISS, "probe")
            )
            await reply.discard()
        except Exception:
            logger.exception("background revalidation of %s failed", policy.redact(url))
        finally:
            self.health.end_probe(origin)

    async def _serve(
        self,
        entry: Entry,
        decision: Decision,
        request: RequestView,
        now: float,
        pre: Body | BinaryIO | None | bool = False,
        whole_documents: bool = False,
    ) -> Reply | None:
        outcome, detail, age = decision.outcome, decision.reason, policy.age(entry, now)
        if policy.client_has_current(entry, request):
            _close(pre)
            return Reply(outcome, detail, responses.not_modified(entry, outcome, detail, age))
        if request.method == "HEAD":
            _close(pre)
            return Reply(outcome, detail, responses.head_from_entry(entry, outcome, detail, age))
        body = await self._read(entry, pre)
        if body is None:
            return None
        whole = whole_documents and rewrite.is_rewritable(entry.header("content-type") or "")
        ranged = "range" in request.headers and not whole
        span = policy.byte_range(request.header("range"), entry.size) if ranged else None
        if (
            span is not None
            and entry.status == 200
            and policy.if_range_allows(entry, request.header("if-range"))
        ):
            if body.file is not None and not await self._verified(entry, body.file):
                return None
            return self._partial(entry, body, span, outcome, detail, age)
        if body.data is not None:
            return Reply(outcome, detail, responses.from_entry(entry, body.data, outcome, detail, age))
        assert body.file is not None
        fields = [*responses.served_fields(entry, outcome, detail, age), ("Content-Length", str(entry.size))]
        job = Job(entry.status, entry.reason, fields, file=body.file, length=body.size, sha256=entry.sha256)
        job.on_corrupt = lambda: self._db(self.store.drop_body, entry)
        return Reply(outcome, detail, job=job)

    async def _verified(self, entry: Entry, file: BinaryIO) -> bool:
        try:
            if await self._disk(self.store.verify_whole, entry, file):
                return True
        except StoreError as exc:
            logger.warning("cache unreadable, treating as a miss: %s", exc)
        file.close()
        return False

    def _partial(
        self, entry: Entry, body: Body, span: tuple[int, int] | bool, outcome: Outcome, detail: str, age: int
    ) -> Reply:
        """206 for a byte range of a stored body (uv and pip's lazy wheels ask for the zip's tail)."""
        if span is False or span is True:
            if body.file is not None:
                body.file.close()
            return Reply(outcome, detail, responses.unsatisfiable(entry, outcome, detail, age))
        first, last = span
        fields = responses.partial_fields(entry, first, last, outcome, detail, age)
        if body.data is not None:
            return Reply(
                outcome, detail, responses.make(206, "Partial Content", fields, body.data[first : last + 1])
            )
        assert body.file is not None
        fields.append(("Content-Length", str(last - first + 1)))
        job = Job(206, "Partial Content", fields, file=body.file, offset=first, length=last - first + 1)
        return Reply(outcome, detail, job=job)

    async def _failed(
        self, failure: UpstreamFailure, request: RequestView, url: str, origin: str, entry: Entry | None
    ) -> Reply:
        now = time.time()
        self.health.failed(origin, now, self.settings.upstream_backoff)
        fallback = policy.on_failure(entry, failure.reason, self.settings)
        if fallback is not None and entry is not None:
            logger.warning("upstream failed for %s (%s)", policy.redact(url), failure.reason)
            reply = await self._serve(entry, fallback, request, now)
            if reply is not None:
                return reply
        detail = f"upstream {failure.reason}"
        return Reply(Outcome.MISS, detail, responses.error(504 if failure.timeout else 502, url, detail))

    async def _fetch(
        self, request: RequestView, url: str, origin: str, key: Keys, entry: Entry | None, decision: Decision
    ) -> Reply:
        # The client's own validators are answered by us once we hold the full body; ours go upstream.
        headers = {k: v for k, v in request.headers.items() if k not in _NOT_FORWARDED}
        headers.update(policy.conditional_headers(entry))
        try:
            upstream = await self.upstream.open(request.method, url, headers)
        except UpstreamFailure as failure:
            return await self._failed(failure, request, url, origin, entry)
        status = upstream.status_code
        if status >= 500 or status == 429:  # overloaded or rate-limited: an outage as far as builds go
            return await self._upstream_5xx(upstream, request, url, origin, entry)
        self.health.succeeded(origin)
        now = time.time()
        if status == 304 and entry is not None:
            await upstream.aclose()
            fresh = entry.refreshed(now, responses.revalidated_headers(_fields(upstream)))
            await self.ingest.refresh(key.for_response(fresh.header("content-encoding")), fresh)
            return await self._serve(
                fresh, Decision(Action.SERVE, Outcome.REVALIDATED, "revalidated: 304"), request, now
            ) or (await self.answer_without(request, url, origin, key))
        fields = responses.storable_headers(_fields(upstream))
        length = expected_length(upstream)
        lower = upstream.headers  # case-insensitive; a repeated field reads as its values joined with ", "
        why_not = policy.storability(status, lower, length, self.settings) or policy.private_storability(
            request, lower
        )
        if request.method == "HEAD":
            why_not = why_not or "not stored: HEAD"
        detail = why_not or ("refreshed: entry was stale" if entry is not None else decision.reason)
        small = length is not None and length <= INLINE_LIMIT
        if small or request.method == "HEAD" or (entry is not None and (length or 0) <= BUFFER_LIMIT):
            return await self._buffered(upstream, request, url, origin, key, entry, fields, why_not, detail)
        return self._streamed(upstream, request, origin, key, fields, why_not, detail)

    async def _upstream_5xx(
        self, upstream: httpx.Response, request: RequestView, url: str, origin: str, entry: Entry | None
    ) -> Reply:
        status = upstream.status_code
        body = b""
        try:
            async for chunk in raw_chunks(upstream):
                body += chunk
                if len(body) > _ERROR_BODY_LIMIT:
                    break
        except UpstreamFailure:
            pass
        finally:
            await upstream.aclose()
        if entry is not None and self.settings.stale_on_error:
            return await self._failed(UpstreamFailure(f"answered {status}"), request, url, origin, entry)
        self.health.failed(origin, time.time(), self.settings.upstream_backoff)
        detail = f"upstream answered {status}"
        fields = [
            *responses.live_headers(_fields(upstream)),
            *responses.cache_fields(Outcome.MISS, detail),
        ]
        return Reply(
            Outcome.MISS,
            detail,
            responses.make(status, upstream.reason_phrase, fields, body[:_ERROR_BODY_LIMIT]),
        )

    def _new_entry(
        self,
        request: RequestView,
        upstream: httpx.Response,
        fields: tuple[tuple[str, str], ...],
        body: Spooled,
    ) -> Entry:
        names = policy.vary_names(upstream.headers.get("vary", "")) or ()
        return Entry(
            url=request.url,
            status=upstream.status_code,
            reason=upstream.reason_phrase,
            headers=fields,
            stored_at=time.time(),
            size=body.size,
            sha256=body.sha256,
            vary=policy.vary_values(names, request, self.store.salt),
        )

    def _spool(self, limit: int | None) -> Spool:
        size_limit = self.settings.max_object_size if limit is None else limit
        return Spool(INLINE_LIMIT, self.store.new_body_file, self.pool, size_limit)

    async def _buffered(
        self,
        upstream: httpx.Response,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        entry: Entry | None,
        fields: tuple[tuple[str, str], ...],
        why_not: str | None,
        detail: str,
    ) -> Reply:
        """Reads the whole body before answering, so that a failure midway can still fall back to stale."""
        # In memory up to BUFFER_LIMIT, so that a full disk does not cost the client its answer; a larger body
        # (only one without a Content-Length gets here) is spooled to disk.
        limit = max(BUFFER_LIMIT, self.settings.max_object_size)
        spool = Spool(BUFFER_LIMIT, self.store.new_body_file, self.pool, limit)
        try:
            async for chunk in raw_chunks(upstream):
                await spool.write(chunk)
                if spool.unusable:  # too large, or the disk failed: no use reading on
                    break
        except UpstreamFailure as failure:
            await spool.abort()
            return await self._failed(failure, request, url, origin, entry)
        finally:
            await upstream.aclose()
        body = await spool.finish()
        if body is None:  # the upstream is fine, but its answer could not be held to be served
            detail = f"new body could not be held ({spool.unusable})"
            logger.warning("%s: %s", policy.redact(url), detail)
            if entry is not None and self.settings.stale_on_error:
                fallback = Decision(Action.SERVE, Outcome.STALE, f"stale: {detail}")
                reply = await self._serve(entry, fallback, request, time.time())
                if reply is not None:
                    return reply
            return Reply(Outcome.MISS, detail, responses.error(502, url, detail))
        outcome = Outcome.MISS
        if why_not is None and body.size > self.settings.max_object_size:
            why_not = detail = f"not stored: larger than cache_max_object_size ({body.size} bytes)"
        new = self._new_entry(request, upstream, fields, body)
        live = responses.live_headers(_fields(upstream))  # with Set-Cookie: this answer is the client's
        served = [*live, *responses.cache_fields(outcome, detail), ("Content-Length", str(body.size))]
        if body.data is not None:
            if why_not is None:
                await self.ingest.commit(key.for_response(new.header("content-encoding")), new, body.data)
            if why_not is None and policy.client_has_current(new, request):
                return Reply(outcome, detail, responses.not_modified(new, outcome, detail, 0))
            data = b"" if request.method == "HEAD" else body.data
            response = responses.make(
                new.status, new.reason, [*live, *responses.cache_fields(outcome, detail)], data
            )
            if request.method == "HEAD":  # the length of the body a GET would get, as the upstream said
                length = upstream.headers.get("content-length")
                if length is not None:
                    response.headers["content-length"] = length
                else:
                    del response.headers["content-length"]
            return Reply(outcome, detail, response)
        assert body.path is not None
        handle: BinaryIO = await self._disk(open, body.path, "rb")  # survives the rename into the store
        if why_not is None:
            await self.ingest.commit(key.for_response(new.header("content-encoding")), new, body.path)
        else:
            await self._disk(self.store.discard, body.path)
        return Reply(outcome, detail, job=Job(new.status, new.reason, served, file=handle, length=body.size))

    def _streamed(
        self,
        upstream: httpx.Response,
        request: RequestView,
        origin: str,
        key: Keys,
        fields: tuple[tuple[str, str], ...],
        why_not: str | None,
        detail: str,
    ) -> Reply:
        """Streams a large body to the client while it is written to the cache: stored only if whole."""
        spool = self._spool(0 if why_not else None)
        live = responses.live_headers(_fields(upstream))  # with Set-Cookie: this answer is the client's
        served = [*live, *responses.cache_fields(Outcome.MISS, detail)]
        length = expected_length(upstream)
        if length is not None:
            served.append(("Content-Length", str(length)))

        async def tee() -> AsyncIterator[bytes]:
            # The last chunk is held back until the body is committed: a client that has the whole body
            # and asks again at once gets it from the cache.
            done, pending = False, b""
            try:
                try:
                    async for chunk in raw_chunks(upstream):
                        await spool.write(chunk)
                        if pending:
                            yield pending
                        pending = chunk
                except UpstreamFailure:
                    # Too late for a stale answer, but the next requests should not each wait on this origin.
                    self.health.failed(origin, time.time(), self.settings.upstream_backoff)
                    raise
                body = await spool.finish()
                done = True
                if body is not None and why_not is None:
                    new = self._new_entry(request, upstream, fields, body)
                    await self.ingest.commit(
                        key.for_response(new.header("content-encoding")),
                        new,
                        body.data if body.data is not None else str(body.path),
                    )
                if pending:
                    yield pending
            finally:
                if not done:
                    await spool.abort()
                await upstream.aclose()

        status, reason = upstream.status_code, upstream.reason_phrase
        job = Job(status, reason, served, stream=tee(), on_close=upstream.aclose)
        return Reply(Outcome.MISS, detail, job=job)


def _close(pre: Body | BinaryIO | None | bool) -> None:
    """Closes a body lookup() opened that will not be sent."""
    if isinstance(pre, Body):
        if pre.file is not None:
            pre.file.close()
    elif pre is not None and not isinstance(pre, bool):
        pre.close()


def _fields(upstream: httpx.Response) -> list[tuple[str, str]]:
    """The upstream's header fields as sent: latin-1 round-trips any byte, where httpx's str view does not."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.headers.raw]
