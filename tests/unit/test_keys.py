"""Cache keys: URL normalisation, keyed fields, shared keys of unencoded answers, credentials and Vary."""

from __future__ import annotations

import string

import pytest
from factories import make_entry, view
from hypothesis import assume, given
from hypothesis import strategies as st

from cacheaddon import keys
from cacheaddon.entry import Entry

URL = "https://pypi.org/simple/requests/"


# normalize_url


@pytest.mark.parametrize(
    ("scheme", "host", "port", "path", "expected"),
    [
        ("https", "pypi.org", 443, "/simple/", "https://pypi.org/simple/"),
        ("HTTPS", "PyPI.ORG", 443, "/simple/", "https://pypi.org/simple/"),
        ("https", "pypi.org.", 443, "/simple/", "https://pypi.org/simple/"),
        ("https", "pypi.org", 8443, "/simple/", "https://pypi.org:8443/simple/"),
        ("http", "pypi.org", 80, "/x", "http://pypi.org/x"),
        ("http", "pypi.org", 443, "/x", "http://pypi.org:443/x"),
        ("https", "pypi.org", 80, "/x", "https://pypi.org:80/x"),
        ("https", "::1", 443, "/x", "https://[::1]/x"),
        ("https", "::1", 8443, "/x", "https://[::1]:8443/x"),
        ("https", "[::1]", 8443, "/x", "https://[::1]:8443/x"),
        ("https", "pypi.org", 443, "", "https://pypi.org/"),
        ("https", "pypi.org", 443, "simple/", "https://pypi.org/simple/"),
        # unreserved characters decoded, whatever the hex case
        ("https", "h", 443, "/%7e%7E%41%2d%2e%5f%30", "https://h/~~A-._0"),
        # reserved characters stay escaped, hex upper-cased: %2F is not a path separator
        ("https", "h", 443, "/@scope%2fpkg", "https://h/@scope%2Fpkg"),
        ("https", "h", 443, "/@scope%2Fpkg", "https://h/@scope%2Fpkg"),
        ("https", "h", 443, "/a%3ab%20c", "https://h/a%3Ab%20c"),
        # one pass only: %25 is '%', it must not start a new escape
        ("https", "h", 443, "/%2541", "https://h/%2541"),
        ("https", "h", 443, "/a%zz", "https://h/a%zz"),
        # the query is kept, in order, with its escapes canonical too
        ("https", "h", 443, "/x?b=2&a=1", "https://h/x?b=2&a=1"),
        ("https", "h", 443, "/x?q=%7e%2f", "https://h/x?q=~%2F"),
        ("https", "h", 443, "/x?", "https://h/x?"),
        ("https", "h", 443, "/x#frag", "https://h/x"),
    ],
)
def test_normalize_url(scheme: str, host: str, port: int, path: str, expected: str) -> None:
    assert keys.normalize_url(scheme, host, port, path) == expected


_UNRESERVED = string.ascii_letters + string.digits + "-._~"
plain_paths = st.text(alphabet=_UNRESERVED + "/", max_size=40).map(lambda p: "/" + p)
hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True
)
schemes = st.sampled_from(["http", "https"])


@st.composite
def escaped(draw: st.DrawFn, path: str) -> str:
    """The same path with some unreserved characters percent-escaped, in either hex case."""
    out = []
    for char in path:
        if char != "/" and draw(st.booleans()):
            hexed = f"{ord(char):02x}"
            out.append("%" + (hexed.upper() if draw(st.booleans()) else hexed))
        else:
            out.append(char)
    return "".join(out)


@given(st.data(), schemes, hostnames, plain_paths)
def test_escaping_unreserved_characters_does_not_change_the_url(
    data: st.DataObject, scheme: str, host: str, path: str
) -> None:
    variant = data.draw(escaped(path))
    port = keys.DEFAULT_PORTS[scheme]
    assert keys.normalize_url(scheme, host, port, variant) == keys.normalize_url(scheme, host, port, path)


