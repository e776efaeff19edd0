"""Which client connections count as idle (cache_client_timeout), driven with mitmproxy's tflow helpers."""

from __future__ import annotations

from mitmproxy.test import tflow

from cacheaddon.idle import IdleClients


def waiting(idle: IdleClients, client_id: str) -> bool:
    return idle._deadline.get(client_id) is not None


def test_a_connection_is_idle_only_between_requests() -> None:
    idle = IdleClients()
    idle.timeout = 60
    first, second = tflow.tflow(), tflow.tflow()
    second.client_conn = first.client_conn  # two HTTP/2 streams of one connection
    client = first.client_conn.id
    idle.client_connected(first.client_conn)
    assert waiting(idle, client)  # nothing sent yet: the head must come within the timeout
    idle.requestheaders(first)
    idle.requestheaders(second)
    assert not waiting(idle, client)
    idle.response(first)
    assert not waiting(idle, client)  # the second stream is still on
    idle.error(second)
    assert waiting(idle, client)
    idle.tcp_start(tflow.ttcpflow(client_conn=first.client_conn))
    assert client not in idle._deadline  # a raw tunnel now: left to tcp_timeout
    idle.client_disconnected(first.client_conn)
    assert idle._deadline == {} and idle._active == {}


def test_off_when_the_timeout_is_zero() -> None:
    idle = IdleClients()
    flow = tflow.tflow()
    idle.client_connected(flow.client_conn)
    assert not waiting(idle, flow.client_conn.id)
