"""The shared tier: an S3-compatible bucket behind every proxy's local cache, so that a fleet shares what any
of its proxies fetched. The only module that imports the S3 client (aiobotocore); knows nothing of HTTP.

Objects under the location's prefix:
  sha256/<hex>    a body, named by its sha256; created with If-None-Match: *, so the first writer wins
  records/<hex>   an Entry record (entry.to_record() as JSON) under a cache key, named by the key's sha256
  leases/<hex>    who is downloading a URL (named by the URL's sha256): created with If-None-Match: *, renewed
                  and released with If-Match on the holder's own ETag, taken over with If-Match on the ETag of
                  an expired one
Every call runs with a timeout on a private event loop in a thread of its own: botocore's synchronous work
(loading its service model, signing, hashing a payload sent over plain HTTP, parsing XML) never runs on
mitmproxy's loop. Failures come out as SharedTierError, mapped by exception type at the edge; after one the
tier is skipped for a while and the build goes on with the local tier and the upstream (shared tiers fail
open).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, TypeVar

import aiobotocore.session
import botocore.config
import botocore.exceptions

from cacheaddon.entry import Entry
from cacheaddon.health import HostHealth
from cacheaddon.keys import redact
from cacheaddon.settings import SharedLocation

logger = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_TTL = 15.0  # seconds a lease lives without renewal; its holder renews it every third of that
_MIN_RATE = 1024 * 1024  # bytes/s a body transfer may not fall below (on top of the per-call timeout)
_CHUNK = 256 * 1024
_RECORD_LIMIT = 1024 * 1024  # bytes; a record holds a URL and response fields: larger is not one of ours
_GRACE = 1.0  # seconds the caller waits beyond a call's bound for the private loop to report its timeout
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READS, _WRITES = "shared tier", "shared tier writes"  # health keys: a full store still serves reads

# ClientError codes (structured data in the answer, not message text) by what they mean here.
_LOST = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "OperationAborted"})
_MISSING = frozenset({"NoSuchKey", "NotFound"})
_FULL = frozenset({"EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "InsufficientStorage"})
_CODES = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidAccessKeyId": "access denied (unknown access key)",
    "SignatureDoesNotMatch": "access denied (wrong secret key)",
    "ExpiredToken": "credentials expired",
    "InvalidToken": "credentials invalid",
    "SlowDown": "overloaded (SlowDown)",
    "ServiceUnavailable": "unavailable",
    "InternalError": "internal error",
}
# Exception types, most specific first: the first that matches names the failure.
_EXCEPTIONS: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timed out"),
    (botocore.exceptions.ConnectTimeoutError, "timed out connecting"),
    (botocore.exceptions.ReadTimeoutError, "timed out reading"),
    (botocore.exceptions.EndpointConnectionError, "unreachable"),
    (botocore.exceptions.ConnectionClosedError, "connection closed"),
    (botocore.exceptions.NoCredentialsError, "no credentials (AWS_ACCESS_KEY_ID, ~/.aws, instance role)"),
    (botocore.exceptions.PartialCredentialsError, "incomplete credentials"),
    (botocore.exceptions.HTTPClientError, "connection failed"),
    (botocore.exceptions.ResponseStreamingError, "connection broke while reading"),
    (botocore.exceptions.BotoCoreError, "client error"),
    (OSError, "I/O error"),
)


class SharedTierError(Exception):
    """Any failure of the shared tier: unreachable, slow, denied, full, or skipped after a recent failure."""

    def __init__(self, reason: str, full: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.full = reason, full


class _Lost(Exception):
    """A conditional write or delete found the object not as expected (another writer came first)."""


class _Missing(Exception):
    """The object does not exist."""


def classify(exc: BaseException) -> Exception:
    """Our exception for one the client raised: _Lost, _Missing or SharedTierError."""
    if isinstance(exc, (SharedTierError, _Lost, _Missing)):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _CODES:
            return SharedTierError(_CODES[code])
        if code in _LOST or status == "412":
            return _Lost()
        if code in _MISSING or status == "404":  # a HEAD's error has no body: its code is the status
            return _Missing()
        if code in _FULL or status == "507":
            return SharedTierError("full", full=True)
        return SharedTierError(f"answered {status} {code}".rstrip())
    for kind, reason in _EXCEPTIONS:
        if isinstance(exc, kind):
            return SharedTierError(reason)
    # The tier must never fail a build: an exception nobody foresaw is a failure of the tier, named.
    return SharedTierError(f"unexpected {type(exc).__name__}")


def lease_expired(last_modified: datetime, server_date: str | None, ttl: float, now: float) -> bool:
    """Whether a lease last written at last_modified has expired. Both times are the store's when it sent
    its Date, so clocks of the fleet's hosts never matter; without a Date, our clock is the best we have."""
    written = last_modified.timestamp()
    try:
        current = parsedate_to_datetime(server_date).timestamp() if server_date else now
    except (TypeError, ValueError):
        current = now
    return current - written > ttl


