"""Answers one cacheable request: looks it up, asks policy what to do, and carries it out: serves the entry
(whole, a range of it, a 304, a HEAD), or has the fetcher go upstream (fetch.py), or answers an error.

Everything here runs in mitmproxy's event loop; disk work goes to a small thread pool, upstream I/O is async.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, BinaryIO, TypeVar, assert_never

from cacheaddon import conditional, keys, negotiation, policy, responses, rewrite, sharing, tasks
from cacheaddon.cooperation import Cooperation
from cacheaddon.entry import Entry
from cacheaddon.fetch import Fetcher
from cacheaddon.fleet import Fleet
from cacheaddon.health import HostHealth
from cacheaddon.ingest import Ingest
from cacheaddon.keys import Keys, RequestView, redact
from cacheaddon.memo import MEMORY_LIMIT, Memo
from cacheaddon.policy import INLINE_LIMIT, Action, Decision, Outcome
from cacheaddon.relay import Job
from cacheaddon.reply import Reply, error
from cacheaddon.settings import Settings
from cacheaddon.sharedtier import SharedTier
from cacheaddon.singleflight import Flight, land_stored
from cacheaddon.store import Body, Store, StoreError
from cacheaddon.upstream import UpstreamClient

__all__ = ["CacheService", "Reply"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RANGE_MISS = "range request: passed to the upstream, not stored"


class CacheService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: UpstreamClient,
        health: HostHealth,
        pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
        tier: SharedTier | None = None,
    ) -> None:
        self.settings, self.store, self.health = settings, store, health
        # One thread for SQLite: concurrent transactions only queue on its write lock (and its busy handler
        # sleeps with back-off), one thread runs them back to back. File reads, writes and hashing get a pool.
        self.db_pool, self.pool = pools
        self.memo = Memo()
        ingest = Ingest(store, pools)
        self.fetcher = Fetcher(settings, store, client, health, ingest, pools, self._serve)
        self.fleet = Fleet(tier, store, ingest, pools[0], settings, INLINE_LIMIT) if tier else None
        self.cooperation = Cooperation(settings, store, self.fetcher, self._serve, pools)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db_pool, fn, *args)

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def answer(
        self,
        request: RequestView,
        url: str,
        origin: str,
        whole_documents: bool = False,
    ) -> Reply:
        """The reply to a GET or HEAD (origin: scheme://host:port, the back-off key). A Range request for
        something not cached is forwarded and not stored. whole_documents (on endpoints, which rewrite index
        documents): Range is ignored for them, and a miss is fetched whole."""
        key = keys.cache_keys(request, self.store.salt)
        pre: Body | BinaryIO | None | bool
        try:
            entry, pre = await self._lookup(key.lookup_order())
        except StoreError as exc:
            logger.warning("cache unreadable, treating as a miss: %s", exc)
            entry, pre = None, None
        if entry is not None and not keys.vary_matches(entry, request, self.store.salt):
            entry = None  # another variant: neither served nor a fallback during an outage
        now = time.time()
        shared = None if self.fleet is None else await self.fleet.lookup(key, entry, now)
        if shared is not None:  # newer than ours: copied into the local tier, and served from there
            _close(pre)
            entry, pre = shared, False
        backoff = self.health.backoff(origin, now)
        fallback = None  # an answer stored for another Accept that this request admits
        if entry is None:
            _close(pre)
            entry, pre, fallback = await self._negotiated(
                request, key, self.settings.offline or backoff is not None
            )
        decision = policy.decide(request, entry, now, self.settings, backoff, self.store.salt)
        own = entry if fallback is None else None  # only the request's own answer is revalidated for it
        if fallback is not None and decision.action is Action.SERVE:
            decision = replace(
                decision, reason=f"{decision.reason}; negotiated {negotiation.describe(fallback)}"
            )
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
                    return await self._answer_without(request, url, origin, key)
                self._maybe_probe(decision, request, url, origin, key, own)
                return reply
            case Action.FETCH:
                return await self._fetch(request, url, origin, key, own, fallback)
            case Action.ERROR:
                if self.settings.offline:
                    logger.warning("offline: %s is not in the cache", redact(url))
                self._maybe_probe(decision, request, url, origin, key, None)
                return error(decision, url)
            case Action.PASS:
                raise AssertionError("decide() never passes an answer on")
            case _:
                assert_never(decision.action)

    async def forward(
        self, request: RequestView, url: str, origin: str, body: bytes | None, detail: str
    ) -> Reply:
        """A request the cache does not answer, sent upstream with our timeouts and back-off; not stored."""
        return await self.fetcher.forward(request, url, origin, body, detail)

    async def _fetch(
        self,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        entry: Entry | None,
        fallback: Entry | None = None,
    ) -> Reply:
        """The one place where a miss or a revalidation of a cache key goes upstream: once, however many
        clients of however many processes sharing the cache_dir ask for it at the same time (cooperation.py),
        and with a shared tier once across the fleet (_download). fallback: an answer stored for another
        Accept, served if the upstream fails (to every client of the flight, as their own stale entry)."""
        return await self.cooperation.fetch(
            request,
            url,
            origin,
            key,
            entry or fallback,
            lambda flight: self._download(request, url, origin, key, entry, fallback, flight),
        )

    async def _download(
        self,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        entry: Entry | None,
        fallback: Entry | None,
        flight: Flight | None,
    ) -> Reply:
        """The flight owner's "do the download" step (flight None: a request that goes alone). A miss with a
        shared tier goes through the fleet's lease on its URL (fleet.py): the owner takes it, or waits for
        the proxy that holds it, and then looks in the tier again before it asks the upstream."""
        if self.fleet is None or entry is not None or flight is None:
            return await self.fetcher.fetch(request, url, origin, key, entry, fallback, flight)
        owner = flight
        return await self.fleet.fetch(
            request.url,
            key.shared,
            owner,
            lambda: self._from_tier(request, url, origin, key, fallback, owner),
        )

    async def _from_tier(
        self, request: RequestView, url: str, origin: str, key: Keys, fallback: Entry | None, flight: Flight
    ) -> Reply:
        """A miss once the fleet was asked: what another proxy stored meanwhile (copied into the local tier,
        where the flight's joiners are served it from), else the upstream's answer."""
        assert self.fleet is not None
        shared = await self.fleet.lookup(key, None, time.time())
        if shared is not None:
            now = time.time()
            backoff = self.health.backoff(origin, now)
            decision = policy.decide(request, shared, now, self.settings, backoff, self.store.salt)
            if decision.action is not Action.SERVE:  # stale already: revalidated for every client
                return await self.fetcher.fetch(request, url, origin, key, shared, fallback, flight)
            decision = sharing.from_tier(decision)
            reply = await self._serve(shared, decision, request, now)
            if reply is not None:
                land_stored(flight, shared, decision.outcome, decision.reason)
                return reply
        return await self.fetcher.fetch(request, url, origin, key, None, fallback, flight)

    async def _answer_without(self, request: RequestView, url: str, origin: str, key: Keys) -> Reply:
        """The reply as if nothing were cached (the entry's body turned out gone or corrupt)."""
        if self.settings.offline:
            return error(Decision(Action.ERROR, Outcome.MISS, "offline: not in cache", status=504), url)
        return await self._fetch(request, url, origin, key, None)

    async def _negotiated(
        self, request: RequestView, key: Keys, cannot_ask: bool
    ) -> tuple[Entry | None, Body | BinaryIO | None, Entry | None]:
        """After the request's own keys missed: the best answer stored for another Accept that it admits
        (negotiation.py), as (entry to decide with, its body as lookup gives it, entry to fall back on when
        the upstream fails). A type the request admits only by a wildcard (curl's */*) is served only when
        the upstream cannot be asked (cannot_ask: offline, back-off) or fails: otherwise the client gets
        what the upstream would send it (HTML, where pip cached JSON)."""
        try:
            return await self._db(self._variant, request, key, cannot_ask)
        except StoreError as exc:
            logger.warning("cache unreadable, treating as a miss: %s", exc)
            return None, None, None

    def _variant(
        self, request: RequestView, key: Keys, cannot_ask: bool
    ) -> tuple[Entry | None, Body | BinaryIO | None, Entry | None]:
        """_negotiated's work, in one trip to the database thread."""
        stored = self.store.variants(keys.variant_group(key.shared))
        admitted = [(k, e) for k, e in stored if keys.vary_matches(e, request, self.store.salt)]
        ranked = negotiation.rank(request.header("accept"), request.header("accept-encoding"), admitted)
        if not ranked:
            return None, None, None
        usable = ranked[0] if cannot_ask else next((c for c in ranked if c.explicit), None)
        if usable is None:
            return None, None, ranked[0].entry
        entry, pre = self.store.lookup((usable.key,), INLINE_LIMIT)
        assert not isinstance(pre, bool)  # a body is read unless the caller holds it (`held`)
        if entry != usable.entry:  # replaced since it was ranked: not judged, not served
            _close(pre)
            return None, None, None
        return entry, pre, entry

    def _maybe_probe(
        self, decision: Decision, request: RequestView, url: str, origin: str, key: Keys, entry: Entry | None
    ) -> None:
        if decision.probe and self.health.start_probe(origin):
            tasks.spawn(self._probe(request, url, origin, key, entry))

    async def _probe(
        self, request: RequestView, url: str, origin: str, key: Keys, entry: Entry | None
    ) -> None:
        """Asks an origin in back-off whether it is back, in the background (one probe per origin at a time);
        what it answers is stored as for any fetch."""
        try:
            reply = await self._fetch(request, url, origin, key, entry)
            await reply.discard()
        except Exception:
            logger.exception("background revalidation of %s failed", redact(url))
        finally:
            self.health.end_probe(origin)

    async def _lookup(self, order: tuple[str, ...]) -> tuple[Entry | None, Body | BinaryIO | None | bool]:
        """The newest entry under these keys and what lookup() read of its body (False: nothing). From
        memory, without a trip to the database thread, when no connection committed since it was looked
        up; the body is not read when the memo holds it."""
        version = self.store.data_version()  # before the lookup: a commit after it shows as a change
        entry = self.memo.records.get(order, version)
        if entry is not None:
            self.store.note_access(order, entry.sha256)
            pre: Body | BinaryIO | None | bool = False
        else:
            entry, pre = await self._db(self.store.lookup, order, MEMORY_LIMIT, self.memo.bodies.holds)
            if entry is not None:
                self.memo.records.put(order, entry, version)
        if self.store.take_access_flush():
            asyncio.get_running_loop().run_in_executor(self.db_pool, self.store.flush_access)
        return entry, pre

    async def _read(
        self, entry: Entry, pre: Body | BinaryIO | None | bool = False, whole: bool = True
    ) -> Body | None:
        """The entry's checked body; `pre` is what lookup() already read (False: nothing yet). In memory
        (from the memo while its file is unchanged, or read and hashed once, then kept) up to MEMORY_LIMIT
        while the memo's budget allows, else an open file to stream. Not `whole` (a range is cut from it):
        as read from the store, never from the memo, so that a file that rotted is found."""
        held = self.memo.bodies.get(entry.sha256) if whole else None
        if held is not None:
            if held.source is None or self.store.unchanged(held.source):
                _close(pre)
                return held
            self.memo.bodies.drop(entry.sha256)  # its file changed: read it again, and check it
        reserved = self.memo.bodies.reserve(entry.size) if whole else 0
        try:
            value = await self._db(self.store.open_body, entry) if pre is False else pre
            assert not isinstance(value, bool)
            if value is None or isinstance(value, Body):
                body = value
            else:
                limit = MEMORY_LIMIT if reserved else INLINE_LIMIT
                body = await self._disk(self.store.check_body, entry, value, limit)
        except StoreError as exc:
            logger.warning("cache unreadable, treating as a miss: %s", exc)
            return None
        finally:
            self.memo.bodies.release(reserved)
        if body is not None and whole:
            self.memo.bodies.keep(entry.sha256, body)
        return body

    async def _serve(
        self,
        entry: Entry,
        decision: Decision,
        request: RequestView,
        now: float,
        pre: Body | BinaryIO | None | bool = False,
        whole_documents: bool = False,
    ) -> Reply | None:
        """The reply from an entry; None when its body is gone or corrupt."""
        outcome, detail, age = decision.outcome, decision.reason, policy.age(entry, now)
        if conditional.client_has_current(entry, request):
            _close(pre)
            return Reply(outcome, detail, responses.not_modified(entry, outcome, detail, age))
        if request.method == "HEAD":
            _close(pre)
            return Reply(outcome, detail, responses.head_from_entry(entry, outcome, detail, age))
        whole = whole_documents and rewrite.is_rewritable(entry.header("content-type") or "")
        ranged = "range" in request.headers and not whole
        span = conditional.byte_range(request.header("range"), entry.size) if ranged else None
        partial = (
            span is not None
            and entry.status == 200
            and conditional.if_range_allows(entry, request.header("if-range"))
        )
        body = await self._read(entry, pre, whole=not partial)
        if body is None:
            return None
        if partial:
            assert span is not None
            if body.file is not None and not await self._verified(entry, body.file):
                return None
            return self._partial(entry, body, span, outcome, detail, age)
        if body.data is not None:
            response = responses.from_entry(entry, body.data, outcome, detail, age)
            return Reply(outcome, detail, response, sha256=entry.sha256)
        assert body.file is not None
        fields = [*responses.served_fields(entry, outcome, detail, age), ("Content-Length", str(entry.size))]
        job = Job(entry.status, entry.reason, fields, file=body.file, length=body.size, sha256=entry.sha256)
        job.on_corrupt = lambda: self._db(self.store.drop_body, entry)
        return Reply(outcome, detail, job=job, sha256=entry.sha256)

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


def _close(pre: Body | BinaryIO | None | bool) -> None:
    """Closes a body lookup() opened that will not be sent."""
    if isinstance(pre, Body):
        if pre.file is not None:
            pre.file.close()
    elif pre is not None and not isinstance(pre, bool):
        pre.close()
