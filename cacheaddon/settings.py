"""Option names, defaults and help text, and the frozen Settings value built from them."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cacheaddon.parent import Route

# The public registries' hosts: what a build host typically needs cached.
DEFAULT_HOSTS = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "rubygems.org",
    "index.rubygems.org",
    "api.nuget.org",
    "globalcdn.nuget.org",
    "repo1.maven.org",
    "repo.maven.apache.org",
    "index.crates.io",
    "static.crates.io",
    "proxy.golang.org",
)

# Package files: every registry forbids re-uploading a file under the same name, so these never go stale.
DEFAULT_IMMUTABLE = (
    "*.whl",
    "*.whl.metadata",
    "*.tar.gz",
    "*.tar.bz2",
    "*.zip",
    "*.egg",
    "*.tgz",
    "*.gem",
    "*.nupkg",
    "*.crate",
    "*/crates/*/*/download",  # cargo's download URL for crates.io (config.json "dl" without markers)
    "*.jar",
    "*.pom",
    "*/@v/*.mod",  # Go module proxy: a version's go.mod and .info never change (the .zip is above)
    "*/@v/*.info",
)

DEFAULT_ALLOW_CLIENTS = ("127.0.0.0/8", "::1")

# (name, type, default, help). Types are what mitmproxy's --set can parse: str, int, bool, Sequence[str].
OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    (
        "cache_dir",
        str,
        "",
        "Directory of the diskcache store. Empty: $XDG_CACHE_HOME/cacheaddon, else ~/.cache/cacheaddon.",
    ),
    (
        "cache_ttl",
        int,
        86400,
        "Seconds a cached response is fresh, whatever Cache-Control, Expires or Pragma say.",
    ),
    (
        "cache_immutable",
        Sequence[str],
        list(DEFAULT_IMMUTABLE),
        "Glob patterns (fnmatch, on the URL path) of package files that never go stale; comma-separated "
        "patterns allowed; set to an empty string to turn this off. Default: wheels, sdists, npm tarballs, "
        ".gem, .nupkg, .jar and .pom, crates, Go module versions.",
    ),
    ("cache_negative_ttl", int, 600, "Seconds a 404 or 410 answer is cached."),
    (
        "cache_stale_on_error",
        bool,
        True,
        "When the upstream fails, answer from the cache even if the entry is stale.",
    ),
    (
        "cache_upstream_timeout",
        int,
        5,
        "Whole seconds without a byte from the upstream (connecting or waiting for the answer) after which "
        "it counts as failed. A slow download that keeps making progress is not cut off.",
    ),
    (
        "cache_upstream_backoff",
        int,
        30,
        "Seconds after an upstream failure during which stale entries of that host are served at once, "
        "while one background request at a time probes whether the host is back.",
    ),
    (
        "cache_offline",
        bool,
        False,
        "Never contact an upstream: serve whatever is cached, however old; a miss is a 504.",
    ),
    (
        "cache_hosts",
        Sequence[str],
        list(DEFAULT_HOSTS),
        "Hosts whose responses are cached: host, host:port or *.domain; comma-separated patterns allowed. "
        "Other hosts pass through uncached. Default: the public package registries.",
    ),
    (
        "cache_max_object_size",
        str,
        "100m",
        "Largest response stored, with a k/m/g suffix, and never more than a quarter of cache_size_limit; "
        "larger responses are passed on but not stored.",
    ),
    (
        "cache_size_limit",
        str,
        "10g",
        "Total size of the cache on disk, in bytes or with a k/m/g suffix; after each store, least recently "
        "used entries are evicted until the cache is back under it.",
    ),
    (
        "cache_client_timeout",
        int,
        60,
        "Seconds a client connection may stay idle between requests, or take to send a request head, "
        "before it is closed, so that clients that hold connections without using them cannot exhaust the "
        "proxy's file descriptors. 0 turns this off (mitmproxy's tcp_timeout still applies).",
    ),
    (
        "cache_env_proxy",
        bool,
        False,
        "Send the cache's own upstream requests through the proxy that this process's HTTPS_PROXY, "
        "HTTP_PROXY or ALL_PROXY names, except for hosts in NO_PROXY. mitmproxy's --mode upstream:URL, when "
        "given, is used instead, for every request.",
    ),
    (
        "cache_allow_clients",
        Sequence[str],
        list(DEFAULT_ALLOW_CLIENTS),
        "CIDRs of clients allowed to use the proxy; comma-separated values allowed. Others get 403.",
    ),
    (
        "cache_strict_hosts",
        bool,
        False,
        "Refuse (403) requests and CONNECTs to hosts outside cache_hosts (and, for a pattern without a port, "
        "to ports other than 80 and 443): the proxy becomes an egress firewall.",
    ),
    (
        "cache_shared",
        str,
        "",
        "A shared tier behind the local cache, s3://BUCKET/PREFIX: proxies naming the same location share "
        "what any of them fetched, and download each file once across the fleet. Empty: no shared tier. "
        "Credentials come from the standard places (AWS_ACCESS_KEY_ID, ~/.aws, an instance role).",
    ),
    (
        "cache_shared_endpoint",
        str,
        "",
        "URL of the S3-compatible service holding cache_shared (MinIO, Ceph RGW, SeaweedFS, R2...). "
        "Empty: AWS S3.",
    ),
    (
        "cache_shared_region",
        str,
        "",
        "Region of the cache_shared bucket. Empty: from AWS_REGION or the shared config files, else "
        "us-east-1.",
    ),
    (
        "cache_shared_offline",
        bool,
        False,
        "Under cache_offline, still read the cache_shared tier (for a fleet whose bucket is on its own "
        "network). Off: an offline proxy contacts nothing, the bucket included, so an offline rebuild "
        "depends on its local cache alone.",
    ),
    (
        "cache_min_release_age",
        str,
        "",
        "Hide PyPI and npm versions published more recently than this from the metadata served, and refuse "
        "their files (403): a duration such as 3d, 72h or 90m (s, m, h, d, w; a bare number is seconds). "
        "Applied when answering, so a version appears by itself once old enough. Empty or 0: off.",
    ),
    (
        "cache_release_age_exempt",
        Sequence[str],
        [],
        "Packages cache_min_release_age does not apply to: ecosystem:pattern with an fnmatch pattern on the "
        "package name, e.g. npm:@mycorp/* or pypi:mycorp-*; comma-separated values allowed.",
    ),
    (
        "cache_release_age_missing",
        str,
        "allow",
        "A version whose publish time is unknown while cache_min_release_age is set: allow (served, and "
        "logged) or refuse.",
    ),
    (
        "cache_block_advisories",
        str,
        "",
        "A directory or zip of OSV advisories (JSON files, as osv.dev publishes them per ecosystem): the "
        "PyPI and npm versions that its MAL- (malicious package) advisories name are hidden from metadata "
        "and their files refused (403). Read again when it changes. Empty: off.",
    ),
    (
        "cache_block_advisories_all",
        bool,
        False,
        "Block the versions named by every advisory in cache_block_advisories, not only MAL- ones.",
    ),
    (
        "cache_record",
        str,
        "",
        "File to append a line to (JSON: key, URL, status, size, sha256) for every entry answered from or "
        "stored in the cache while set, for `cacheaddon bundle create`. Empty: no recording.",
    ),
)

OPTION_NAMES = tuple(name for name, *_ in OPTIONS)

# No object may take more than this share of cache_size_limit: one that large would evict most of the cache
# (a 30 MiB file in a 20 MiB cache used to be stored, and the cache stayed 5x its limit).
OBJECT_SHARE = 4

_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"(\d+)([bkmgt]?)")
# S3's bucket naming rules (3-63 characters; lower-case letters, digits, dots and hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+|\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
# Ecosystems as OSV spells them, by the prefix cache_release_age_exempt uses.
ECOSYSTEMS = {"pypi": "PyPI", "npm": "npm"}
_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$|^\[?[0-9a-f:.]+\]?$")


@dataclass(frozen=True)
class HostPattern:
    host: str  # lower case; "*.example.org" matches subdomains only
    port: int | None

    def matches(self, host: str, port: int, any_port: bool = True) -> bool:
        """any_port=False: a pattern without a port stands for the web ports (80, 443) only."""
        if self.port is not None and self.port != port:
            return False
        if self.port is None and not any_port and port not in (80, 443):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


@dataclass(frozen=True)
class SharedLocation:
    """Where the shared tier lives: a bucket, a key prefix inside it ("" or ending in "/"), the service."""

    bucket: str
    prefix: str
    endpoint: str  # "" for AWS S3 itself
    region: str  # "" for the standard configuration's

    def __str__(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


@dataclass(frozen=True)
class Settings:
    cache_dir: Path
    ttl: int
    immutable: tuple[str, ...]
    negative_ttl: int
    stale_on_error: bool
    upstream_timeout: int
    upstream_backoff: int
    offline: bool
    hosts: tuple[HostPattern, ...]
    max_object_size: int  # already capped at size_limit // OBJECT_SHARE
    size_limit: int
    allow_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    strict_hosts: bool
    shared: SharedLocation | None = None
    shared_offline: bool = False  # cache_offline still reads the shared tier
    # The supply-chain guard (guard.py); off unless one of the first or the fourth is set.
    min_release_age: float = 0.0  # seconds
    min_release_age_text: str = ""  # as the option spelled it, for messages
    release_age_exempt: tuple[tuple[str, str], ...] = ()  # (OSV ecosystem, fnmatch pattern on the name)
    release_age_missing: str = "allow"  # or "refuse"
    block_advisories: Path | None = None
    block_advisories_all: bool = False

    @property
    def guard_active(self) -> bool:
        return self.min_release_age > 0 or self.block_advisories is not None
    record: Path | None = None
    env_proxy: bool = False
    client_timeout: int = 60
    parents: tuple[Route, ...] = ()  # parent proxies for the cache's own requests, from mitmproxy's options

    @functools.cached_property
    def immutable_path(self) -> re.Pattern[str]:
        """One regex for all of `immutable` (checked on every hit: one match, not one fnmatch per glob)."""
        return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in self.immutable) or "(?!)")

    def is_cached_host(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        return any(p.matches(host, port) for p in self.hosts)

    def is_cached_name(self, name: str) -> bool:
        """Whether a host name is in cache_hosts on some port (what a DNS query can be judged by)."""
        name = name.lower().rstrip(".")
        return any(p.matches(name, p.port) if p.port else p.matches(name, 443) for p in self.hosts)

    def is_permitted_destination(self, host: str, port: int) -> bool:
        """Whether a request or CONNECT may go to host:port at all. Under cache_strict_hosts only cached
        hosts, and a pattern without a port only on 80 and 443: a tunnel to pypi.org:22 is no download."""
        if not self.strict_hosts:
            return True
        host = host.lower().strip("[]")
        return any(p.matches(host, port, any_port=False) for p in self.hosts)

    def is_allowed_client(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow_clients)


def split_list(values: Sequence[str] | str) -> tuple[str, ...]:
    """Repeated --set values, each of which may hold comma-separated items."""
    if isinstance(values, str):
        values = [values]
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def parse_size(option: str, text: str) -> int:
    m = _SIZE_RE.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(
            f"{option}: {text!r} is not a size (bytes, or a number with a k/m/g suffix, e.g. 100m)"
        )
    return int(m[1]) * _SIZE_UNITS[m[2] or "b"]


def parse_host(option: str, text: str) -> HostPattern:
    host, port = text.lower(), None
    if host.startswith("["):  # [::1]:8080
        inner, _, rest = host[1:].partition("]")
        host, port_text = inner, rest.removeprefix(":")
        port = _parse_port(option, text, port_text) if port_text else None
    elif host.count(":") == 1:
        host, port_text = host.split(":")
        port = _parse_port(option, text, port_text)
    if not _HOST_RE.match(host):
        raise ValueError(f"{option}: {text!r} is not a host pattern (host, host:port or *.domain)")
    return HostPattern(host, port)


def parse_duration(option: str, text: str) -> float:
    """Seconds in '3d', '72h', '1d12h', '90m', '30s' or a bare number of seconds."""
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION_RE.fullmatch(compact):
        raise ValueError(
            f"{option}: {text!r} is not a duration (a number with s, m, h, d or w, e.g. 3d or 72h)"
        )
    return sum(float(n) * _DURATION_UNITS[unit or "s"] for n, unit in _DURATION_PART.findall(compact))


def parse_exempt(option: str, text: str) -> tuple[str, str]:
    """'npm:@mycorp/*' -> ('npm', '@mycorp/*'); a PyPI pattern is normalised like the names it matches."""
    prefix, colon, pattern = text.partition(":")
    ecosystem = ECOSYSTEMS.get(prefix.strip().lower())
    if not colon or ecosystem is None or not pattern.strip():
        raise ValueError(
            f"{option}: {text!r} is not ecosystem:pattern with ecosystem pypi or npm (e.g. npm:@mycorp/*)"
        )
    pattern = pattern.strip()
    if ecosystem == "PyPI":
        pattern = re.sub(r"[-_.]+", "-", pattern).lower()
    return ecosystem, pattern


def _parse_port(option: str, text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{option}: {text!r} has an invalid port")
    return int(port)


def _non_negative(option: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{option}: must be 0 or more seconds, got {value}")
    return value


def parse_shared(location: str, endpoint: str, region: str, offline: bool = False) -> SharedLocation | None:
    location, endpoint, region = location.strip(), endpoint.strip(), region.strip()
    if not location:
        for option, value in (("cache_shared_endpoint", endpoint), ("cache_shared_region", region)):
            if value:
                raise ValueError(f"{option}: {value!r} has no effect without cache_shared")
        if offline:
            raise ValueError("cache_shared_offline: has no effect without cache_shared")
        return None
    if not location.startswith("s3://"):
        raise ValueError(f"cache_shared: {location!r} is not an S3 location (s3://BUCKET/PREFIX)")
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"cache_shared: {bucket!r} is not a bucket name (3-63 lower-case letters, digits, dots, hyphens)"
        )
    prefix = "/".join(part for part in prefix.split("/") if part)
    if any(part in (".", "..") for part in prefix.split("/")) or any(ord(c) < 32 for c in prefix):
        raise ValueError(f"cache_shared: {location!r} has an invalid prefix")
    if endpoint and not _is_http_url(endpoint):
        raise ValueError(f"cache_shared_endpoint: {endpoint!r} is not an http(s):// URL")
    if region and not _REGION_RE.match(region):
        raise ValueError(f"cache_shared_region: {region!r} is not a region name (e.g. eu-west-1)")
    return SharedLocation(bucket, prefix + "/" if prefix else "", endpoint.rstrip("/"), region)


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number, or out of range
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok and not parts.query


def default_cache_dir(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative value is invalid and must be ignored.
    base = xdg if os.path.isabs(xdg) else str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "cacheaddon"


def from_options(opts: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Builds Settings from option values; raises ValueError whose message starts with the option name."""
    env = os.environ if env is None else env
    timeout = _non_negative("cache_upstream_timeout", opts["cache_upstream_timeout"])
    if timeout == 0:
        raise ValueError("cache_upstream_timeout: must be at least 1 second")
    networks = []
    for cidr in split_list(opts["cache_allow_clients"]):
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"cache_allow_clients: {cidr!r} is not an IP address or CIDR") from None
        mapped = network.network_address.ipv4_mapped if network.version == 6 else None
        if mapped is not None and network.prefixlen >= 96:
            # Clients are compared as IPv4 once unmapped, so ::ffff:10.0.0.0/104 must read as 10.0.0.0/8.
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        networks.append(network)
    max_size = parse_size("cache_max_object_size", opts["cache_max_object_size"])
    size_limit = parse_size("cache_size_limit", opts["cache_size_limit"])
    age_text = str(opts["cache_min_release_age"]).strip()
    min_age = parse_duration("cache_min_release_age", age_text) if age_text else 0.0
    missing = str(opts["cache_release_age_missing"]).strip().lower()
    if missing not in ("allow", "refuse"):
        raise ValueError(f"cache_release_age_missing: must be allow or refuse, not {missing!r}")
    advisories = str(opts["cache_block_advisories"]).strip()
    if size_limit < 1024 * 1024:
        raise ValueError(f"cache_size_limit: {opts['cache_size_limit']!r} is too small (at least 1m)")
    return Settings(
        cache_dir=Path(opts["cache_dir"]).expanduser() if opts["cache_dir"] else default_cache_dir(env),
        ttl=_non_negative("cache_ttl", opts["cache_ttl"]),
        immutable=split_list(opts["cache_immutable"]),
        negative_ttl=_non_negative("cache_negative_ttl", opts["cache_negative_ttl"]),
        stale_on_error=bool(opts["cache_stale_on_error"]),
        upstream_timeout=timeout,
        upstream_backoff=_non_negative("cache_upstream_backoff", opts["cache_upstream_backoff"]),
        offline=bool(opts["cache_offline"]),
        hosts=tuple(parse_host("cache_hosts", h) for h in split_list(opts["cache_hosts"])),
        max_object_size=min(max_size, size_limit // OBJECT_SHARE),
        size_limit=size_limit,
        allow_clients=tuple(networks),
        strict_hosts=bool(opts["cache_strict_hosts"]),
        shared=parse_shared(
            opts["cache_shared"],
            opts["cache_shared_endpoint"],
            opts["cache_shared_region"],
            bool(opts["cache_shared_offline"]),
        ),
        shared_offline=bool(opts["cache_shared_offline"]),
        min_release_age=min_age,
        min_release_age_text=age_text if min_age > 0 else "",
        release_age_exempt=tuple(
            parse_exempt("cache_release_age_exempt", p) for p in split_list(opts["cache_release_age_exempt"])
        ),
        release_age_missing=missing,
        block_advisories=Path(advisories).expanduser() if advisories else None,
        block_advisories_all=bool(opts["cache_block_advisories_all"]),
        record=Path(opts["cache_record"]).expanduser().absolute() if opts.get("cache_record") else None,
        env_proxy=bool(opts["cache_env_proxy"]),
        client_timeout=_non_negative("cache_client_timeout", opts["cache_client_timeout"]),
    )


def defaults() -> dict[str, Any]:
    return {name: default for name, _, default, _ in OPTIONS}