@given(schemes, hostnames, st.text(max_size=40), st.integers(1, 65535))
def test_normalize_url_is_idempotent(scheme: str, host: str, path: str, port: int) -> None:
    once = keys.normalize_url(scheme, host, port, path)
    prefix = f"{scheme}://{host}" + ("" if keys.DEFAULT_PORTS[scheme] == port else f":{port}")
    assert once.startswith(prefix)
    assert keys.normalize_url(scheme, host, port, once[len(prefix) :]) == once


# cache_key

SALT = b"s" * 32
# Values as registries send them: tokens without spaces, comma-separated (already in normal form).
header_values = st.lists(
    st.from_regex(r"[a-z0-9*/.+;=_-]{1,12}", fullmatch=True), min_size=1, max_size=3
).map(",".join)
# Characters a header field value may hold (RFC 9110 5.5: VCHAR, SP, HTAB).
field_text = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)] + ["\t"], min_size=1, max_size=40)
credentials = st.sampled_from(keys.CREDENTIAL_HEADERS)


def key_of(scheme: str, host: str, port: int, path: str, salt: bytes = SALT, **headers: str) -> str:
    return keys.cache_key(view(keys.normalize_url(scheme, host, port, path), **headers), salt)


@given(st.data(), schemes, hostnames, plain_paths)
def test_host_case_and_default_port_do_not_change_the_key(
    data: st.DataObject, scheme: str, host: str, path: str
) -> None:
    mixed = "".join(c.upper() if data.draw(st.booleans()) else c for c in host)
    port = keys.DEFAULT_PORTS[scheme]
    assert key_of(scheme, mixed, port, path, accept="*/*") == key_of(scheme, host, port, path, accept="*/*")


@given(schemes, hostnames, plain_paths, st.integers(1, 65535))
def test_a_non_default_port_changes_the_key(scheme: str, host: str, path: str, port: int) -> None:
    assume(port != keys.DEFAULT_PORTS[scheme])
    assert key_of(scheme, host, port, path) != key_of(scheme, host, keys.DEFAULT_PORTS[scheme], path)


@given(hostnames, plain_paths, hostnames, plain_paths)
def test_a_different_url_gives_a_different_key(host1: str, path1: str, host2: str, path2: str) -> None:
    assume((host1, path1) != (host2, path2))
    assert key_of("https", host1, 443, path1) != key_of("https", host2, 443, path2)


@given(st.sampled_from(keys.KEYED_HEADERS), header_values, header_values)
def test_a_different_accept_value_gives_a_different_key(name: str, value1: str, value2: str) -> None:
    assume(value1 != value2)
    assert keys.cache_key(view(**{name: value1}), SALT) != keys.cache_key(view(**{name: value2}), SALT)


@given(st.sampled_from(keys.KEYED_HEADERS), header_values)
def test_an_accept_value_differs_from_none(name: str, value: str) -> None:
    assert keys.cache_key(view(**{name: value}), SALT) != keys.cache_key(view(), SALT)


@pytest.mark.parametrize(
    ("value1", "value2"),
    [
        ("application/json", "APPLICATION/JSON"),
        ("gzip, deflate", "gzip,deflate"),
        (" gzip ,  br ", "gzip,br"),
    ],
)
def test_keyed_values_are_compared_in_normal_form(value1: str, value2: str) -> None:
    for name in keys.KEYED_HEADERS:
        assert keys.cache_key(view(**{name: value1}), SALT) == keys.cache_key(
            view(**{name: value2}), SALT
        )


def test_the_key_is_injective_over_keyed_values() -> None:
    a = view(accept="a accept-encoding=b", accept_encoding="")
    b = view(accept="a", accept_encoding="b accept-encoding=")
    assert keys.cache_key(a, SALT) != keys.cache_key(b, SALT)


@given(credentials, field_text, field_text)
def test_a_different_credential_gives_a_different_key(name: str, secret1: str, secret2: str) -> None:
    assume(secret1 != secret2)
    assert keys.cache_key(view(**{name: secret1}), SALT) != keys.cache_key(view(**{name: secret2}), SALT)


