"""Who may use the proxy and where it may go: the decisions behind every refusal, and the request fields no
upstream may see. Pure functions of the settings; the addon's hooks carry them out."""

from __future__ import annotations

from collections.abc import Iterable

from cacheaddon.settings import Settings

# Request fields that are for the proxy alone, never for an upstream (mitmproxy passes them on).
PROXY_FIELDS = ("proxy-authorization", "proxy-connection")
# Fields a client may name in Connection that must stay: mitmproxy has framed the request by them already.
_KEPT_FIELDS = frozenset(
    {"", "close", "keep-alive", "upgrade", "content-length", "transfer-encoding", "host"}
)


def peer_ip(peername: tuple[object, ...] | None) -> str:
    return str(peername[0]) if peername else ""


def refusal(settings: Settings, ip: str, host: str, port: int) -> str | None:
    """Why a request or CONNECT from `ip` to host:port is refused, if it is: not an open proxy (the client
    allow-list) and, with cache_strict_hosts, an egress firewall."""
    if not settings.is_allowed_client(ip):
        return f"client {ip} is not in cache_allow_clients"
    if not settings.is_permitted_destination(host, port):
        return f"{host}:{port} is not in cache_hosts (cache_strict_hosts)"
    return None


def connection_refusal(settings: Settings, ip: str, host: str, port: int) -> str | None:
    """For any connection mitmproxy itself opens (raw TCP/UDP modes, pass-through): offline, none at all."""
    return refusal(settings, ip, host, port) or ("offline (cache_offline)" if settings.offline else None)


def dns_refusal(settings: Settings, ip: str, names: Iterable[str]) -> str | None:
    """For a query in mitmproxy's DNS mode, judged by name (a DNS query has no port)."""
    if not settings.is_allowed_client(ip):
        return f"client {ip} is not in cache_allow_clients"
    if settings.offline:
        return "offline (cache_offline)"
    if settings.strict_hosts and not all(map(settings.is_cached_name, names)):
        return "not in cache_hosts (cache_strict_hosts)"
    return None


def hop_fields(connection: str, strip_proxy_auth: bool = True) -> tuple[str, ...]:
    """The request fields to remove before a request goes on: the proxy's own, and those the client names in
    Connection (RFC 9110 7.6.1). Proxy-Authorization stays when mitmproxy's upstream_auth set it for a parent
    proxy."""
    named = {n.strip().lower() for n in connection.split(",")} - _KEPT_FIELDS
    own = PROXY_FIELDS if strip_proxy_auth else ("proxy-connection",)
    return (*own, *sorted(named))
