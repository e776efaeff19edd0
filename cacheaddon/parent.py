"""Which parent proxy the addon's own upstream requests go through (corporate egress), decided from
mitmproxy's `--mode upstream:URL` with `upstream_auth`, or, when cache_env_proxy is on, from this process's
HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY. Pure: the environment is passed in.

A route is an httpx mount pattern ("all://", "https://", "all://*.corp.example") and the proxy for URLs it
matches, or None for a direct connection; httpx picks the most specific pattern that matches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    pattern: str
    proxy: str | None  # the parent's URL; None: connect directly
    auth: tuple[str, str] | None = None  # for the parent (Proxy-Authorization: Basic)


def routes(
    modes: Sequence[str], upstream_auth: str | None, env: Mapping[str, str] | None
) -> tuple[Route, ...]:
    """The routes for these mitmproxy modes and upstream_auth; `env` (None: cache_env_proxy is off) is used
    only when no mode names a parent. Raises ValueError naming the option."""
    from mitmproxy.proxy.mode_specs import ProxyMode, UpstreamMode

    parents = set()
    for spec in modes:
        try:
            mode = ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy's to report
        if isinstance(mode, UpstreamMode):
            host, port = mode.address
            parents.add(f"{mode.scheme}://{f'[{host}]' if ':' in host else host}:{port}")
    if len(parents) > 1:
        raise ValueError(f"mode: the cache fetches through one parent proxy, not {len(parents)} ({parents})")
    if parents:
        return (Route("all://", parents.pop(), _auth(upstream_auth)),)
    return from_env(env) if env is not None else ()


def _auth(upstream_auth: str | None) -> tuple[str, str] | None:
    if not upstream_auth:
        return None
    user, sep, password = upstream_auth.partition(":")
    if not sep:
        raise ValueError("upstream_auth: expected username:password")
    return user, password


def _variable(env: Mapping[str, str], name: str) -> str:
    # The lower-case spelling wins, as in curl and Python's urllib.
    return (env.get(name.lower()) or env.get(name.upper()) or "").strip()


def from_env(env: Mapping[str, str]) -> tuple[Route, ...]:
    """Routes from HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY, read as httpx reads them with trust_env
    (httpx._utils.get_environment_proxies; curl's rules for NO_PROXY), but from the mapping given, and
    without its other trust_env effects (a .netrc's credentials would go upstream, into shared entries)."""
    found: list[Route] = []
    for scheme in ("http", "https", "all"):
        url = _variable(env, f"{scheme}_proxy")
        if url:
            found.append(Route(f"{scheme}://", url if "://" in url else f"http://{url}"))
    if not found:
        return ()
    for host in (h.strip() for h in _variable(env, "no_proxy").split(",")):
        if host == "*":
            return ()
        if host:
            found.append(Route(_no_proxy_pattern(host), None))
    return tuple(found)


def _no_proxy_pattern(host: str) -> str:
    if "://" in host:
        return host
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        return f"all://[{address}]" if address.version == 6 else f"all://{address}"
    if host.lower() == "localhost":
        return "all://localhost"
    # ".corp.example" covers subdomains only; "corp.example" the domain and its subdomains.
    return f"all://*{host}"
