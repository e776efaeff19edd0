"""Content negotiation over stored answers: Accept parsing (RFC 9110 12.5.1), which stored answers a request
admits and in what order, Accept-Encoding, and the variant group a cache key belongs to."""

from __future__ import annotations

import pytest
from factories import make_entry, view
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon import keys, negotiation
from cacheaddon.entry import Entry
from cacheaddon.negotiation import MediaRange

SALT = b"s" * 32
PIP = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
UV = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
NPM_ABBREVIATED_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
PYPI_JSON = "application/vnd.pypi.simple.v1+json"
PYPI_HTML = "application/vnd.pypi.simple.v1+html"
ABBREVIATED = "application/vnd.npm.install-v1+json"
JSON_TYPES = (PYPI_JSON, "application/json", ABBREVIATED, "application/problem+json")
HTML_TYPES = ("text/html", PYPI_HTML, "application/xhtml+xml")


def stored(content_type: str, *, stored_at: float = 1000.0, status: int = 200, **fields: str) -> Entry:
    headers = (("Content-Type", content_type), *((k.replace("_", "-"), v) for k, v in fields.items()))
    return make_entry(status=status, stored_at=stored_at, headers=headers)


def types_ranked(accept: str, *entries: Entry, accept_encoding: str = "gzip") -> list[tuple[str, bool]]:
    found = negotiation.rank(accept, accept_encoding, [(f"k{i}", e) for i, e in enumerate(entries)])
    return [(c.entry.header("content-type") or "", c.explicit) for c in found]


# parsing


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/html", [MediaRange("text", "html")]),
        ("Text/HTML ;Q=0.5", [MediaRange("text", "html", q=0.5)]),
        ("*/*;q=0", [MediaRange("*", "*", q=0.0)]),
        ("text/*, */*;q=0.1", [MediaRange("text", "*"), MediaRange("*", "*", q=0.1)]),
        # parameters before q belong to the range; after q they are extensions, not part of it
        (
            'text/plain;format="Flowed";q=0.4;ext=1',
            [MediaRange("text", "plain", frozenset({("format", "flowed")}), 0.4)],
        ),
        # a quoted comma does not split the field
        (
            'text/plain;x="a,b", text/html',
            [MediaRange("text", "plain", frozenset({("x", "a,b")})), MediaRange("text", "html")],
        ),
        # invalid elements are left out, the rest kept
        ("text/html;q=2, text/plain;q=abc, application/json", [MediaRange("application", "json")]),
        ("*/json, html, /x, text/, application/json", [MediaRange("application", "json")]),
        # old Java clients: a bare * for */*
        ("text/html, *; q=.2", [MediaRange("text", "html"), MediaRange("*", "*", q=0.2)]),
        ("", []),
        (" , ,", []),
    ],
)
def test_accept_is_parsed_into_media_ranges(accept: str, expected: list[MediaRange]) -> None:
    assert negotiation.parse_accept(accept) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", MediaRange("application", "json")),
        ("Text/HTML; Charset=UTF-8", MediaRange("text", "html", frozenset({("charset", "utf-8")}))),
        ("", None),
        ("json", None),
        ("*/*", None),
        ("text/*", None),
    ],
)
def test_a_content_type_is_parsed_as_a_media_type(content_type: str, expected: MediaRange | None) -> None:
    assert negotiation.parse_media_type(content_type) == expected


# the RFC's own example (RFC 9110 12.5.1)

RFC_ACCEPT = (
    "text/*;q=0.3, text/plain;q=0.7, text/plain;format=flowed, text/plain;format=fixed;q=0.4, */*;q=0.5"
)


@pytest.mark.parametrize(
    ("content_type", "q"),
    [
        ("text/plain;format=flowed", 1.0),
        ("text/plain", 0.7),
        ("text/html", 0.3),
        ("image/jpeg", 0.5),
        ("text/plain;format=fixed", 0.4),
        ("text/html;level=3", 0.3),
    ],
)
def test_the_most_specific_range_decides_the_quality(content_type: str, q: float) -> None:
    media = negotiation.parse_media_type(content_type)
    assert media is not None
    decisive = negotiation.quality(negotiation.parse_accept(RFC_ACCEPT), media)
    assert decisive is not None and decisive.q == q


def test_a_more_specific_refusal_beats_a_wildcard() -> None:
    assert types_ranked("text/*, text/html;q=0", stored("text/html"), stored("text/plain")) == [
        ("text/plain", False)
    ]


def test_a_repeated_type_with_q_0_stays_refused() -> None:
    assert types_ranked("application/json, application/json;q=0", stored("application/json")) == []


# ranking stored answers


