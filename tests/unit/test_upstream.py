"""upstream: every way an upstream fails becomes one UpstreamFailure, recognised by exception type (and the
phase it happened in), never by message text. Real loopback servers, no mocks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from cacheaddon.upstream import UpstreamClient, UpstreamFailure, raw_chunks

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


async def fetch(reply: Reply | None) -> tuple[str, bool, bytes]:
    """(failure reason or 'ok', timeout flag, body read) of one GET to a server answering with `reply`."""
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
        return "ok", False, body
    except UpstreamFailure as exc:
        return exc.failure.reason, exc.failure.timeout, body
    finally:
        await client.aclose()
        if server is not None:
            server.close()


@pytest.mark.parametrize(
    ("reply", "reason", "timeout"),
    [
        (canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), "ok", False),
        (None, "connection refused", False),
        (
            canned(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel"),
            "connection closed before the body was complete",
            False,
        ),
        (
            canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n"),
            "connection closed before the body was complete",
            False,
        ),
        (canned(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", then_close=False), "timed out", True),
        (canned(b"", then_close=False), "timed out", True),
    ],
)
def test_failures_are_told_apart_by_type_and_phase(reply: Reply | None, reason: str, timeout: bool) -> None:
    assert asyncio.run(fetch(reply))[:2] == (reason, timeout)


def test_a_garbled_head_is_a_protocol_error() -> None:
    reason, timeout, _ = asyncio.run(fetch(canned(b"NOT HTTP AT ALL\r\n\r\n")))
    assert reason.startswith("protocol error (") and not timeout


def test_a_head_without_any_answer_is_a_protocol_error_not_a_cut_body() -> None:
    reason, _, _ = asyncio.run(fetch(canned(b"")))
    assert reason.startswith("protocol error ("), reason
