"""The shared tier's pure parts: failures mapped by type and error code, lease expiry on the store's clock."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import pytest
from factories import make_entry

from cacheaddon import sharedtier
from cacheaddon.settings import SharedLocation
from cacheaddon.sharedtier import SharedTier, SharedTierError


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response: Any = {"Error": {"Code": code, "Message": "text we never read"}}
    response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return botocore.exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("code", "status", "kind", "reason", "full"),
    [
        ("PreconditionFailed", 412, sharedtier._Lost, None, False),
        ("ConditionalRequestConflict", 409, sharedtier._Lost, None, False),
        ("", 412, sharedtier._Lost, None, False),
        ("NoSuchKey", 404, sharedtier._Missing, None, False),
        ("404", 404, sharedtier._Missing, None, False),  # HEAD: no body, the code is the status
        ("NoSuchBucket", 404, SharedTierError, "the bucket does not exist", False),
        ("AccessDenied", 403, SharedTierError, "access denied", False),
        ("InvalidAccessKeyId", 403, SharedTierError, "access denied (unknown access key)", False),
        ("SlowDown", 503, SharedTierError, "overloaded (SlowDown)", False),
        ("EntityTooLarge", 400, SharedTierError, "full", True),
        ("XMinioStorageFull", 507, SharedTierError, "full", True),
        ("", 507, SharedTierError, "full", True),
        ("Teapot", 418, SharedTierError, "answered 418 Teapot", False),
    ],
)
def test_client_errors_map_by_code(
    code: str, status: int, kind: type, reason: str | None, full: bool
) -> None:
    mapped = sharedtier.classify(client_error(code, status))
    assert type(mapped) is kind
    if isinstance(mapped, SharedTierError):
        assert (mapped.reason, mapped.full) == (reason, full)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError(), "timed out"),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://s3"), "timed out connecting"),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"), "timed out reading"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), "unreachable"),
        (
            botocore.exceptions.NoCredentialsError(),
            "no credentials (AWS_ACCESS_KEY_ID, ~/.aws, instance role)",
        ),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3"), "connection closed"),
        (ConnectionResetError(), "I/O error"),
        (KeyError("ETag"), "unexpected KeyError"),
    ],
)
def test_other_failures_map_by_type(exc: BaseException, reason: str) -> None:
    mapped = sharedtier.classify(exc)
    assert isinstance(mapped, SharedTierError) and mapped.reason == reason


def test_our_own_errors_pass_through() -> None:
    error = SharedTierError("skipped")
    assert sharedtier.classify(error) is error


WRITTEN = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("date", "now", "expired"),
    [
        ("Thu, 01 Jan 2026 12:00:10 GMT", 0.0, False),
        ("Thu, 01 Jan 2026 12:00:15 GMT", 0.0, False),
        ("Thu, 01 Jan 2026 12:00:16 GMT", 0.0, True),
        # The store's clock decides, whatever ours says.
        ("Thu, 01 Jan 2026 12:00:01 GMT", WRITTEN.timestamp() + 3600, False),
        (None, WRITTEN.timestamp() + 5, False),
        (None, WRITTEN.timestamp() + 20, True),
        ("not a date", WRITTEN.timestamp() + 20, True),
    ],
)
def test_lease_expiry_uses_the_stores_clock(date: str | None, now: float, expired: bool) -> None:
    assert sharedtier.lease_expired(WRITTEN, date, 15, now) is expired


class TricklingStore:
    """An S3 endpoint on loopback that answers every request with a 200 head and then a body one byte at a
    time, each within the read timeout: only a bound on the whole call stops a client waiting on it."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\nETag: \"x\"\r\n\r\n")
            for _ in range(200):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class SilentStore(TricklingStore):
    """Reads each request and never answers: a store that hangs, as a stopped server does."""

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.read()  # until the client gives up and closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class PiecemealStore(TricklingStore):
    """Answers with a whole record, sent in two pieces a moment apart (as a slow network delivers it)."""

    def __init__(self, record: bytes) -> None:
        super().__init__()
        self.record = record

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.record)}\r\nETag: \"x\"\r\n\r\n"
            half = len(self.record) // 2
            for piece in (head.encode() + self.record[:half], self.record[half:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.3)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("s3_credentials")
def test_a_store_that_trickles_its_answer_is_given_up_on_after_the_timeout() -> None:
    """botocore's read timeout is per read; every call of the tier is bounded as a whole."""

    async def scenario() -> str:
        async with TricklingStore() as endpoint:
            location = SharedLocation("fleet-cache", "ci/", endpoint, "us-east-1")
            tier = SharedTier(location, timeout=1, backoff=30)
            try:
                # The test's own bound (the body would take 40 s) only keeps a failure from hanging the run.
                with pytest.raises(SharedTierError) as caught:
                    await asyncio.wait_for(tier.get_record("https://files.example/a.tgz\naccept=*/*"), 20)
                return caught.value.reason
            finally:
                tier.close()

    assert asyncio.run(scenario()) == "timed out"


@pytest.mark.usefixtures("s3_credentials")
@pytest.mark.parametrize("call", ["get_record", "put_record"])
def test_a_store_that_never_answers_times_out(call: str) -> None:
    async def scenario() -> str:
        async with SilentStore() as endpoint:
            location = SharedLocation("fleet-cache", "ci/", endpoint, "us-east-1")
            tier = SharedTier(location, timeout=1, backoff=30)
            key = "https://files.example/a.tgz\naccept=*/*"
            work = tier.get_record(key) if call == "get_record" else tier.put_record(key, make_entry(url="https://files.example/a.tgz"))
            try:
                with pytest.raises(SharedTierError) as caught:
                    await asyncio.wait_for(work, 20)  # the test's own bound, only against a hang
                return caught.value.reason
            finally:
                tier.close()

    assert asyncio.run(scenario()) == "timed out"


@pytest.mark.usefixtures("s3_credentials")
def test_a_record_that_arrives_in_pieces_is_read_whole() -> None:
    url = "https://files.example/a.tgz"
    entry = make_entry(url=url)

    async def scenario() -> object:
        async with PiecemealStore(json.dumps(entry.to_record()).encode()) as endpoint:
            location = SharedLocation("fleet-cache", "ci/", endpoint, "us-east-1")
            tier = SharedTier(location, timeout=5, backoff=30)
            try:
                return await asyncio.wait_for(tier.get_record(f"{url}\naccept=*/*"), 20)
            finally:
                tier.close()

    assert asyncio.run(scenario()) == entry