def test_uv_is_served_the_json_page_pip_stored_by_an_explicit_match() -> None:
    assert types_ranked(UV, stored(PYPI_JSON)) == [(PYPI_JSON, True)]


def test_pip_prefers_json_to_html_whatever_was_stored_last() -> None:
    html, json_ = stored("text/html; charset=utf-8", stored_at=2000.0), stored(PYPI_JSON, stored_at=1000.0)
    assert types_ranked(PIP, html, json_) == [(PYPI_JSON, True), ("text/html; charset=utf-8", True)]


def test_npm_abbreviated_accept_admits_the_full_document_explicitly() -> None:
    assert types_ranked(NPM_ABBREVIATED_ACCEPT, stored("application/json")) == [("application/json", True)]
    assert types_ranked(NPM_ABBREVIATED_ACCEPT, stored("application/json"), stored(ABBREVIATED)) == [
        (ABBREVIATED, True),
        ("application/json", True),
    ]


def test_npm_full_accept_never_gets_the_abbreviated_document() -> None:
    assert types_ranked("application/json", stored(ABBREVIATED)) == []


def test_html_only_never_gets_json() -> None:
    assert types_ranked("text/html", stored(PYPI_JSON), stored("application/json")) == []


@pytest.mark.parametrize("accept", ["*/*", "", "*/*;q=0.5", "application/*"])
def test_a_wildcard_match_is_not_explicit(accept: str) -> None:
    assert types_ranked(accept, stored("application/json")) == [("application/json", False)]


def test_a_q_tie_goes_to_the_more_specific_range_then_to_the_newest() -> None:
    old_json, new_json = stored("application/json", stored_at=1.0), stored("application/json", stored_at=2.0)
    html = stored("text/html", stored_at=3.0)
    found = negotiation.rank(
        "application/json, */*", "", [("old", old_json), ("html", html), ("new", new_json)]
    )
    assert [c.key for c in found] == ["new", "old", "html"]


def test_a_higher_q_by_wildcard_ranks_first_but_is_not_explicit() -> None:
    assert types_ranked("application/json;q=0.5, */*", stored("application/json"), stored("text/html")) == [
        ("text/html", False),
        ("application/json", True),
    ]


@pytest.mark.parametrize("status", [204, 301, 304, 308, 404, 410, 500])
def test_only_representations_are_negotiated(status: int) -> None:
    assert types_ranked("*/*", stored("application/json", status=status)) == []


def test_an_answer_without_a_media_type_is_never_negotiated() -> None:
    assert negotiation.rank("*/*", "", [("k", make_entry())]) == []
    assert types_ranked("*/*", stored("nonsense")) == []


def test_a_range_with_parameters_needs_them_in_the_content_type() -> None:
    assert types_ranked("text/html;level=1", stored("text/html")) == []
    assert types_ranked("text/html;charset=utf-8", stored("text/html; charset=UTF-8")) == [
        ("text/html; charset=UTF-8", True)
    ]


# content codings


@pytest.mark.parametrize(
    ("accept_encoding", "content_encoding", "acceptable"),
    [
        ("gzip, deflate", "gzip", True),
        ("gzip, deflate", "", True),
        ("gzip, deflate", "br", False),
        ("", "gzip", False),  # no Accept-Encoding: unencoded only (curl without --compressed)
        ("", "", True),
        ("", "identity", True),
        ("x-gzip", "gzip", True),
        ("gzip", "x-gzip", True),
        ("*", "br", True),
        ("*, br;q=0", "br", False),
        ("gzip;q=0", "gzip", False),
        ("gzip, identity;q=0", "", False),
        ("gzip, *;q=0", "", False),
        ("gzip, br", "gzip, br", True),
        ("gzip", "gzip, br", False),
    ],
)
def test_a_content_coding_must_be_one_the_client_accepts(
    accept_encoding: str, content_encoding: str, acceptable: bool
) -> None:
    assert negotiation.coding_acceptable(accept_encoding, content_encoding) is acceptable
    entry = stored("application/json", content_encoding=content_encoding)
    assert bool(negotiation.rank("application/json", accept_encoding, [("k", entry)])) is acceptable


# invariants

_Q = st.sampled_from(["", ";q=1", ";q=0.5", ";q=0.001", ";q=0", ";Q=0.8", " ; q=0.3"])
_SPACE = st.sampled_from(["", " ", "  "])
_OTHERS = ("image/png", "text/plain", "application/xml", "text/css", "application/octet-stream")


def _accept(types: tuple[str, ...]) -> st.SearchStrategy[str]:
    element = st.builds(lambda t, q, s: f"{s}{t}{q}", st.sampled_from(types), _Q, _SPACE)
    return st.lists(element, min_size=1, max_size=6).map(",".join)


