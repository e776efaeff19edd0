"""The shared tier as the service uses it: a local miss (or a stale entry) asks it before the upstream; what
is stored locally is published to it in the background; a miss is downloaded once across the fleet, by whoever
holds the URL's lease, while the others wait for it (bounded) and then read the shared copy.

Every failure of the tier is logged by sharedtier.py and turns into "the tier has nothing": a build is never
failed or held up longer than the bounded wait by it (shared tiers fail open).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from cacheaddon import policy, sharing, tasks
from cacheaddon.entry import Entry
from cacheaddon.keys import redact
from cacheaddon.settings import Settings
from cacheaddon.sharedtier import Lease, SharedTier, SharedTierError
from cacheaddon.store import Store, StoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound="_Reply")

POLL = 0.2  # seconds between looks at another proxy's lease while waiting for it
PUBLISHERS = 4  # uploads to the tier at once
BACKLOG = 256  # uploads waiting; beyond this the newest are not shared (they stay in the local tier)
RENEW_LIMIT = 600.0  # seconds a download may hold its lease; after that it lapses and others may take over

class _Ingest(Protocol):
    """Admits entries into the local tier (ingest.Ingest) and tells us what it stored."""

    on_stored: Callable[[str, Entry, bool], None] | None

    async def commit(self, key: str, entry: Entry, body: bytes | str, share: bool = True) -> bool: ...


class _Keys(Protocol):
    def lookup_order(self) -> tuple[str, ...]: ...


class _Job(Protocol):
    stream: Any
    on_close: Callable[[], Awaitable[None]] | None


class _Reply(Protocol):
    job: Any


class Fleet:
    def __init__(
        self,
        tier: SharedTier,
        store: Store,
        ingest: _Ingest,
        db_pool: ThreadPoolExecutor,
        settings: Settings,
        inline_limit: int,
    ) -> None:
        self.tier, self.store, self.ingest, self.db_pool = tier, store, ingest, db_pool
        self.settings, self.inline_limit = settings, inline_limit
        # A waiter waits for another proxy's download about as long as for a silent upstream, twice.
        self.wait = 2.0 * settings.upstream_timeout
        ingest.on_stored = self.stored
        self._claims: dict[str, asyncio.Event] = {}  # URLs a request of this process coordinates for
        self._leases: dict[str, tuple[Lease, asyncio.Task[None]]] = {}  # ...and holds the lease of
        self._publishing: dict[str, set[asyncio.Task[None]]] = {}
        self._slots = asyncio.Semaphore(PUBLISHERS)
        self._backlog = 0
        self._dropping = False
        self._check: asyncio.Task[None] | None = None

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db_pool, fn, *args)

    # start-up and the conditional-write check

    def start(self) -> None:
        if self.settings.offline:
            return  # the check writes to the store, for leases, which nothing fetched offline needs
        if self._check is None or self._check.done():
            self._check = tasks.spawn(self._checked())

    async def _checked(self) -> None:
        try:
            await self.tier.check()
        except SharedTierError:
            pass  # logged by the tier; checked again on a later miss

    async def _coordinates(self) -> bool:
        """Whether leases can be used: the store is known to enforce conditional writes (a check under way
        is waited for: the first misses after start-up are the ones most likely to coincide)."""
        if self.tier.conditional is None and self.tier.available:
            self.start()
            assert self._check is not None
            await asyncio.wait({self._check}, timeout=self.wait)
        return self.tier.conditional is True

    # reading

    async def lookup(self, key: _Keys, local: Entry | None, now: float) -> Entry | None:
        """When the local entry is missing or stale: an entry newer than it from the shared tier, its body
        verified and copied into the local tier with its record; None when the tier has nothing newer, or
        cannot be asked."""
        if local is not None and policy.is_fresh(local, now, self.settings):
            return None
        names = tuple(k for k in key.lookup_order() if sharing.why_not_shared(k) is None)
        if not names or not self.tier.available:
            return None
        try:
            records = await asyncio.gather(*(self.tier.get_record(name) for name in names))
            found = zip(names, records, strict=True)
            chosen = sharing.newest(found, local, now, self.settings.max_object_size)
            if chosen is None:
                return None
            name, entry = chosen
            if local is not None and local.sha256 == entry.sha256:  # refreshed elsewhere: the body we have
                await self._db(self.store.put_record, name, entry)
                return entry
            new_file, limit = self.store.new_body_file, self.inline_limit
            body = await self.tier.get_body(entry.sha256, entry.size, new_file, limit)
        except (SharedTierError, StoreError):
            return None
        if body is None or not await self.ingest.commit(name, entry, body, share=False):
            return None
        return entry

    # one download per URL across the fleet

    async def fetch(self, url: str, key: str, again: Callable[[], Awaitable[R]]) -> R:
        """A miss of `key`: one download per URL across the fleet. Takes the URL's lease and then looks
        again (the tier may have received it meanwhile) before downloading, or waits (at most `wait` seconds)
        for the proxy that holds it and then looks again. `again` answers the request as if the fleet had
        been asked (tiers first, then the upstream) and must not come back here. When the lease cannot be
        taken or read, or the wait runs out, the download goes ahead all the same."""
        if sharing.why_not_shared(key) is not None:
            return await again()
        deadline = time.monotonic() + self.wait
        claim = self._claims.get(url)
        if claim is not None:  # another request of this process is on it: wait for that one
            await _wait(claim, deadline)
            return await again()
        claim = self._claims[url] = asyncio.Event()
        lease = None
        try:
            while lease is None and await self._coordinates():
                try:
                    got = await self.tier.acquire(url)
                except SharedTierError:
                    break
                if isinstance(got, Lease):
                    lease = got
                    break
                state = await self._wait_for_holder(url, deadline)
                if state == "gone":
                    self._release_claim(url, claim)
                    return await again()
                if state == "timeout":
                    holder = got.holder
                    logger.info("waited %ss for %s to fetch %s: fetching too", self.wait, holder, redact(url))
                    break
                # "expired": its holder died; take it over
        except BaseException:
            self._release_claim(url, claim)
            raise
        return await self._download_claimed(url, lease, again, claim)

    async def _wait_for_holder(self, url: str, deadline: float) -> str:
        """'gone' (the holder finished), 'expired' (it stopped renewing), or 'timeout'."""
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL)
            try:
                current = await self.tier.lease_state(url)
            except SharedTierError:
                return "timeout"  # cannot see the lease: stop waiting on it
            if current is None:
                return "gone"
            if current.expired:
                return "expired"
        return "timeout"

    async def _download_claimed(
        self, url: str, lease: Lease | None, download: Callable[[], Awaitable[R]], claim: asyncio.Event
    ) -> R:
        """Downloads for this process (and, with the lease, for the fleet); waiters are woken when it ends."""
        if lease is not None:
            self._leases[url] = (lease, tasks.spawn(self._renew(url, lease)))
        try:
            reply = await download()
        except BaseException:
            self._done(url, claim)
            raise
        job: _Job | None = reply.job
        if job is not None and job.stream is not None:  # streamed: done when the relay closes the job
            previous = job.on_close

            async def on_close() -> None:
                try:
                    if previous is not None:
                        await previous()
                finally:
                    self._done(url, claim)

            job.on_close = on_close
        else:
            self._done(url, claim)
        return reply

    async def _renew(self, url: str, lease: Lease) -> None:
        deadline = time.monotonic() + RENEW_LIMIT
        while time.monotonic() < deadline:
            await asyncio.sleep(self.tier.lease_ttl / 3)
            try:
                if not await self.tier.renew(lease, url):
                    logger.warning("lost the lease on %s to another proxy", redact(url))
                    return
            except SharedTierError:
                pass  # logged by the tier; try again at the next turn, the lease may still be ours

    def _done(self, url: str, claim: asyncio.Event) -> None:
        """The download ended (stored or not): wake this process's waiters, and release the lease once what
        it stored has reached the tier, so that other proxies find the shared copy when the lease is gone."""
        self._release_claim(url, claim)
        held = self._leases.pop(url, None)
        if held is not None:
            lease, renewing = held
            renewing.cancel()
            tasks.spawn(self._release_after_publish(url, lease))

    def _release_claim(self, url: str, claim: asyncio.Event) -> None:
        if self._claims.get(url) is claim:
            del self._claims[url]
        claim.set()

    async def _release_after_publish(self, url: str, lease: Lease) -> None:
        pending = self._publishing.get(url, set())
        if pending:
            await asyncio.wait(pending, timeout=self.wait)
        try:
            await self.tier.release(lease)
        except SharedTierError:
            pass  # the lease expires by itself

    # writing

    def stored(self, key: str, entry: Entry, body: bool) -> None:
        """After the local tier stored an entry (body False: only its record changed): publish it in the
        background, unless it is private, the tier is down, or too much is waiting already."""
        if sharing.why_not_shared(key, entry) is not None or not self.tier.available:
            return
        if self._backlog >= BACKLOG:
            if not self._dropping:
                self._dropping = True
                logger.warning("shared tier: %d uploads waiting; newer entries stay local for now", BACKLOG)
            return
        self._backlog += 1
        task = tasks.spawn(self._publish(key, entry, body))
        pending = self._publishing.setdefault(entry.url, set())
        pending.add(task)
        task.add_done_callback(lambda t: self._published(entry.url, t))

    def _published(self, url: str, task: asyncio.Task[None]) -> None:
        self._backlog -= 1
        if self._backlog < BACKLOG // 2:
            self._dropping = False
        pending = self._publishing.get(url)
        if pending is not None:
            pending.discard(task)
            if not pending:
                del self._publishing[url]

    async def _publish(self, key: str, entry: Entry, body: bool) -> None:
        async with self._slots:
            try:
                if body:
                    value = await self._db(self.store.open_body, entry)
                    if value is None:
                        return  # evicted or dropped meanwhile
                    try:
                        await self.tier.put_body(entry.sha256, entry.size, value)
                    finally:
                        if not isinstance(value, bytes):
                            value.close()
                await self.tier.put_record(key, entry)
            except (SharedTierError, StoreError) as exc:
                logger.debug("not shared: %s (%s)", redact(entry.url), exc)

def tier_for(settings: Settings, current: SharedTier | None) -> SharedTier | None:
    """The shared tier these settings name: the current one while its location and timings still hold
    (it keeps its connections, health and start-up check), else a new one (the old is closed). None when
    there is none, or offline: an offline rebuild must depend on nothing on the network, a bucket included,
    unless cache_shared_offline says otherwise."""
    wanted = settings.shared if not settings.offline or settings.shared_offline else None
    if current is not None:
        same = (current.location, current.timeout, current.backoff)
        if wanted is not None and same == (wanted, settings.upstream_timeout, settings.upstream_backoff):
            return current
        current.close()
    if wanted is None:
        return None
    return SharedTier(wanted, settings.upstream_timeout, settings.upstream_backoff)


async def _wait(event: asyncio.Event, deadline: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return False
    return True
