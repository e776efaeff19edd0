"""decoding: content codings undone, with a cap that a compression bomb cannot get past."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon import decoding
from cacheaddon.decoding import TooLarge

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]

ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
    "identity": lambda data: data,
}


@given(data=st.binary(max_size=4096), coding=st.sampled_from(sorted(ENCODERS)))
def test_round_trip(data: bytes, coding: str) -> None:
    assert decoding.decode(ENCODERS[coding](data), coding, limit=4096) == data


def test_raw_deflate_and_stacked_codings() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = raw.compress(b"hello") + raw.flush()
    assert decoding.decode(body, "deflate", 100) == b"hello"
    assert decoding.decode(brotli.compress(gzip.compress(b"two")), "gzip, br", 100) == b"two"
    assert decoding.decode(b"plain", "", 100) == b"plain"


def test_several_gzip_members_or_zstd_frames_are_one_body() -> None:
    assert decoding.decode(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 100) == b"abcd"
    assert decoding.decode(zstd.compress(b"ab") + zstd.compress(b"cd"), "zstd", 100) == b"abcd"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "identity"])
def test_a_bomb_stops_at_the_limit(coding: str) -> None:
    bomb = ENCODERS[coding](b"\0" * (64 * 1024 * 1024))  # a few kB that expand to 64 MiB
    assert len(bomb) < 1024 * 1024 or coding == "identity"
    with pytest.raises(TooLarge):
        decoding.decode(bomb, coding, limit=1024 * 1024)
    assert decoding.decode(ENCODERS[coding](b"x" * 1000), coding, limit=1000) == b"x" * 1000


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        (b"not gzip at all", "gzip"),
        (gzip.compress(b"cut short")[:-12], "gzip"),
        (b"\xff\xff", "br"),
        (brotli.compress(b"x" * 1000)[:5], "br"),
        (b"garbage", "zstd"),
        (zstd.compress(b"x" * 1000)[:-3], "zstd"),
        (b"data", "compress"),
    ],
)
def test_undecodable_bodies_raise_value_error(body: bytes, coding: str) -> None:
    with pytest.raises(ValueError):
        decoding.decode(body, coding, limit=1 << 20)