@dataclass
class Lease:
    """A lease we hold: renewed and released with If-Match on the ETag of our own last write."""

    name: str
    etag: str
    seq: int = 0


@dataclass(frozen=True)
class LeaseState:
    """A lease someone else holds, as last read."""

    holder: str
    expired: bool


class _Loop:
    """A private event loop in a daemon thread; coroutines submitted to it are awaited from any loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="cacheaddon-shared-tier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._stopped or self.loop.is_closed():
            coro.close()
            raise SharedTierError("closed")
        # Cancelling the caller cancels the work on the private loop too.
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self, last: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Runs last() on the loop (bounded), then ends the thread; once."""
        if self._stopped:
            return
        self._stopped = True

        async def finish() -> None:
            try:
                await asyncio.wait_for(last(), 5)
            finally:
                self.loop.stop()

        asyncio.run_coroutine_threadsafe(finish(), self.loop)


class SharedTier:
    def __init__(
        self,
        location: SharedLocation,
        timeout: float,
        backoff: float,
        lease_ttl: float = LEASE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # botocore logs dozens of debug records per call; under mitmproxy each record is an event for every
        # addon, shipped to its loop: that cost a shared-tier hit more than the S3 calls themselves.
        for name in ("botocore", "aiobotocore", "aiohttp"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("botocore.credentials").setLevel(logging.INFO)  # says where credentials came from
        self.location, self.timeout, self.backoff, self.lease_ttl = location, timeout, backoff, lease_ttl
        self.clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.conditional: bool | None = None  # whether the store enforces If-None-Match; None: not yet known
        self._health = HostHealth()
        self._down: set[str] = set()
        self._loop = _Loop()
        self._client: Any = None
        self._client_cm: Any = None

    # the edge: every call goes through _call

    async def _call(
        self, work: Callable[[Any], Coroutine[Any, Any, T]], write: bool = False, limit: float | None = None
    ) -> T:
        """Runs work(client) on the private loop, all of it within `limit` seconds (default: the timeout);
        raises SharedTierError, _Lost, _Missing. Health is kept on the caller's thread."""
        keys = (_READS, _WRITES) if write else (_READS,)
        now = self.clock()
        if any(self._health.backing_off(key, now) for key in keys):
            raise SharedTierError("skipped after a recent failure")
        bound = self.timeout if limit is None else limit
        try:
            # botocore's timeouts are per socket operation: a store trickling its answer a byte at a time
            # never trips them. The bound holds on the caller's loop too, even if the private one is stuck.
            async with asyncio.timeout(bound + _GRACE):
                result = await self._loop.run(self._timed(work, bound))
        except TimeoutError:
            error = SharedTierError("timed out")
            self._failed(error)
            raise error from None
        except SharedTierError as exc:
            self._failed(exc)
            raise
        except (_Lost, _Missing):
            self._recovered(keys)
            raise
        self._recovered(keys)
        return result

    async def _timed(self, work: Callable[[Any], Coroutine[Any, Any, T]], bound: float) -> T:
        try:
            async with asyncio.timeout(bound):
                return await work(await self._connect())
        except (SharedTierError, _Lost, _Missing):
            raise
        except Exception as exc:
            raise classify(exc) from exc

    async def _connect(self) -> Any:
        if self._client is None:
            loc = self.location
            config = botocore.config.Config(
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                retries={"max_attempts": 1, "mode": "standard"},  # we back off ourselves: fail fast
                # S3-compatible services on an address (MinIO, SeaweedFS, Ceph) want path-style URLs.
                s3={"addressing_style": "path" if loc.endpoint else "auto"},
                # botocore >= 1.36 adds checksums by default, which several S3-compatible services refuse.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=32,
            )
            self._client_cm = aiobotocore.session.get_session().create_client(
                "s3", endpoint_url=loc.endpoint or None, region_name=loc.region or None, config=config
            )
            self._client = await self._client_cm.__aenter__()
        return self._client

    def _failed(self, error: SharedTierError) -> None:
        """Records a failure; logs it once per outage."""
        key = _WRITES if error.full else _READS
        self._health.failed(key, self.clock(), int(self.backoff))
        if key not in self._down:
            self._down.add(key)
            what = "writes to " if error.full else ""
            logger.warning(
                "shared tier %s: %s; skipping %sit for %ds (local tier and upstream only)",
                self.location,
                error.reason,
                what,
                self.backoff,
            )

    def _recovered(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            if key in self._down:
                self._down.discard(key)
                self._health.succeeded(key)
                state = "writable" if key == _WRITES else "back"
                logger.info("shared tier %s: %s again", self.location, state)

    def _name(self, kind: str, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{self.location.prefix}{kind}/{digest}"

    def _body_name(self, sha256: str) -> str:
        if not _SHA256.match(sha256):
            raise SharedTierError(f"invalid sha256 {sha256[:80]!r} in a record")
        return f"{self.location.prefix}sha256/{sha256}"

    @property
    def available(self) -> bool:
        return not self._health.backing_off(_READS, self.clock())

    # start-up check

    async def check(self) -> bool:
        """Whether the store enforces conditional writes (a second If-None-Match: * create must fail); says so
        in one log line. Raises SharedTierError when the store cannot be reached."""
        name = f"{self.location.prefix}check/{self.holder}"
        bucket = self.location.bucket

        async def probe(client: Any) -> bool:
            await client.put_object(Bucket=bucket, Key=name, Body=b"1", IfNoneMatch="*")
            try:
                await client.put_object(Bucket=bucket, Key=name, Body=b"2", IfNoneMatch="*")
                enforced = False
            except botocore.exceptions.ClientError as exc:
                if not isinstance(classify(exc), _Lost):
                    raise
                enforced = True
            await client.delete_object(Bucket=bucket, Key=name)
            return enforced

        self.conditional = await self._call(probe, write=True, limit=2 * self.timeout)
        if self.conditional:
            logger.info(
                "shared tier %s: reachable, conditional writes enforced (one download per file across the "
                "fleet)",
                self.location,
            )
        else:
            logger.warning(
                "shared tier %s: reachable, but it does not enforce conditional writes (If-None-Match): "
                "sharing on, leases off (each proxy downloads for itself)",
                self.location,
            )
        return self.conditional

    # records

    async def get_record(self, key: str) -> Entry | None:
        """The Entry stored under a cache key, or None (none, unreadable, or not for this key's URL)."""
        name, bucket = self._name("records", key), self.location.bucket

        async def get(client: Any) -> bytes | None:
            answer = await client.get_object(Bucket=bucket, Key=name)
            async with answer["Body"] as stream:
                if not 0 <= int(answer.get("ContentLength", -1)) <= _RECORD_LIMIT:
                    return None
                # read(n) returns what has arrived so far, not n bytes: read until the end.
                raw = bytearray()
                while len(raw) <= _RECORD_LIMIT:
                    if not (chunk := await stream.read(_RECORD_LIMIT + 1 - len(raw))):
                        break
                    raw += chunk
                return bytes(raw)

        try:
            raw = await self._call(get)
        except _Missing:
            return None
        try:
            entry = None if raw is None else Entry.from_record(json.loads(raw))
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
            entry = None
        if entry is None or entry.url != key.split("\n", 1)[0]:
            logger.warning("shared tier record %s is unreadable or not for its key: ignored", name)
            return None
        return entry

    async def put_record(self, key: str, entry: Entry) -> None:
        name, bucket = self._name("records", key), self.location.bucket
        data = json.dumps(entry.to_record()).encode()

        async def put(client: Any) -> None:
            await client.put_object(Bucket=bucket, Key=name, Body=data, ContentType="application/json")

        await self._call(put, write=True)

    # bodies

    async def get_body(
        self, sha256: str, size: int, new_file: Callable[[], tuple[BinaryIO, str]], inline_limit: int
    ) -> bytes | str | None:
        """The body named sha256 with the size a record gives: bytes up to inline_limit, else the path of a
        complete temporary file from new_file (the caller owns it). None when missing, corrupt, or not of that
        size. Only an object whose content does not hash to its name is deleted from the store (if it is
        still the object that was read): one whose size differs from a record's may be right where the record
        is wrong, and is left to writers (put_body) to judge."""
        name, bucket = self._body_name(sha256), self.location.bucket

        async def get(client: Any) -> bytes | str | None:
            answer = await client.get_object(Bucket=bucket, Key=name)
            length = int(answer.get("ContentLength", -1))
            digest, parts, file, path, got = hashlib.sha256(), [], None, None, 0
            try:
                async with answer["Body"] as stream:
                    if 0 <= length <= size:  # a longer object cannot be this body: never read whole
                        while chunk := await stream.read(_CHUNK):
                            got += len(chunk)
                            digest.update(chunk)
                            if size <= inline_limit:
                                parts.append(chunk)
                                continue
                            if file is None:
                                file, path = new_file()
                            file.write(chunk)
                if got == size and digest.hexdigest() == sha256:
                    if file is None:
                        return b"".join(parts)
                    file.close()
                    file = None
                    return path
            finally:
                if file is not None:
                    file.close()
                    if path is not None:
                        os.unlink(path)
            if got != length or digest.hexdigest() == sha256:
                what = "shared tier object %s has %d bytes where a record says %d: not served"
                logger.warning(what, name, length, size)
                return None
            logger.warning("shared tier object %s does not match its sha256: deleted, not served", name)
            try:
                await client.delete_object(Bucket=bucket, Key=name, IfMatch=answer["ETag"])
            except botocore.exceptions.ClientError as exc:
                if not isinstance(classify(exc), (_Lost, _Missing)):
                    raise
            return None

        try:
            return await self._call(get, limit=self.timeout + size / _MIN_RATE)
        except _Missing:
            return None

    async def put_body(self, sha256: str, size: int, body: bytes | BinaryIO) -> bool:
        """Creates the body named sha256 unless it is there: True when written, False when another writer
        came first. An object of another size there is damaged (the caller checked that body hashes to
        sha256): it is replaced. A file is read from its current position and left open."""
        name, bucket = self._body_name(sha256), self.location.bucket
        start = 0 if isinstance(body, bytes) else body.tell()

        async def put(client: Any) -> bool:
            for _ in range(2):
                if not isinstance(body, bytes):
                    body.seek(start)
                try:
                    await client.put_object(
                        Bucket=bucket, Key=name, Body=body, ContentLength=size, IfNoneMatch="*"
                    )
                    return True
                except botocore.exceptions.ClientError as exc:
                    if not isinstance(classify(exc), _Lost):
                        raise
                try:
                    there = await client.head_object(Bucket=bucket, Key=name)
                    if int(there.get("ContentLength", -1)) == size:
                        return False
                    logger.warning("shared tier object %s is not %d bytes long: replaced", name, size)
                    await client.delete_object(Bucket=bucket, Key=name, IfMatch=there["ETag"])
                except botocore.exceptions.ClientError as exc:
                    if not isinstance(classify(exc), (_Lost, _Missing)):
                        raise
            return False

        return await self._call(put, write=True, limit=2 * (self.timeout + size / _MIN_RATE))

    # leases

    def _lease_body(self, url: str, seq: int) -> bytes:
        # A sequence number, so that each write has its own ETag (S3's is the MD5 of the content).
        return json.dumps({"holder": self.holder, "url": redact(url), "seq": seq}).encode()

    async def acquire(self, url: str) -> Lease | LeaseState:
        """Our lease on downloading url, or the state of another holder's live one. An expired lease is taken
        over with If-Match on the ETag read, so that of two proxies taking it over at once one wins."""
        name, bucket = self._name("leases", url), self.location.bucket

        async def create(client: Any, etag: str | None) -> Lease:
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            body, meta = self._lease_body(url, 0), {"holder": self.holder}
            answer = await client.put_object(Bucket=bucket, Key=name, Body=body, Metadata=meta, **condition)
            return Lease(name, answer["ETag"])

        async def take(client: Any) -> Lease | LeaseState:
            for _ in range(2):  # a lease released between our create and our read: create once more
                try:
                    return await create(client, None)
                except botocore.exceptions.ClientError as exc:
                    if not isinstance(classify(exc), _Lost):
                        raise
                try:
                    answer = await client.get_object(Bucket=bucket, Key=name)
                except botocore.exceptions.ClientError as exc:
                    if isinstance(classify(exc), _Missing):
                        continue
                    raise
                async with answer["Body"] as stream:
                    raw = await stream.read()
                date = answer["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
                expired = lease_expired(answer["LastModified"], date, self.lease_ttl, self.clock())
                try:
                    holder = str(json.loads(raw)["holder"])
                except (ValueError, KeyError, TypeError):
                    holder, expired = "?", True  # unreadable: as good as abandoned
                if not expired:
                    return LeaseState(holder, expired=False)
                try:
                    lease = await create(client, answer["ETag"])
                except botocore.exceptions.ClientError as exc:
                    if not isinstance(classify(exc), _Lost):
                        raise
                    return LeaseState(holder, expired=False)  # another proxy took it over first
                logger.info("took over the expired lease of %s on %s", holder, redact(url))
                return lease
            return LeaseState("?", expired=False)

        return await self._call(take, write=True, limit=2 * self.timeout)

    async def renew(self, lease: Lease, url: str) -> bool:
        """Extends our lease; False when it is no longer ours (taken over after we failed to renew)."""
        bucket = self.location.bucket

        async def put(client: Any) -> None:
            lease.seq += 1
            body = self._lease_body(url, lease.seq)
            meta = {"holder": self.holder}
            answer = await client.put_object(
                Bucket=bucket, Key=lease.name, Body=body, Metadata=meta, IfMatch=lease.etag
            )
            lease.etag = answer["ETag"]

        try:
            await self._call(put, write=True)
        except (_Lost, _Missing):
            return False
        return True

    async def release(self, lease: Lease) -> None:
        """Removes our lease, unless it is no longer ours."""
        bucket = self.location.bucket

        async def delete(client: Any) -> None:
            await client.delete_object(Bucket=bucket, Key=lease.name, IfMatch=lease.etag)

        try:
            await self._call(delete, write=True)
        except (_Lost, _Missing):
            pass

    async def lease_state(self, url: str) -> LeaseState | None:
        """The lease on url as it stands (one HEAD), or None when there is none."""
        name, bucket = self._name("leases", url), self.location.bucket

        async def head(client: Any) -> LeaseState:
            answer = await client.head_object(Bucket=bucket, Key=name)
            date = answer["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
            expired = lease_expired(answer["LastModified"], date, self.lease_ttl, self.clock())
            return LeaseState(answer.get("Metadata", {}).get("holder", "?"), expired)

        try:
            return await self._call(head)
        except _Missing:
            return None

    def close(self) -> None:
        async def disconnect() -> None:
            if self._client_cm is not None:
                await self._client_cm.__aexit__(None, None, None)

        self._loop.stop(disconnect)
