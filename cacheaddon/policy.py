"""Pure cache decisions: keys, cacheability, freshness and what to do with a request. No I/O, no clock."""

from __future__ import annotations

import enum
import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from cacheaddon.entry import Entry
from cacheaddon.settings import Settings

# RFC 9110 7.6.1 plus the proxy-only fields: never stored, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request fields that make an answer private to whoever sent them (npm's _authToken is sent as a Bearer
# Authorization).
CREDENTIAL_HEADERS = (
    "authorization",
    "cookie",
    "x-nuget-apikey",
    "private-token",
    "job-token",
    "deploy-token",
    "x-api-key",
    "x-jfrog-art-api",
)
# Request fields whose names look like credentials but are not keyed on: an answer the upstream marks private
# is then not stored, since it could belong to whoever sent them. Known harmless fields are left out.
_CREDENTIAL_LIKE = re.compile(r"auth|token|secret|passw|api-?key|credential")
_NOT_CREDENTIALS = frozenset({"npm-auth-type", "proxy-authorization"})
# Always part of the key: registries negotiate on them without always saying so in Vary (npm does not).
KEYED_HEADERS = ("accept", "accept-encoding")
STORABLE_STATUS = frozenset({200, 203, 300, 301, 308})
NEGATIVE_STATUS = frozenset({404, 410})
DEFAULT_PORTS = {"http": 80, "https": 443}
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


class Outcome(enum.Enum):
    """Exactly the X-Cache values."""

    HIT = "HIT"
    MISS = "MISS"
    REVALIDATED = "REVALIDATED"
    STALE = "STALE"


class Action(enum.Enum):
    SERVE = "serve"  # answer from the entry
    FETCH = "fetch"  # ask the upstream (conditionally when the entry has validators)
    OFFLINE_MISS = "offline-miss"  # 504 naming the URL


@dataclass(frozen=True)
class Decision:
    action: Action
    outcome: Outcome
    reason: str  # the X-Cache-Detail text
    probe: bool = False  # also revalidate in the background (host in back-off)


@dataclass(frozen=True)
class RequestView:
    method: str
    url: str  # normalized, see normalize_url
    headers: Mapping[str, str]  # lower-case names, repeated fields joined with ", "

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


def normalize_url(scheme: str, host: str, port: int, path: str) -> str:
    """scheme://host[:port]/path?query with the host lower-cased, the default port dropped and
    percent-escapes made canonical, so that one resource has one key."""
    scheme = scheme.lower()
    host = host.lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    netloc = host if DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    path, sep, query = (path if path.startswith("/") else "/" + path).partition("?")
    path = _PCT.sub(_canonical_escape, path.split("#", 1)[0])
    query = _PCT.sub(_canonical_escape, query.split("#", 1)[0])
    return f"{scheme}://{netloc}{path}{sep}{query}"


def _canonical_escape(match: re.Match[str]) -> str:
    """RFC 3986 6.2.2: escapes of unreserved characters decoded, others upper-cased (%2f stays escaped)."""
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else "%" + match[1].upper()


def _norm_value(value: str) -> str:
    return ",".join(part.strip() for part in value.lower().split(",") if part.strip())


