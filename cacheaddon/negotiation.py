"""Content negotiation over stored answers (RFC 9110 12.5.1 and 12.5.3): which answers stored for a URL
under other Accept values a request admits, best first. pip and uv ask for PyPI's JSON index with different
Accept values, npm asks for its abbreviated document accepting the full one: each may be served what another
client cached. Pure functions, no I/O."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cacheaddon.entry import Entry

# Representations of the resource; a redirect or a 404 is not one to pick by Content-Type.
REPRESENTATIONS = frozenset({200, 203})
# Splits a field on a separator outside quoted strings (a parameter value may hold "," or ";").
_QUOTED = r'"(?:[^"\\]|\\.)*"?'
_ELEMENTS = re.compile(rf'(?:[^,"]|{_QUOTED})+')
_PARAMS = re.compile(rf'(?:[^;"]|{_QUOTED})+')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
# RFC 9110 8.4.1: recipients treat these as their modern names.
_CODING_ALIASES = {"x-gzip": "gzip", "x-compress": "compress"}


@dataclass(frozen=True)
class MediaRange:
    """One element of Accept (type and subtype may be "*"), or a Content-Type (q unused)."""

    type: str
    subtype: str
    params: frozenset[tuple[str, str]] = frozenset()
    q: float = 1.0

    @property
    def precedence(self) -> int:
        """RFC 9110 12.5.1: a more specific range overrides a less specific one for the types it matches."""
        if self.type == "*":
            return 0
        if self.subtype == "*":
            return 1
        return 2 + len(self.params)

    def matches(self, media: MediaRange) -> bool:
        if self.type != "*" and self.type != media.type:
            return False
        if self.subtype != "*" and self.subtype != media.subtype:
            return False
        return self.params <= media.params


ANY = MediaRange("*", "*")


@dataclass(frozen=True)
class Choice:
    """A stored answer the request admits."""

    key: str
    entry: Entry
    q: float
    # Admitted by a range naming its type and subtype, not by a wildcard: the client said it wants exactly
    # this type, so serving it never changes what the client can handle.
    explicit: bool


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _weight(value: str) -> float | None:
    """A q-value, or None when it is not one (the element is then ignored, as invalid)."""
    try:
        q = float(value)
    except ValueError:
        return None
    return q if math.isfinite(q) and 0 <= q <= 1 else None


def _element(text: str) -> tuple[str, list[tuple[str, str]]]:
    """'type/subtype;a=b;q=0.5' -> ('type/subtype', [('a', 'b'), ('q', '0.5')]), names and values lower."""
    first, *rest = _PARAMS.findall(text) or [""]
    params = []
    for param in rest:
        name, sep, value = param.partition("=")
        if sep and name.strip():
            params.append((name.strip().lower(), _unquote(value).lower()))
    return first.strip().lower(), params


def _media(spec: str, params: list[tuple[str, str]], q: float) -> MediaRange | None:
    if spec == "*":  # old Java clients send a bare "*" for "*/*"
        spec = "*/*"
    type_, sep, subtype = spec.partition("/")
    if not sep or not _TOKEN.fullmatch(type_) or not _TOKEN.fullmatch(subtype):
        return None
    if type_ == "*" and subtype != "*":
        return None
    return MediaRange(type_, subtype, frozenset(params), q)


def parse_accept(accept: str) -> list[MediaRange]:
    """The media ranges of an Accept field; invalid elements are left out. Parameters after q are accept
    extensions, not part of the range."""
    ranges = []
    for text in _ELEMENTS.findall(accept):
        spec, params = _element(text)
        names = [name for name, _ in params]
        cut = names.index("q") if "q" in names else len(params)
        q = _weight(params[cut][1]) if cut < len(params) else 1.0
        media = None if q is None else _media(spec, params[:cut], q)
        if media is not None:
            ranges.append(media)
    return ranges


def parse_media_type(content_type: str) -> MediaRange | None:
    """A Content-Type as a MediaRange with its parameters, or None when it is not a media type."""
    spec, params = _element(content_type)
    media = _media(spec, params, 1.0)
    return None if media is None or "*" in (media.type, media.subtype) else media


def quality(ranges: list[MediaRange], media: MediaRange) -> MediaRange | None:
    """The range that decides the q-value of `media`: the most specific one matching it (among equally
    specific ones, the lowest q: a refusal is not undone by repeating the type); None when none matches."""
    matching = [r for r in ranges if r.matches(media)]
    return max(matching, key=lambda r: (r.precedence, -r.q), default=None)


def coding_weights(accept_encoding: str) -> dict[str, float]:
    """Accept-Encoding as coding -> q (lower-case, aliases resolved); invalid elements are left out."""
    weights = {}
    for text in _ELEMENTS.findall(accept_encoding):
        coding, params = _element(text)
        q = next((_weight(value) for name, value in params if name == "q"), 1.0)
        if coding and q is not None:
            weights[_CODING_ALIASES.get(coding, coding)] = q
    return weights


def identity_acceptable(weights: dict[str, float]) -> bool:
    """RFC 9110 12.5.3: unencoded is acceptable unless identity;q=0, or *;q=0 without identity listed."""
    return weights.get("identity", weights.get("*", 1.0)) > 0


def coding_acceptable(accept_encoding: str, content_encoding: str) -> bool:
    """Whether a body with this Content-Encoding suits a client that sent this Accept-Encoding. A client
    that sent none gets only unencoded bodies: RFC 9110 allows it any coding, but curl without --compressed
    (and many scripts) would save the encoded bytes."""
    weights = coding_weights(accept_encoding)
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [_CODING_ALIASES.get(c, c) for c in codings if c != "identity"]
    if not codings:
        return identity_acceptable(weights)
    return all(weights.get(c, weights.get("*", 0.0)) > 0 for c in codings)


def describe(entry: Entry) -> str:
    """The stored answer's media type, for X-Cache-Detail."""
    media = parse_media_type(entry.header("content-type") or "")
    return "an unknown type" if media is None else f"{media.type}/{media.subtype}"


def rank(accept: str, accept_encoding: str, stored: Iterable[tuple[str, Entry]]) -> list[Choice]:
    """The stored answers (key, entry) that a request with this Accept and Accept-Encoding admits: a
    representation (200, 203) whose Content-Type a range admits with q > 0 and whose Content-Encoding the
    client can decode. Best first: highest q, then the more specific range (type/subtype before type/* before
    */*), then the newest. An empty or unusable Accept admits any type (RFC 9110 12.5.1), by wildcard."""
    ranges = parse_accept(accept) or [ANY]
    ranked = []
    for key, entry in stored:
        media = parse_media_type(entry.header("content-type") or "")
        if entry.status not in REPRESENTATIONS or media is None:
            continue
        decisive = quality(ranges, media)
        if decisive is None or decisive.q <= 0:
            continue
        if not coding_acceptable(accept_encoding, entry.header("content-encoding") or ""):
            continue
        ranked.append((decisive.q, decisive.precedence, entry.stored_at, key, entry))
    ranked.sort(key=lambda r: r[:3], reverse=True)
    return [Choice(key, entry, q, precedence >= 2) for q, precedence, _, key, entry in ranked]
