"""Cache keys: URL normalisation, the request fields an answer is keyed on (Accept, Vary, a salted
fingerprint of credentials), and URLs fit for logs. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

from cacheaddon import negotiation
from cacheaddon.entry import Entry

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
DEFAULT_PORTS = {"http": 80, "https": 443}
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


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
    return not negotiation.identity_acceptable(negotiation.coding_weights(accept_encoding))


def variant_group(key: str) -> str:
    """The URL and credential owner of a cache key: the keys of one group hold answers to one resource
    for one owner under different Accept and Accept-Encoding values (see negotiation.py)."""
    url, *fields = key.split("\n")
    return "\n".join([url, *(f for f in fields if f.startswith("cred="))])


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


def unkeyed_credentials(request: RequestView) -> tuple[str, ...]:
    """Names of request fields that look like credentials but are not among CREDENTIAL_HEADERS."""
    return tuple(
        name
        for name in request.headers
        if name not in CREDENTIAL_HEADERS and name not in _NOT_CREDENTIALS and _CREDENTIAL_LIKE.search(name)
    )


_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:[^=&]*(?:token|key|secret|password|passwd|auth|sig|signature)[^=&]*)=)[^&#]*"
)


# A log line is one line: control characters (a NUL, a forged line break) are escaped, and an absurdly long
# URL is cut.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LOGGED_LENGTH = 2000


def redact(url: str) -> str:
    """A URL fit for a log line: values of query parameters that look like credentials are masked."""
    masked = _CONTROL.sub(lambda m: f"%{ord(m[0]):02X}", _SECRET_PARAM.sub(r"\1***", url))
    if len(masked) > _LOGGED_LENGTH:
        return f"{masked[:_LOGGED_LENGTH]}...({len(url)} characters)"
    return masked
