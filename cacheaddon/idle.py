"""Client connections that hold a file descriptor without using it are closed: idle between requests, or
stalled while sending a request head, for longer than cache_client_timeout.

mitmproxy 12.3 closes a connection only after tcp_timeout (600 s) without a byte, so a client trickling its
request head a byte every few seconds is held for as long as it likes, and a thousand such clients hold a
thousand descriptors. No hook sees a request head before it is complete, so time is counted here from the
connection's start, or from the end of its last exchange, until the next head arrives. A CONNECT restarts
the count (the tunnel's TLS handshake and first head must fit in it); raw TCP/UDP tunnels and WebSockets are
left to tcp_timeout. mitmproxy offers an addon no call to close a client connection: the proxyserver addon's
table of connection handlers, and a handler's close_connection (what mitmproxy's own timeout does), are used,
and when they are missing (another mitmproxy version) the timeout is off, said once in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mitmproxy import connection, ctx, http, tcp

from cacheaddon import tasks

logger = logging.getLogger(__name__)


class IdleClients:
    """A sub-addon of CacheAddon: its hooks only count, a sweeper task closes."""

    def __init__(self) -> None:
        self.timeout = 0  # seconds; 0: off (set by CacheAddon.configure)
        self._deadline: dict[str, float | None] = {}  # client id -> when it is closed; None: a request is on
        self._active: dict[str, int] = {}  # client id -> requests under way (HTTP/2 has several)
        self._sweeper: asyncio.Task[None] | None = None
        self._unsupported = False

    def _wait(self, client: connection.Client) -> None:
        if client.id in self._deadline and not self._active.get(client.id):
            self._deadline[client.id] = time.monotonic() + self.timeout if self.timeout else None

    def client_connected(self, client: connection.Client) -> None:
        if client.transport_protocol == "tcp":
            self._deadline[client.id] = None
            self._wait(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._forget(client.id)

    def _forget(self, client_id: str) -> None:
        self._deadline.pop(client_id, None)
        self._active.pop(client_id, None)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._wait(flow.client_conn)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn
        if client.id in self._deadline:
            self._active[client.id] = self._active.get(client.id, 0) + 1
            self._deadline[client.id] = None

    def _exchange_over(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn
        if flow.request.method != "CONNECT" and self._active.get(client.id):
            self._active[client.id] -= 1
            self._wait(client)

    def response(self, flow: http.HTTPFlow) -> None:
        self._exchange_over(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._exchange_over(flow)

    # No longer HTTP: tcp_timeout's to watch.

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._forget(flow.client_conn.id)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._forget(flow.client_conn.id)

    def running(self) -> None:
        if self._sweeper is None:
            self._sweeper = tasks.spawn(self._sweep())

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.25, self.timeout / 4)) if self.timeout else 5.0)
            now = time.monotonic()
            overdue = [cid for cid, at in self._deadline.items() if at is not None and at <= now]
            for client_id in overdue:
                self._forget(client_id)
                self._close(client_id)

    def _close(self, client_id: str) -> None:
        handler: Any = getattr(ctx.master.addons.get("proxyserver"), "connections", {}).get(client_id)
        if handler is None:
            return  # gone meanwhile
        try:
            client = handler.client
            logger.debug("closing %s: idle for %d s (cache_client_timeout)", client.peername, self.timeout)
            handler.close_connection(client)
        except (AttributeError, KeyError) as exc:
            if not self._unsupported:
                self._unsupported = True
                logger.warning("cache_client_timeout: cannot close connections in this mitmproxy (%r)", exc)
