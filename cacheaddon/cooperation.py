"""One upstream request per cache key however many clients ask for it at once: in this process (flights,
singleflight.py) and across the processes sharing the cache_dir (leases, leases.py).

In this process, the first GET of a key owns its flight; later ones join it: they stream the body the owner
spools as it arrives, or, for an answer read whole, serve what the owner stored, or answer the owner's
upstream failure as it did (stale where there is an entry, else the error). A joiner whose own Vary fields
differ from the owner's, or of an answer that is not stored, fetches on its own.

Across processes, the owner takes the key's lease before it asks the upstream (lock), and holds it until its
flight lands. An owner that finds another process's lease follows that download instead: it streams the
other's temporary file as it grows, holding back the last byte until the entry is committed with the
sha256 of what it sent, or cuts the connection; or, for an answer read whole, it waits for the lease to go and
looks again in the store (check again), and fetches only if the entry is not there (fetch, release). A lease
whose holder died, or stopped renewing it, is taken over. Every wait is bounded: an owner that makes no
progress is left, and the waiter fetches on its own.

The seam: `fetch(..., download)` takes the owner's "do the download" step as a callable (from the service:
the fetcher's fetch, or with a shared tier fleet.py's lease across the fleet around it). This module is the
inner coordination (a process, and the processes sharing its cache_dir), the fleet the outer one (proxies
with their own cache_dirs): only a flight's owner holding the cache_dir lease ever reaches the fleet's lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, assert_never

from cacheaddon import keys, policy, responses, tasks
from cacheaddon.entry import Entry
from cacheaddon.fetch import Fetcher, Serve
from cacheaddon.keys import Keys, RequestView, redact
from cacheaddon.leases import DIRECTORY, RENEW_EVERY, Lease, Leases, Seen, Verdict, judge, lease_name
from cacheaddon.policy import Action, Decision, Outcome
from cacheaddon.relay import Job
from cacheaddon.reply import Reply
from cacheaddon.settings import Settings
from cacheaddon.singleflight import ABANDONED, Flight, FlightBroken, Flights, Growing, Head, Kind, Landing
from cacheaddon.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The owner's "do the download" step: the fetcher's fetch, publishing into the flight (None: alone).
Download = Callable[[Flight | None], Awaitable[Reply]]

POLL = 0.02  # seconds between looks at another process's download
_TRIES = 2  # flights a request joins that break off before it fetches alone
_JOINED = "joined a download in progress"
_FOLLOWED = "following another process's download"
_BY_OTHER = "fetched by another process"


class Cooperation:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        fetcher: Fetcher,
        serve: Serve,
        pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
    ) -> None:
        self.settings, self.store, self.fetcher, self.serve = settings, store, fetcher, serve
        self.db_pool, self.pool = pools
        self.flights = Flights()
        # A joiner waits on an owner that makes no progress at most this long: beyond the owner's own
        # deadline for a response head (upstream.py), after which the owner has failed and said so.
        self.stall = 4.0 * settings.upstream_timeout + 1.0
        # ...and a reader of a growing body: beyond the owner's own read timeout.
        self.read_stall = settings.upstream_timeout + 1.0
        try:
            self.leases: Leases | None = Leases(store.directory / DIRECTORY)
        except OSError as exc:
            logger.warning(
                "no downloads shared with other processes (cannot use %s): %s", store.directory, exc
            )
            self.leases = None

    async def fetch(
        self,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        stale: Entry | None,
        download: Download,
        tries: int = _TRIES,
    ) -> Reply:
        """The reply to a miss or a revalidation of `key`: download(flight) by the owner of its flight,
        shared with the others. stale: what a joiner answers if the owner's upstream fails (the request's
        own entry, or an answer stored for another Accept that it admits)."""
        if request.method != "GET" or tries <= 0:
            return await download(None)

        async def own(flight: Flight) -> Reply:
            return await self._own(flight, request, key, download)

        async def join(flight: Flight) -> Reply:
            return await self._join(flight, request, url, origin, key, stale, download, tries)

        return await self.flights.run(key.coded, own, join)

    # joining a flight of this process

    async def _join(
        self,
        flight: Flight,
        request: RequestView,
        url: str,
        origin: str,
        key: Keys,
        stale: Entry | None,
        download: Download,
        tries: int,
    ) -> Reply:
        if not await flight.wait(self.stall):
            logger.warning(
                "no progress on the download of %s for %g s: fetching alone", redact(url), self.stall
            )
            return await download(None)
        landing = flight.landing
        if landing is None:  # a body is streaming in
            return self._tail(flight, request, _JOINED) or await download(None)
        match landing.kind:
            case Kind.STORED:
                assert landing.entry is not None
                reply = await self._serve_stored(landing.entry, request, landing.outcome, landing.detail)
                return reply or await download(None)
            case Kind.FAILED:
                assert landing.failure is not None
                passed = landing.passed.copy() if landing.passed is not None else None
                return await self.fetcher.failed(landing.failure, request, url, stale, passed)
            case Kind.ALONE:
                return await download(None)
            case Kind.ABANDONED:
                return await self.fetch(request, url, origin, key, stale, download, tries - 1)
            case _:
                assert_never(landing.kind)

    async def _serve_stored(
        self, entry: Entry, request: RequestView, outcome: Outcome, detail: str
    ) -> Reply | None:
        """The stored answer a flight landed with, for a request it suits; None when it does not suit it or
        its body is not there (not stored after all)."""
        if not keys.vary_matches(entry, request, self.store.salt):
            return None
        decision = Decision(Action.SERVE, outcome, f"{detail}; {_JOINED}" if detail else _JOINED)
        return await self.serve(entry, decision, request, time.time())

    def _tail(self, flight: Flight, request: RequestView, detail: str) -> Reply | None:
        """The growing body of the flight, streamed to this request; None when its Vary fields differ from
        those the answer was chosen by."""
        head, body = flight.head, flight.body
        assert head is not None and body is not None
        names = tuple(name for name, _ in head.vary)
        if keys.vary_values(names, request, self.store.salt) != head.vary:
            return None
        reader = body.reader()
        fields = [*head.fields, *responses.cache_fields(Outcome.MISS, detail)]
        if head.length is not None:
            fields.append(("Content-Length", str(head.length)))
        stream = reader.chunks(self.pool, self.read_stall)
        return Reply(
            Outcome.MISS,
            detail,
            job=Job(head.status, head.reason, fields, stream=stream, on_close=reader.close),
        )

    # owning a flight: the lease across processes

    async def _own(self, flight: Flight, request: RequestView, key: Keys, download: Download) -> Reply:
        leases = self.leases
        if leases is None:
            return await download(flight)
        try:
            return await self._lease(flight, leases, request, key, download)
        except _NoLease as exc:  # leases only save downloads: without one, this process's flight still works
            logger.warning("a download not shared with other processes (cannot use its lease): %s", exc)
            return await download(flight)

    async def _lease(
        self, flight: Flight, leases: Leases, request: RequestView, key: Keys, download: Download
    ) -> Reply:
        """_own with the lease's files usable; _NoLease (raised only before any download started) when they
        are not."""
        name = lease_name(key.coded)
        deadline = time.monotonic() + self.stall
        waited = False
        got: Lease | Seen | None = await self._io(leases.acquire, name)
        while True:
            if isinstance(got, Lease):
                if waited:  # the other process is done: check again before fetching
                    reply = await self._look_again(flight, request, key)
                    if reply is not None:
                        await self._release(leases, got)
                        return reply
                return await self._holding(flight, leases, got, download)
            if got is not None and judge(got, time.time()) is Verdict.EXPIRED:
                got = await self._io(leases.take_over, name, got)
                waited = True
                continue
            if got is not None:
                announced = await self._io(leases.announced, name, got.holder)
                if announced is not None:
                    reply = await self._follow(flight, leases, name, got, announced, request, key, download)
                    if reply is not None:
                        return reply
            waited = True
            if time.monotonic() > deadline:
                logger.warning(
                    "another process made no progress on a download for %g s: fetching", self.stall
                )
                return await download(flight)
            await asyncio.sleep(POLL)
            got = await self._io(leases.acquire, name)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """A lease's file I/O in the pool; _NoLease when the flights directory cannot be used (removed,
        unwritable, a full disk)."""
        try:
            return await tasks.run_in(self.pool, fn, *args)
        except OSError as exc:
            raise _NoLease(str(exc)) from exc

    async def _release(self, leases: Leases, lease: Lease) -> None:
        try:
            await tasks.run_in(self.pool, leases.release, lease)
        except OSError as exc:  # left to expire: others take it over after STALE_AFTER seconds
            logger.warning("could not release a download's lease: %s", exc)

    async def _look_again(self, flight: Flight, request: RequestView, key: Keys) -> Reply | None:
        """The entry another process stored while we waited, if it is there, fresh and suits the request."""
        entry = await tasks.run_in(self.db_pool, self.store.newest, key.lookup_order())
        if entry is None or not policy.is_fresh(entry, time.time(), self.settings):
            return None
        reply = await self._serve_stored(entry, request, Outcome.MISS, _BY_OTHER)
        if reply is not None:
            flight.land(Landing(Kind.STORED, entry, Outcome.MISS, _BY_OTHER))
        return reply

    async def _holding(self, flight: Flight, leases: Leases, lease: Lease, download: Download) -> Reply:
        """Downloads holding the lease: renewed while the flight runs, released when it lands (after the
        commit), announced to followers once the body streams into its file."""
        renewing = tasks.spawn(self._renew(leases, lease))

        def release() -> None:
            renewing.cancel()
            tasks.spawn(self._release(leases, lease))

        flight.on_land(release)
        reply = await download(flight)
        if flight.body is not None and flight.landing is None:
            tasks.spawn(self._announce(flight, leases, lease))
        return reply

    async def _renew(self, leases: Leases, lease: Lease) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            if not await tasks.run_in(self.pool, leases.renew, lease):
                logger.warning("another process took over a download this one is still making")
                return

    async def _announce(self, flight: Flight, leases: Leases, lease: Lease) -> None:
        body, head = flight.body, flight.head
        assert body is not None and head is not None
        try:
            while not body.path and not body.ended:
                await body.changed(self.read_stall)
        except FlightBroken:
            return
        if flight.landing is None and not body.ended:
            await tasks.run_in(self.pool, leases.announce, lease, {"path": body.path, "head": head.to_json()})

    # following another process's download

    async def _follow(
        self,
        flight: Flight,
        leases: Leases,
        name: str,
        seen: Seen,
        announced: dict[str, Any],
        request: RequestView,
        key: Keys,
        download: Download,
    ) -> Reply | None:
        """Streams another process's download as its file grows; None when the file is gone already (it was
        committed or dropped: look again)."""
        head, path = Head.from_json(announced.get("head")), announced.get("path")
        if head is None or not isinstance(path, str):
            return None
        growing = Growing(head.length)
        try:
            await tasks.run_in(self.pool, growing.opened, path)
        except OSError:
            return None
        flight.publish(head, growing)
        tasks.spawn(self._watch(flight, growing, leases, name, seen, key))
        return self._tail(flight, request, _FOLLOWED) or await download(None)

    async def _watch(
        self, flight: Flight, growing: Growing, leases: Leases, name: str, seen: Seen, key: Keys
    ) -> None:
        """Feeds a followed file's growth to its readers, and ends it: complete once the other process
        released its lease with the entry committed whole, failed when it did not, died, or stalled."""
        grown = time.monotonic()
        try:
            while not growing.ended:
                await asyncio.sleep(POLL)
                assert growing.fd is not None
                size = os.fstat(growing.fd).st_size
                if size > growing.available:
                    growing.grew(size)
                    flight.touch()
                    grown = time.monotonic()
                now_seen = await tasks.run_in(self.pool, leases.look, name)
                if now_seen is None or now_seen.holder.token != seen.holder.token:
                    await self._released(flight, growing, key)
                elif judge(now_seen, time.time()) is Verdict.EXPIRED:
                    _broke(flight, growing, "the process downloading it stopped")
                elif time.monotonic() - grown > self.settings.upstream_timeout:
                    _broke(flight, growing, f"no progress for {self.settings.upstream_timeout} s")
        except Exception as exc:
            logger.exception("following another process's download failed")
            _broke(flight, growing, f"{type(exc).__name__}: {exc}")

    async def _released(self, flight: Flight, growing: Growing, key: Keys) -> None:
        entry = await tasks.run_in(self.db_pool, self.store.newest, key.lookup_order())
        if growing.fd is None:
            return
        size = os.fstat(growing.fd).st_size
        if entry is None or entry.size != size:
            _broke(flight, growing, "the other process's download did not complete")
            return
        growing.complete(entry.sha256, entry.size)  # each reader checks what it sent against it
        flight.land(Landing(Kind.STORED, entry, Outcome.MISS, _BY_OTHER))


class _NoLease(Exception):
    """The lease's files cannot be used: download without one."""


def _broke(flight: Flight, growing: Growing, reason: str) -> None:
    growing.fail(reason)
    flight.land(ABANDONED)