def _stored(types: tuple[str, ...]) -> st.SearchStrategy[list[tuple[str, Entry]]]:
    entry = st.builds(
        lambda t, at, params: stored(t + params, stored_at=at),
        st.sampled_from(types),
        st.floats(0, 1e9),
        st.sampled_from(["", "; charset=utf-8"]),
    )
    return st.lists(entry, max_size=6).map(lambda es: [(f"k{i}", e) for i, e in enumerate(es)])


@given(_accept((*HTML_TYPES, "text/*", *_OTHERS)), _stored((*JSON_TYPES, *HTML_TYPES, *_OTHERS)))
def test_json_is_never_served_for_an_accept_without_json(
    accept: str, variants: list[tuple[str, Entry]]
) -> None:
    for choice in negotiation.rank(accept, "gzip", variants):
        assert "json" not in (choice.entry.header("content-type") or "")


@given(_accept(("application/json", *HTML_TYPES, *_OTHERS)), _stored((ABBREVIATED, *JSON_TYPES)))
def test_the_abbreviated_document_is_never_served_without_its_type_or_a_wildcard(
    accept: str, variants: list[tuple[str, Entry]]
) -> None:
    for choice in negotiation.rank(accept, "gzip", variants):
        assert not (choice.entry.header("content-type") or "").startswith(ABBREVIATED)


@given(
    _accept((*JSON_TYPES, *HTML_TYPES, "*/*", "text/*", "application/*")),
    _stored((*JSON_TYPES, *HTML_TYPES)),
    st.sampled_from(JSON_TYPES + HTML_TYPES),
)
def test_q_0_for_a_type_excludes_it_whatever_else_is_accepted(
    accept: str, variants: list[tuple[str, Entry]], refused: str
) -> None:
    for choice in negotiation.rank(f"{accept}, {refused};q=0", "gzip", variants):
        assert (choice.entry.header("content-type") or "").split(";")[0] != refused


@given(
    _accept((*JSON_TYPES, *HTML_TYPES, "*/*", "text/*", "application/*")),
    _stored((*JSON_TYPES, *HTML_TYPES, *_OTHERS)),
)
def test_every_choice_is_admitted_and_they_come_best_first(
    accept: str, variants: list[tuple[str, Entry]]
) -> None:
    ranges = negotiation.parse_accept(accept)
    found = negotiation.rank(accept, "gzip", variants)
    for choice in found:
        media = negotiation.parse_media_type(choice.entry.header("content-type") or "")
        assert media is not None
        decisive = negotiation.quality(ranges, media)
        assert decisive is not None and decisive.q == choice.q > 0
        assert choice.explicit is (decisive.subtype != "*")
    assert [c.q for c in found] == sorted((c.q for c in found), reverse=True)
    assert len({c.key for c in found}) == len(found)


@given(st.text(max_size=80), st.text(max_size=40), st.text(max_size=40))
def test_no_field_value_makes_negotiation_fail(accept: str, accept_encoding: str, content_type: str) -> None:
    negotiation.rank(accept, accept_encoding, [("k", stored(content_type))])


# variant groups: one URL, one credential owner

_VALUES = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)


@given(_VALUES, _VALUES, _VALUES, _VALUES)
def test_every_accept_and_coding_of_a_url_falls_in_one_group(a1: str, e1: str, a2: str, e2: str) -> None:
    k1 = keys.cache_keys(view(accept=a1, accept_encoding=e1), SALT)
    k2 = keys.cache_keys(view(accept=a2, accept_encoding=e2), SALT)
    groups = {keys.variant_group(k) for k in (k1.shared, k1.coded, k2.shared, k2.coded)}
    assert groups == {keys.normalize_url("https", "pypi.org", 443, "/simple/requests/")}


@given(_VALUES, _VALUES.filter(bool), _VALUES.filter(bool))
def test_credential_owners_and_urls_have_groups_of_their_own(accept: str, secret1: str, secret2: str) -> None:
    anonymous = keys.variant_group(keys.cache_key(view(accept=accept), SALT))
    owner1 = keys.variant_group(keys.cache_key(view(accept=accept, authorization=secret1), SALT))
    owner2 = keys.variant_group(keys.cache_key(view(accept="*/*", authorization=secret2), SALT))
    other_url = keys.variant_group(keys.cache_key(view("https://pypi.org/simple/six/", accept=accept), SALT))
    assert len({anonymous, owner1, other_url}) == 3
    assert (owner1 == owner2) is (secret1 == secret2)