def credential_fingerprint(headers: Mapping[str, str], salt: bytes) -> str:
    """A salted hash of the request's credentials, or '' when it has none; never the credential itself."""
    present = [(name, headers[name]) for name in CREDENTIAL_HEADERS if headers.get(name)]
    if not present:
        return ""
    digest = hashlib.sha256(salt)
    for name, value in present:
        digest.update(f"\0{name}\0{value}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def cache_key(request: RequestView, salt: bytes, any_coding: bool = False) -> str:
    """any_coding: the key of an answer without a content coding, which suits whatever Accept-Encoding."""
    # Fields are joined with newlines, which neither a request target nor a header value can hold, so two
    # different requests can never spell the same key; an any-coding key has no accept-encoding= line.
    keyed = "\n".join(
        "any-coding"
        if any_coding and name == "accept-encoding"
        else f"{name}={_norm_value(request.header(name))}"
        for name in KEYED_HEADERS
    )
    owner = credential_fingerprint(request.headers, salt)
    return f"{request.url}\n{keyed}" + (f"\ncred={owner}" if owner else "")


@dataclass(frozen=True)
class Keys:
    """Where the answer to a request is looked up and stored. A body without a content coding suits every
    client, so it is shared by clients that ask with different Accept-Encoding values (pip, uv, npm and curl
    each send their own, and an offline rebuild may use another client than the build that filled the
    cache); an encoded one only suits clients that asked with that Accept-Encoding."""

    shared: str
    coded: str
    identity_ok: bool  # the client did not refuse an unencoded answer (identity;q=0)

    def lookup_order(self) -> tuple[str, ...]:
        return (self.shared, self.coded) if self.identity_ok else (self.coded,)

    def for_response(self, content_encoding: str | None) -> str:
        coded = _norm_value(content_encoding or "") not in ("", "identity")
        return self.coded if coded or not self.identity_ok else self.shared


def cache_keys(request: RequestView, salt: bytes) -> Keys:
    identity_ok = not _refuses_identity(request.header("accept-encoding"))
    return Keys(cache_key(request, salt, any_coding=True), cache_key(request, salt), identity_ok)


def _refuses_identity(accept_encoding: str) -> bool:
    """RFC 9110 12.5.3: identity;q=0, or *;q=0 with identity not listed, refuses an unencoded answer."""
    weights = {}
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    pass
        if coding.strip():
            weights[coding.strip().lower()] = weight
    return weights.get("identity", weights.get("*", 1.0)) == 0


def vary_names(vary_header: str) -> tuple[str, ...] | None:
    """The request fields a response varies on beyond the keyed ones; None for Vary: * (never storable).
    Credentials are left out: the key already holds their salted hash, and they must never be stored."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in vary_header.split(",") if n.strip()))
    if "*" in names:
        return None
    return tuple(n for n in names if n not in KEYED_HEADERS and n not in CREDENTIAL_HEADERS)


def vary_digest(value: str, salt: bytes = b"") -> str:
    # A salted digest, not the value: a header named in Vary may carry a secret the record must not hold in
    # clear, nor in a form a short secret could be guessed back from.
    normal = " ".join(value.split()).encode("utf-8", "surrogateescape")
    return hashlib.sha256(salt + normal).hexdigest()[:32]


def vary_values(
    names: tuple[str, ...], request: RequestView, salt: bytes = b""
) -> tuple[tuple[str, str], ...]:
    return tuple((name, vary_digest(request.header(name), salt)) for name in names)


def vary_matches(entry: Entry, request: RequestView, salt: bytes = b"") -> bool:
    # Records written before the digests were salted hold unsalted ones: they still match.
    return all(
        value in (vary_digest(request.header(name), salt), vary_digest(request.header(name)))
        for name, value in entry.vary
    )


def request_cacheability(request: RequestView) -> str | None:
    """None when the cache may answer this request, else why not (the X-Cache-Detail of a pass-through)."""
    if request.method not in ("GET", "HEAD"):
        return f"not cacheable: method {request.method}"
    return None


def storability(
    status: int, headers: Mapping[str, str], content_length: int | None, settings: Settings
) -> str | None:
    """None when a response may be stored, else why not. Cache-Control is ignored on purpose."""
    if status not in STORABLE_STATUS and status not in NEGATIVE_STATUS:
        return f"not stored: status {status}"
    if vary_names(headers.get("vary", "")) is None:
        return "not stored: Vary: *"
    if "content-range" in headers:
        return "not stored: partial content"
    if content_length is not None and content_length > settings.max_object_size:
        return f"not stored: larger than cache_max_object_size ({content_length} bytes)"
    return None


def unkeyed_credentials(request: RequestView) -> tuple[str, ...]:
    """Names of request fields that look like credentials but are not among CREDENTIAL_HEADERS."""
    return tuple(
        name
        for name in request.headers
        if name not in CREDENTIAL_HEADERS and name not in _NOT_CREDENTIALS and _CREDENTIAL_LIKE.search(name)
    )


def private_storability(request: RequestView, response_headers: Mapping[str, str]) -> str | None:
    """None when storing is safe, else why not: a private answer to a request whose credentials the key does
    not hold would be served to clients without them. (Keyed credentials keep private answers to
    themselves, so there Cache-Control is ignored like everywhere else.)"""
    directives = {
        d.split("=", 1)[0].strip() for d in response_headers.get("cache-control", "").lower().split(",")
    }
    if "private" not in directives:
        return None
    unkeyed = unkeyed_credentials(request)
    if not unkeyed:
        return None
    return f"not stored: private answer to a request with {unkeyed[0]}"


def is_immutable(url: str, settings: Settings) -> bool:
    return settings.immutable_path.match(urlsplit(url).path) is not None


def age(entry: Entry, now: float) -> int:
    return max(0, int(now - entry.stored_at))


def is_fresh(entry: Entry, now: float, settings: Settings) -> bool:
    if entry.invalidated:
        return False
    if entry.status in NEGATIVE_STATUS:
        return age(entry, now) < settings.negative_ttl
    if is_immutable(entry.url, settings):
        return True
    return age(entry, now) < settings.ttl


def decide(
    request: RequestView,
    entry: Entry | None,
    now: float,
    settings: Settings,
    host_backing_off: bool,
    salt: bytes = b"",
) -> Decision:
    """What to do with a cacheable request, given what the store holds for its key (salt: the store's, which
    the entry's Vary digests were made with)."""
    if entry is not None and not vary_matches(entry, request, salt):
        entry = None
    if entry is None:
        if settings.offline:
            return Decision(Action.OFFLINE_MISS, Outcome.MISS, "offline: not in cache")
        return Decision(Action.FETCH, Outcome.MISS, "miss")
    if is_fresh(entry, now, settings):
        return Decision(Action.SERVE, Outcome.HIT, "fresh" if settings.offline is False else "fresh, offline")
    if settings.offline:
        return Decision(Action.SERVE, Outcome.STALE, "stale: offline mode")
    if host_backing_off and settings.stale_on_error:
        return Decision(Action.SERVE, Outcome.STALE, "stale: upstream failing recently", probe=True)
    return Decision(Action.FETCH, Outcome.REVALIDATED, "stale: revalidating")


def on_failure(entry: Entry | None, failure: str, settings: Settings) -> Decision | None:
    """After the upstream failed: the stale answer to serve, or None when the client gets the error."""
    if entry is not None and settings.stale_on_error:
        return Decision(Action.SERVE, Outcome.STALE, f"stale: upstream {failure}")
    return None


def conditional_headers(entry: Entry | None) -> dict[str, str]:
    """Validators to revalidate a stale entry with (RFC 9111 4.3.1)."""
    if entry is None or entry.status not in STORABLE_STATUS:
        return {}
    headers = {}
    if entry.etag:
        headers["if-none-match"] = entry.etag
    if entry.last_modified:
        headers["if-modified-since"] = entry.last_modified
    return headers


def _strip_weak(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def client_has_current(entry: Entry, request: RequestView) -> bool:
    """Whether the client's own conditional request matches the entry, so a 304 answers it (RFC 9110 13.1)."""
    if entry.status not in STORABLE_STATUS:
        return False
    inm = request.header("if-none-match")
    if inm:
        if inm.strip() == "*":
            return True
        etag = entry.etag
        return etag is not None and _strip_weak(etag) in {_strip_weak(t) for t in inm.split(",")}
    ims, lm = request.header("if-modified-since"), entry.last_modified
    if ims and lm:
        try:
            return parsedate_to_datetime(lm) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False


def byte_range(value: str, size: int) -> tuple[int, int] | None | bool:
    """A single Range 'bytes=a-b' as (first, last) inclusive; None to ignore it and send the whole body
    (malformed, other units, several ranges: RFC 9110 14.2 lets us); False when it cannot be satisfied."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if (
        not dash
        or not (first_text.isdigit() or first_text == "")
        or not (last_text.isdigit() or last_text == "")
    ):
        return None
    if first_text == "":
        if last_text == "":
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if first >= size:
        return False
    last = int(last_text) if last_text else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


def if_range_allows(entry: Entry, value: str) -> bool:
    """If-Range (RFC 9110 13.1.5): the range applies only if the validator names this very entry."""
    if not value:
        return True
    value = value.strip()
    if value.startswith('"'):
        return entry.etag is not None and entry.etag.strip() == value
    return entry.last_modified is not None and entry.last_modified.strip() == value


_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:[^=&]*(?:token|key|secret|password|passwd|auth|sig|signature)[^=&]*)=)[^&#]*"
)


def redact(url: str) -> str:
    """A URL fit for a log line: values of query parameters that look like credentials are masked."""
    return _SECRET_PARAM.sub(r"\1***", url)
