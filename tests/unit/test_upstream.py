"""upstream: every way an upstream fails becomes one UpstreamFailure, recognised by exception type (and the
phase it happened in), never by message text. Real loopback servers, no mocks."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest

from cacheaddon.policy import answered
from cacheaddon.upstream import UpstreamClient, UpstreamFailure, classify, raw_chunks

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def canned(data: bytes, then_close: bool = True) -> Reply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(data)
        await writer.drain()
        if then_close:
            writer.close()
        else:
            await asyncio.sleep(5)

    return reply


async def fetch(reply: Reply | None) -> tuple[str, bool, bytes, str]:
    """(failure reason or 'ok', timeout flag, body read, failure kind or '') of one GET to a server answering
    with `reply`."""
    if reply is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = None
    else:
        server = await asyncio.start_server(reply, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(1, False)
    body = b""
    try:
        fetched = await client.open("GET", f"http://127.0.0.1:{port}/x", {})
        async for chunk in raw_chunks(fetched):
            body += chunk
        return "ok", False, body, ""
    except UpstreamFailure as exc:
        return exc.failure.reason, exc.failure.timeout, body, exc.failure.kind
    finally:
        await client.aclose()
        if server is not None:
            server.close()


@pytest.mark.parametrize(
    ("reply", "reason", "timeout", "kind"),
    [
        (canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), "ok", False, ""),
        (None, "connection refused", False, "refused"),
        (
            canned(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel"),
            "connection closed before the body was complete",
            False,
            "truncated",
        ),
        (
            canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n"),
            "connection closed before the body was complete",
            False,
            "truncated",
        ),
        (
            canned(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", then_close=False),
            "timed out",
            True,
            "timeout",
        ),
        (canned(b"", then_close=False), "timed out", True, "timeout"),
    ],
)
def test_failures_are_told_apart_by_type_and_phase(
    reply: Reply | None, reason: str, timeout: bool, kind: str
) -> None:
    reason_, timeout_, _, kind_ = asyncio.run(fetch(reply))
    assert (reason_, timeout_, kind_) == (reason, timeout, kind)


def test_a_garbled_head_is_a_protocol_error() -> None:
    reason, timeout, _, kind = asyncio.run(fetch(canned(b"NOT HTTP AT ALL\r\n\r\n")))
    assert reason.startswith("protocol error (") and not timeout and kind == "protocol"


def test_a_head_without_any_answer_is_a_protocol_error_not_a_cut_body() -> None:
    reason, _, _, kind = asyncio.run(fetch(canned(b"")))
    assert reason.startswith("protocol error ("), reason
    assert kind == "protocol"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (socket.gaierror(-2, "Name or service not known"), "dns"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls"),
        (ConnectionResetError(104, "reset"), "reset"),
        (httpx.ConnectError("no route"), "connect"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ProxyError("407 Proxy Authentication Required"), "proxy"),
        # Told apart by type, whatever the text says: no kind is read back out of a reason.
        (RuntimeError("TLS failure, connection refused"), "other"),
        (OSError("name resolution failed"), "other"),
    ],
)
def test_each_kind_comes_from_the_exception_type(exc: BaseException, kind: str) -> None:
    failure = classify(exc).failure
    assert failure.kind == kind, failure


def test_an_unknown_exception_keeps_its_variable_text_in_parentheses() -> None:
    assert classify(RuntimeError("at 10.0.0.1:443")).failure.reason == "RuntimeError (at 10.0.0.1:443)"


@pytest.mark.parametrize(("status", "kind"), [(503, "http_5xx"), (500, "http_5xx"), (429, "http_429")])
def test_an_outage_answer_is_a_failure_with_its_kind(status: int, kind: str) -> None:
    failure = answered(status)
    assert (failure.reason, failure.status, failure.kind) == (f"answered {status}", status, kind)
