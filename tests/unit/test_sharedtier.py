"""The shared tier's pure parts: failures mapped by type and error code, lease expiry on the store's clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import pytest

from cacheaddon import sharedtier
from cacheaddon.sharedtier import SharedTierError


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
