"""Conditional and partial requests: our validators, the client's own, byte ranges and If-Range."""

from __future__ import annotations

import pytest
from factories import make_entry, view
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon import conditional
from cacheaddon.entry import Entry

# validators

ETAG = ("ETag", '"abc"')
LAST_MODIFIED = ("Last-Modified", "Wed, 01 May 2024 10:00:00 GMT")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (None, {}),
        (make_entry(), {}),
        (make_entry(headers=(ETAG,)), {"if-none-match": '"abc"'}),
        (make_entry(headers=(("etag", 'W/"abc"'),)), {"if-none-match": 'W/"abc"'}),
        (make_entry(headers=(LAST_MODIFIED,)), {"if-modified-since": LAST_MODIFIED[1]}),
        (
            make_entry(headers=(ETAG, LAST_MODIFIED)),
            {"if-none-match": '"abc"', "if-modified-since": LAST_MODIFIED[1]},
        ),
        (make_entry(status=301, headers=(ETAG,)), {"if-none-match": '"abc"'}),
        (make_entry(status=404, headers=(ETAG, LAST_MODIFIED)), {}),
    ],
)
def test_conditional_headers(entry: Entry | None, expected: dict[str, str]) -> None:
    assert conditional.conditional_headers(entry) == expected


@pytest.mark.parametrize(
    ("entry_headers", "request_headers", "current"),
    [
        ((ETAG,), {}, False),
        ((ETAG,), {"if_none_match": '"abc"'}, True),
        ((ETAG,), {"if_none_match": '"x", "abc"'}, True),
        ((ETAG,), {"if_none_match": '"x","y"'}, False),
        ((ETAG,), {"if_none_match": 'W/"abc"'}, True),
        ((("ETag", 'W/"abc"'),), {"if_none_match": '"abc"'}, True),
        ((ETAG,), {"if_none_match": "*"}, True),
        ((ETAG,), {"if_none_match": " * "}, True),
        ((), {"if_none_match": "*"}, True),
        ((), {"if_none_match": '"abc"'}, False),
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.1.3)
        ((ETAG, LAST_MODIFIED), {"if_none_match": '"x"', "if_modified_since": LAST_MODIFIED[1]}, False),
        ((LAST_MODIFIED,), {"if_modified_since": LAST_MODIFIED[1]}, True),
        ((LAST_MODIFIED,), {"if_modified_since": "Thu, 02 May 2024 10:00:00 GMT"}, True),
        ((LAST_MODIFIED,), {"if_modified_since": "Tue, 30 Apr 2024 10:00:00 GMT"}, False),
        ((LAST_MODIFIED,), {"if_modified_since": "yesterday"}, False),
        ((LAST_MODIFIED,), {"if_modified_since": "Thu, 02 May 2024 10:00:00 -0000"}, False),
        ((), {"if_modified_since": "Thu, 02 May 2024 10:00:00 GMT"}, False),
    ],
)
def test_client_has_current(
    entry_headers: tuple[tuple[str, str], ...], request_headers: dict[str, str], current: bool
) -> None:
    entry = make_entry(headers=entry_headers)
    assert conditional.client_has_current(entry, view(**request_headers)) is current


@pytest.mark.parametrize("status", [404, 410])
def test_a_negative_entry_never_answers_a_conditional_request(status: int) -> None:
    entry = make_entry(status=status, headers=(ETAG,))
    assert not conditional.client_has_current(entry, view(if_none_match="*"))


# byte ranges


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=0-0", 1000, (0, 0)),
        ("BYTES=10-19", 1000, (10, 19)),
        (" bytes = 10-19 ", 1000, (10, 19)),
        ("bytes=0-", 1000, (0, 999)),
        ("bytes=999-", 1000, (999, 999)),
        ("bytes=500-5000", 1000, (500, 999)),
        ("bytes=-100", 1000, (900, 999)),
        ("bytes=-2000", 1000, (0, 999)),
        # unsatisfiable: 416
        ("bytes=1000-2000", 1000, False),
        ("bytes=-0", 1000, False),
        ("bytes=-5", 0, False),
        ("bytes=1000-", 1000, False),
        ("bytes=0-", 0, False),
        # ignored: the whole body is sent (RFC 9110 14.2)
        ("", 1000, None),
        ("items=0-1", 1000, None),
        ("bytes=0-1,5-6", 1000, None),
        ("bytes=5-2", 1000, None),
        ("bytes=abc", 1000, None),
        ("bytes=a-b", 1000, None),
        ("bytes=-", 1000, None),
        ("bytes=+1-2", 1000, None),
        ("bytes=1--2", 1000, None),
    ],
)
def test_byte_range(value: str, size: int, expected: tuple[int, int] | bool | None) -> None:
    assert conditional.byte_range(value, size) == expected


@given(
    st.one_of(
        st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 5000), st.integers(0, 5000)),
        st.builds(lambda a: f"bytes={a}-", st.integers(0, 5000)),
        st.builds(lambda b: f"bytes=-{b}", st.integers(0, 5000)),
        st.text(max_size=20),
    ),
    st.integers(0, 3000),
)
def test_a_satisfiable_range_lies_within_the_body(value: str, size: int) -> None:
    span = conditional.byte_range(value, size)
    if isinstance(span, tuple):
        first, last = span
        assert 0 <= first <= last < size


LM = "Wed, 01 May 2024 10:00:00 GMT"


@pytest.mark.parametrize(
    ("entry_headers", "if_range", "allowed"),
    [
        ((ETAG,), "", True),
        ((ETAG,), '"abc"', True),
        ((ETAG,), ' "abc" ', True),
        ((ETAG,), '"abd"', False),
        # If-Range uses the strong comparison: a weak tag never matches
        ((ETAG,), 'W/"abc"', False),
        ((("ETag", 'W/"abc"'),), '"abc"', False),
        ((("ETag", 'W/"abc"'),), 'W/"abc"', False),
        ((), '"abc"', False),
        (((("Last-Modified", LM)),), LM, True),
        (((("Last-Modified", LM)),), "Thu, 02 May 2024 10:00:00 GMT", False),
        ((ETAG,), LM, False),
    ],
)
def test_if_range_allows(entry_headers: tuple[tuple[str, str], ...], if_range: str, allowed: bool) -> None:
    assert conditional.if_range_allows(make_entry(headers=entry_headers), if_range) is allowed