@given(credentials, field_text)
def test_a_credential_gives_a_different_key_than_none(name: str, secret: str) -> None:
    assert keys.cache_key(view(**{name: secret}), SALT) != keys.cache_key(view(), SALT)


@given(credentials, credentials, field_text)
def test_the_same_value_in_another_credential_header_gives_another_key(
    name1: str, name2: str, secret: str
) -> None:
    assume(name1 != name2)
    assert keys.cache_key(view(**{name1: secret}), SALT) != keys.cache_key(view(**{name2: secret}), SALT)


@given(credentials, field_text.filter(lambda s: len(s) >= 12))
def test_the_credential_never_appears_in_clear_in_the_key(name: str, secret: str) -> None:
    anonymous = keys.cache_key(view(accept="application/json"), SALT)
    assume(secret not in anonymous and secret.lower() not in anonymous)
    key = keys.cache_key(view(accept="application/json", **{name: secret}), SALT)
    assert secret not in key
    assert secret.lower() not in key


@given(credentials, field_text, st.binary(min_size=1, max_size=32), st.binary(min_size=1, max_size=32))
def test_the_salt_changes_the_fingerprint(name: str, secret: str, salt1: bytes, salt2: bytes) -> None:
    assume(salt1 != salt2)
    headers = {name: secret}
    assert keys.credential_fingerprint(headers, salt1) != keys.credential_fingerprint(headers, salt2)
    assert keys.cache_key(view(**headers), salt1) != keys.cache_key(view(**headers), salt2)


@given(header_values, st.binary(min_size=1, max_size=32), st.binary(min_size=1, max_size=32))
def test_without_credentials_the_salt_does_not_matter(accept: str, salt1: bytes, salt2: bytes) -> None:
    assert keys.cache_key(view(accept=accept), salt1) == keys.cache_key(view(accept=accept), salt2)


# shared keys: an unencoded answer suits every client


@given(header_values, header_values, header_values)
def test_clients_with_other_accept_encodings_share_the_key_of_an_unencoded_answer(
    accept: str, coding1: str, coding2: str
) -> None:
    k1 = keys.cache_keys(view(accept=accept, accept_encoding=coding1), SALT)
    k2 = keys.cache_keys(view(accept=accept, accept_encoding=coding2), SALT)
    assume(k1.identity_ok and k2.identity_ok)
    assert k1.for_response(None) == k2.for_response("identity") == k1.shared == k2.shared
    assert k1.shared != k1.coded
    if keys.cache_key(view(accept_encoding=coding1), SALT) != keys.cache_key(
        view(accept_encoding=coding2), SALT
    ):
        assert k1.for_response("gzip") != k2.for_response("gzip")


@given(header_values, header_values, header_values)
def test_the_shared_key_still_tells_accept_variants_apart(coding: str, accept1: str, accept2: str) -> None:
    assume(keys.cache_key(view(accept=accept1), SALT) != keys.cache_key(view(accept=accept2), SALT))
    assert (
        keys.cache_keys(view(accept=accept1, accept_encoding=coding), SALT).shared
        != keys.cache_keys(view(accept=accept2, accept_encoding=coding), SALT).shared
    )


@given(credentials, field_text, field_text)
def test_the_shared_key_still_tells_credentials_apart(name: str, secret1: str, secret2: str) -> None:
    assume(secret1 != secret2)
    k1 = keys.cache_keys(view(**{name: secret1}), SALT)
    k2 = keys.cache_keys(view(**{name: secret2}), SALT)
    assert k1.shared != k2.shared and k1.shared != keys.cache_keys(view(), SALT).shared


@pytest.mark.parametrize(
    ("accept_encoding", "identity_ok"),
    [
        ("gzip, deflate", True),
        ("", True),
        ("gzip;q=1.0, identity; q=0.5, *;q=0", True),  # identity is listed, so * does not refuse it
        ("gzip, identity;q=0", False),
        ("gzip, Identity; Q=0.0", False),
        ("gzip, *;q=0", False),
    ],
)
def test_a_client_that_refuses_identity_only_gets_encoded_answers(
    accept_encoding: str, identity_ok: bool
) -> None:
    found = keys.cache_keys(view(accept_encoding=accept_encoding), SALT)
    assert found.identity_ok is identity_ok
    assert found.lookup_order() == ((found.shared, found.coded) if identity_ok else (found.coded,))
    assert found.for_response(None) == (found.shared if identity_ok else found.coded)
    assert found.for_response("gzip") == found.coded


