"""Goes upstream for the service: a miss or a revalidation of one cache key (fetch), or a request the cache
does not answer (forward), and turns what comes back into a Reply: a body read whole (small, or new for a
stale entry), streamed to the client while it is stored, or passed on and not stored; a failure into the
stale entry or an error. The decisions are policy's (on_answer, on_failure); this module carries them out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar, assert_never

import httpx
from mitmproxy import http

from cacheaddon import conditional, keys, policy, responses
from cacheaddon.counters import Counters
from cacheaddon.entry import Entry
from cacheaddon.health import HostHealth
from cacheaddon.ingest import Ingest
from cacheaddon.keys import Keys, RequestView, redact
from cacheaddon.policy import BUFFER_LIMIT, INLINE_LIMIT, Action, Answer, Decision, Failure, Outcome, Verdict
from cacheaddon.relay import Job
from cacheaddon.reply import Reply, error
from cacheaddon.settings import Settings
from cacheaddon.spool import Spool, Spooled
from cacheaddon.store import Store
from cacheaddon.upstream import UpstreamClient, UpstreamFailure, expected_length, raw_chunks

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Serves a request from an entry (the service's): None when the entry's body is gone or corrupt.
Serve = Callable[[Entry, Decision, RequestView, float], Awaitable[Reply | None]]

_ERROR_BODY_LIMIT = 64 * 1024
# Not sent upstream: the client's validators are answered by us once we hold the whole body, and ranges are
# cut from it.
_NOT_FORWARDED = conditional.CONDITIONAL_FIELDS


class Fetcher:
    # What the fetch path reports (bytes read, failures by origin); the addon puts its own here (observe.py).
    counters = Counters(None)

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: UpstreamClient,
        health: HostHealth,
        ingest: Ingest,
        pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
        serve: Serve,
    ) -> None:
        self.settings, self.store, self.client, self.health = settings, store, client, health
        self.ingest, self.serve = ingest, serve
        self.db_pool, self.pool = pools  # the database thread, and the pool for file work

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db_pool, fn, *args)

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def fetch(
        self,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        entry: Entry | None,
        fallback: Entry | None = None,
    ) -> Reply:
        """Asks the upstream for a miss (entry None) or to revalidate a stale entry; stores what it may.
        fallback: an answer stored for another Accept that the request admits, served if the upstream fails
        (never revalidated: its validators are another representation's)."""
        stale = entry or fallback
        # The client's own validators are answered by us once we hold the full body; ours go upstream.
        headers = {k: v for k, v in request.headers.items() if k not in _NOT_FORWARDED}
        headers.update(conditional.conditional_headers(entry))
        try:
            fetched = await self.client.open(request.method, url, headers)
        except UpstreamFailure as exc:
            return await self._failed(exc.failure, request, url, origin, stale)
        length = expected_length(fetched)
        answer = policy.on_answer(request, entry, fetched.status_code, fetched.headers, length, self.settings)
        match answer.verdict:
            case Verdict.FAILED:
                return await self._failed_answer(fetched, request, url, origin, stale)
            case Verdict.NOT_MODIFIED:
                assert entry is not None
                self.health.succeeded(origin)
                return await self._refreshed(fetched, answer, request, url, origin, key, entry)
            case Verdict.NEW:
                self.health.succeeded(origin)
                if answer.buffer:
                    return await self._buffered(fetched, answer, request, url, origin, key, stale)
                return self._streamed(fetched, answer, request, origin, key)
            case _:
                assert_never(answer.verdict)

    async def forward(
        self, request: RequestView, url: str, origin: str, body: bytes | None, detail: str
    ) -> Reply:
        """A request the cache does not answer (another method, a Range of something not cached), sent with
        our timeouts and back-off: a hanging registry costs one timeout here too, not mitmproxy's ten
        minutes, and during an outage it is answered 503 at once. Nothing is stored."""
        now = time.time()
        backoff = self.health.backoff(origin, now)
        if backoff is not None:
            return error(policy.unavailable(backoff, now), url)
        try:
            fetched = await self.client.open(request.method, url, request.headers, body)
        except UpstreamFailure as exc:
            self._count_failure(origin, exc.failure)
            self.health.failed(origin, time.time(), self.settings.upstream_backoff)
            return error(policy.on_failure(None, exc.failure, self.settings), url)
        if policy.is_failure(fetched.status_code):
            self._count_failure(origin, policy.answered(fetched.status_code))
            self.health.failed(origin, time.time(), self.settings.upstream_backoff)
        else:
            self.health.succeeded(origin)
        fields = [*responses.live_headers(_fields(fetched)), *responses.cache_fields(Outcome.MISS, detail)]
        length = expected_length(fetched)
        if length is not None:
            fields.append(("Content-Length", str(length)))
        job = Job(fetched.status_code, fetched.reason_phrase, fields, stream=self._chunks(fetched, origin))
        job.on_close = fetched.aclose
        return Reply(Outcome.MISS, detail, job=job)

    async def _failed(
        self,
        failure: Failure,
        request: RequestView,
        url: str,
        origin: str,
        entry: Entry | None,
        passed: http.Response | None = None,
    ) -> Reply:
        """The upstream failed (passed: its own error answer, if any): the stale entry, or the error."""
        now = time.time()
        self._count_failure(origin, failure)
        self.health.failed(origin, now, self.settings.upstream_backoff, failure.reason)
        decision = policy.on_failure(entry, failure, self.settings)
        if decision.action is Action.SERVE and entry is not None:
            reply = await self.serve(entry, decision, request, now)
            if reply is not None:
                return reply
            decision = policy.on_failure(None, failure, self.settings)  # the entry's body is gone
        return _carry_out(decision, url, passed)

    async def _failed_answer(
        self, fetched: httpx.Response, request: RequestView, url: str, origin: str, entry: Entry | None
    ) -> Reply:
        """A 5xx or 429: an outage, whose own answer (its first 64 KiB) is passed on when nothing stale is."""
        body = b""
        try:
            async for chunk in self._chunks(fetched, origin):
                body += chunk
                if len(body) > _ERROR_BODY_LIMIT:
                    break
        except UpstreamFailure:
            pass
        finally:
            await fetched.aclose()
        failure = policy.answered(fetched.status_code)
        detail = f"upstream {failure.reason}"
        fields = [*responses.live_headers(_fields(fetched)), *responses.cache_fields(Outcome.MISS, detail)]
        passed = responses.make(fetched.status_code, fetched.reason_phrase, fields, body[:_ERROR_BODY_LIMIT])
        return await self._failed(failure, request, url, origin, entry, passed)

    async def _refreshed(
        self,
        fetched: httpx.Response,
        answer: Answer,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        entry: Entry,
    ) -> Reply:
        """A 304 to our validators: the entry, with the 304's fields and a new age, is stored and served."""
        await fetched.aclose()
        now = time.time()
        fresh = entry.refreshed(now, responses.revalidated_headers(_fields(fetched)))
        await self.ingest.refresh(key.for_response(fresh.header("content-encoding")), fresh)
        decision = Decision(Action.SERVE, Outcome.REVALIDATED, answer.reason)
        reply = await self.serve(fresh, decision, request, now)
        return reply or await self.fetch(request, url, origin, key, None)

    def _new_entry(self, request: RequestView, fetched: httpx.Response, body: Spooled) -> Entry:
        names = keys.vary_names(fetched.headers.get("vary", "")) or ()
        return Entry(
            url=request.url,
            status=fetched.status_code,
            reason=fetched.reason_phrase,
            headers=responses.storable_headers(_fields(fetched)),
            stored_at=time.time(),
            size=body.size,
            sha256=body.sha256,
            vary=keys.vary_values(names, request, self.store.salt),
        )

    async def _buffered(
        self,
        fetched: httpx.Response,
        answer: Answer,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        entry: Entry | None,
    ) -> Reply:
        """Reads the whole body before answering, so that a failure midway can still fall back to stale."""
        # In memory up to BUFFER_LIMIT, so that a full disk does not cost the client its answer; a larger body
        # (only one without a Content-Length gets here) is spooled to disk.
        limit = max(BUFFER_LIMIT, self.settings.max_object_size)
        spool = Spool(BUFFER_LIMIT, self.store.new_body_file, self.pool, limit)
        try:
            async for chunk in self._chunks(fetched, origin):
                await spool.write(chunk)
                if spool.unusable:  # too large, or the disk failed: no use reading on
                    break
        except UpstreamFailure as exc:
            await spool.abort()
            return await self._failed(exc.failure, request, url, origin, entry)
        finally:
            await fetched.aclose()
        body = await spool.finish()
        if body is None:  # the upstream is fine, but its answer could not be held to be served
            decision = policy.on_unheld(entry, spool.unusable, self.settings)
            logger.warning("%s: new body could not be held (%s)", redact(url), spool.unusable)
            if decision.action is Action.SERVE and entry is not None:
                reply = await self.serve(entry, decision, request, time.time())
                if reply is not None:
                    return reply
                decision = policy.on_unheld(None, spool.unusable, self.settings)
            return _carry_out(decision, url)
        outcome, detail = Outcome.MISS, answer.reason
        why_not = answer.why_not or policy.oversize(body.size, self.settings)
        if answer.why_not is None and why_not is not None:
            detail = why_not
        new = self._new_entry(request, fetched, body)
        live = responses.live_headers(_fields(fetched))  # with Set-Cookie: this answer is the client's
        stored_key = key.for_response(new.header("content-encoding"))
        if body.data is not None:
            stored = why_not is None and await self.ingest.commit(stored_key, new, body.data)
            if why_not is None and conditional.client_has_current(new, request):
                return Reply(outcome, detail, responses.not_modified(new, outcome, detail, 0), stored=stored)
            data = b"" if request.method == "HEAD" else body.data
            fields = [*live, *responses.cache_fields(outcome, detail, stored=stored)]
            response = responses.make(new.status, new.reason, fields, data)
            if request.method == "HEAD":  # the length of the body a GET would get, as the upstream said
                length = fetched.headers.get("content-length")
                if length is not None:
                    response.headers["content-length"] = length
                else:
                    del response.headers["content-length"]
            return Reply(outcome, detail, response, stored=stored)
        assert body.path is not None
        handle: BinaryIO = await self._disk(open, body.path, "rb")  # survives the rename into the store
        stored = why_not is None and await self.ingest.commit(stored_key, new, body.path)
        if why_not is not None:
            await self._disk(self.store.discard, body.path)
        served = [*live, *responses.cache_fields(outcome, detail, stored=stored)]
        served.append(("Content-Length", str(body.size)))
        job = Job(new.status, new.reason, served, file=handle, length=body.size)
        return Reply(outcome, detail, job=job, stored=stored)

    def _streamed(
        self, fetched: httpx.Response, answer: Answer, request: RequestView, origin: str, key: Keys
    ) -> Reply:
        """Streams a large body to the client while it is written to the cache: stored only if whole."""
        size_limit = 0 if answer.why_not else self.settings.max_object_size
        spool = Spool(INLINE_LIMIT, self.store.new_body_file, self.pool, size_limit)
        live = responses.live_headers(_fields(fetched))  # with Set-Cookie: this answer is the client's
        # Said before the body arrives: stored once it has arrived whole.
        stored = answer.why_not is None
        served = [*live, *responses.cache_fields(Outcome.MISS, answer.reason, stored=stored)]
        length = expected_length(fetched)
        if length is not None:
            served.append(("Content-Length", str(length)))

        async def tee() -> AsyncIterator[bytes]:
            # The last chunk is held back until the body is committed: a client that has the whole body
            # and asks again at once gets it from the cache.
            done, pending = False, b""
            try:
                try:
                    async for chunk in self._chunks(fetched, origin):
                        await spool.write(chunk)
                        if pending:
                            yield pending
                        pending = chunk
                except UpstreamFailure as exc:
                    self._count_failure(origin, exc.failure)
                    # Too late for a stale answer, but the next requests should not each wait on this origin.
                    self.health.failed(origin, time.time(), self.settings.upstream_backoff)
                    raise
                body = await spool.finish()
                done = True
                if body is not None and answer.why_not is None:
                    new = self._new_entry(request, fetched, body)
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
                await fetched.aclose()

        job = Job(fetched.status_code, fetched.reason_phrase, served, stream=tee(), on_close=fetched.aclose)
        return Reply(Outcome.MISS, answer.reason, job=job, stored=stored)


    async def _chunks(self, fetched: httpx.Response, origin: str) -> AsyncIterator[bytes]:
        """The upstream's body chunks, counted as bytes fetched from `origin`."""
        # Closing the upstream response (the callers do, always) ends raw_chunks too.
        async for chunk in raw_chunks(fetched):
            self.counters.fetched(origin, len(chunk))
            yield chunk

    def _count_failure(self, origin: str, failure: Failure) -> None:
        self.counters.upstream_failed(origin, failure.kind)


def _carry_out(decision: Decision, url: str, passed: http.Response | None = None) -> Reply:
    """A decision that needs no entry: our error page, or the upstream's own error answer passed on."""
    match decision.action:
        case Action.ERROR:
            return error(decision, url)
        case Action.PASS:
            assert passed is not None
            return Reply(decision.outcome, decision.reason, passed)
        case Action.SERVE | Action.FETCH:
            raise AssertionError(f"{decision.action} needs an entry or the upstream")
        case _:
            assert_never(decision.action)


def _fields(fetched: httpx.Response) -> list[tuple[str, str]]:
    """The upstream's header fields as sent: latin-1 round-trips any byte, where httpx's str view does not."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in fetched.headers.raw]
