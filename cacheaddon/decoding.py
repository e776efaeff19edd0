"""Undoes a Content-Encoding with a cap on the output. Pure, no I/O.

Index documents are decoded to be searched for digests and to have their links rewritten. mitmproxy's own
decoder has no limit, so a 300 KB gzip body could expand to gigabytes in memory (a "gzip bomb"); here the
decoder stops as soon as the output would pass `limit`.
"""

from __future__ import annotations

import zlib

import brotli

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # the backport mitmproxy depends on
    from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]


class TooLarge(ValueError):
    """The decoded body would be larger than the limit."""


def decode(data: bytes, content_encoding: str, limit: int) -> bytes:
    """The body with its content codings undone (last applied, first undone). Raises ValueError when it
    cannot be decoded, TooLarge when the result would exceed `limit` bytes."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    for coding in reversed([c for c in codings if c and c != "identity"]):
        data = _decode_one(data, coding, limit)
    if len(data) > limit:
        raise TooLarge(f"larger than {limit} bytes")
    return data


def _decode_one(data: bytes, coding: str, limit: int) -> bytes:
    try:
        if coding in ("gzip", "x-gzip"):
            return _zlib(data, 16 + zlib.MAX_WBITS, limit)
        if coding == "deflate":
            try:  # RFC 9110 says zlib-wrapped; some servers send raw deflate
                return _zlib(data, zlib.MAX_WBITS, limit)
            except zlib.error:
                return _zlib(data, -zlib.MAX_WBITS, limit)
        if coding == "br":
            return _brotli(data, limit)
        if coding == "zstd":
            return _zstd(data, limit)
    except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as exc:
        raise ValueError(f"invalid {coding} data: {exc}") from None
    raise ValueError(f"unknown content coding {coding!r}")


def _zlib(data: bytes, wbits: int, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while data:  # a gzip body may hold several members, one after another
        d = zlib.decompressobj(wbits)
        out = d.decompress(data, limit + 1 - size)
        size += len(out)
        if size > limit:
            raise TooLarge(f"larger than {limit} bytes")
        parts.append(out)
        if not d.eof:
            raise zlib.error("truncated stream")
        data = d.unused_data if wbits & 16 else b""
    return b"".join(parts)


def _zstd(data: bytes, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while data:  # a zstd body may hold several frames, one after another
        d = zstd.ZstdDecompressor()
        out = d.decompress(data, max_length=limit + 1 - size)
        size += len(out)
        if size > limit:
            raise TooLarge(f"larger than {limit} bytes")
        parts.append(out)
        if not d.eof:
            raise ValueError("truncated zstd data")
        data = d.unused_data
    return b"".join(parts)


def _brotli(data: bytes, limit: int) -> bytes:
    dec = brotli.Decompressor()
    parts: list[bytes] = []
    size, feed = 0, data
    while True:
        out = dec.process(feed, output_buffer_limit=limit + 1 - size)
        feed = b""
        size += len(out)
        if size > limit:
            raise TooLarge(f"larger than {limit} bytes")
        parts.append(out)
        if dec.can_accept_more_data():
            break
    if not dec.is_finished():
        raise ValueError("truncated br data")
    return b"".join(parts)