def test_salted_vary_digests() -> None:
    assert keys.vary_digest("tok", b"salt1") != keys.vary_digest("tok", b"salt2")
    assert keys.vary_digest("tok", b"salt1") != keys.vary_digest("tok")
    entry = make_entry(vary=())
    recorded = keys.vary_values(("x-token",), view(x_token="tok"), b"s")
    salted = Entry(**{**entry.__dict__, "vary": recorded})
    assert keys.vary_matches(salted, view(x_token="tok"), b"s")
    assert not keys.vary_matches(salted, view(x_token="tok"), b"other")
    assert not keys.vary_matches(salted, view(x_token="tok2"), b"s")


def test_an_empty_credential_counts_as_none() -> None:
    assert keys.credential_fingerprint({"authorization": ""}, SALT) == ""
    assert keys.cache_key(view(authorization=""), SALT) == keys.cache_key(view(), SALT)


# Vary


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        ("", ()),
        ("Accept-Encoding", ()),
        ("Accept, Accept-Encoding", ()),
        ("Accept, User-Agent", ("user-agent",)),
        ("User-Agent, user-agent ,X-Foo", ("user-agent", "x-foo")),
        (" , ,", ()),
        ("*", None),
        ("Accept, *", None),
        ("x-foo,*", None),
    ],
)
def test_vary_names(vary: str, expected: tuple[str, ...] | None) -> None:
    assert keys.vary_names(vary) == expected


@pytest.mark.parametrize(
    ("stored", "headers", "expected"),
    [
        ((), {}, True),
        ((), {"user_agent": "pip/24"}, True),
        ((("user-agent", "pip/24"),), {"user_agent": "pip/24"}, True),
        # compared exactly (but for runs of white space): a value may be a case-sensitive token
        ((("user-agent", "pip/24"),), {"user_agent": "PIP/24"}, False),
        ((("user-agent", "pip/24 x"),), {"user_agent": " pip/24   x "}, True),
        ((("user-agent", "pip/24"),), {"user_agent": "pip/23"}, False),
        ((("user-agent", "pip/24"),), {}, False),
        ((("x-foo", ""),), {}, True),
        ((("x-foo", ""),), {"x_foo": "1"}, False),
        ((("x-a", "1"), ("x-b", "2")), {"x_a": "1", "x_b": "2"}, True),
        ((("x-a", "1"), ("x-b", "2")), {"x_a": "1", "x_b": "3"}, False),
    ],
)
def test_vary_matches(stored: tuple[tuple[str, str], ...], headers: dict[str, str], expected: bool) -> None:
    assert keys.vary_matches(make_entry(vary=stored), view(**headers)) is expected


def test_vary_values_record_digests_of_what_the_request_sent() -> None:
    request = view(user_agent="pip/24.0", x_foo="A, b")
    recorded = keys.vary_values(("user-agent", "x-foo", "x-absent"), request)
    assert recorded == (
        ("user-agent", keys.vary_digest("pip/24.0")),
        ("x-foo", keys.vary_digest("A, b")),
        ("x-absent", keys.vary_digest("")),
    )
    assert all("pip" not in value and "A" not in value for _, value in recorded)
    assert len({value for _, value in recorded}) == 3


def test_vary_on_a_credential_does_not_record_it_in_clear() -> None:
    secret = "npm_Abcdefghijklmnop123456"
    request = view(authorization=f"Bearer {secret}", cookie=f"session={secret}")
    names = keys.vary_names("Authorization, Cookie") or ()
    recorded = repr(keys.vary_values(names, request))
    assert secret.lower() not in recorded.lower()
