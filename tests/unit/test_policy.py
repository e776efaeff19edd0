"""The pure decision core: URL normalisation, cache keys, cacheability, freshness and decide()."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cacheaddon import policy, settings
from cacheaddon.entry import Entry
from cacheaddon.policy import Action, Decision, Outcome, RequestView


def make_settings(**overrides: Any) -> settings.Settings:
    return settings.from_options({**settings.defaults(), **overrides}, env={"HOME": "/nonexistent"})


SETTINGS = make_settings(cache_ttl=60, cache_negative_ttl=10)
OFFLINE = make_settings(cache_ttl=60, cache_negative_ttl=10, cache_offline=True)
NO_STALE = make_settings(cache_ttl=60, cache_negative_ttl=10, cache_stale_on_error=False)

URL = "https://pypi.org/simple/requests/"
WHEEL_URL = "https://files.pythonhosted.org/packages/ab/cd/requests-2.32.0-py3-none-any.whl"


def make_entry(
    url: str = URL,
    status: int = 200,
    stored_at: float = 1000.0,
    headers: tuple[tuple[str, str], ...] = (),
    vary: tuple[tuple[str, str], ...] = (),
) -> Entry:
    # vary is given in clear for readability; the record holds digests, as vary_values() makes them.
    hidden = tuple((name, policy.vary_digest(value)) for name, value in vary)
    return Entry(url, status, "OK", headers, stored_at, 3, "0" * 64, hidden)


def view(url: str = URL, method: str = "GET", **headers: str) -> RequestView:
    return RequestView(method, url, {k.replace("_", "-").lower(): v for k, v in headers.items()})


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
    assert policy.normalize_url(scheme, host, port, path) == expected


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
    port = policy.DEFAULT_PORTS[scheme]
    assert policy.normalize_url(scheme, host, port, variant) == policy.normalize_url(scheme, host, port, path)


@given(schemes, hostnames, st.text(max_size=40), st.integers(1, 65535))
def test_normalize_url_is_idempotent(scheme: str, host: str, path: str, port: int) -> None:
    once = policy.normalize_url(scheme, host, port, path)
    prefix = f"{scheme}://{host}" + ("" if policy.DEFAULT_PORTS[scheme] == port else f":{port}")
    assert once.startswith(prefix)
    assert policy.normalize_url(scheme, host, port, once[len(prefix) :]) == once


# cache_key

SALT = b"s" * 32
# Values as registries send them: tokens without spaces, comma-separated (already in normal form).
header_values = st.lists(
    st.from_regex(r"[a-z0-9*/.+;=_-]{1,12}", fullmatch=True), min_size=1, max_size=3
).map(",".join)
# Characters a header field value may hold (RFC 9110 5.5: VCHAR, SP, HTAB).
field_text = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)] + ["\t"], min_size=1, max_size=40)
credentials = st.sampled_from(policy.CREDENTIAL_HEADERS)


def key_of(scheme: str, host: str, port: int, path: str, salt: bytes = SALT, **headers: str) -> str:
    return policy.cache_key(view(policy.normalize_url(scheme, host, port, path), **headers), salt)


@given(st.data(), schemes, hostnames, plain_paths)
def test_host_case_and_default_port_do_not_change_the_key(
    data: st.DataObject, scheme: str, host: str, path: str
) -> None:
    mixed = "".join(c.upper() if data.draw(st.booleans()) else c for c in host)
    port = policy.DEFAULT_PORTS[scheme]
    assert key_of(scheme, mixed, port, path, accept="*/*") == key_of(scheme, host, port, path, accept="*/*")


@given(schemes, hostnames, plain_paths, st.integers(1, 65535))
def test_a_non_default_port_changes_the_key(scheme: str, host: str, path: str, port: int) -> None:
    assume(port != policy.DEFAULT_PORTS[scheme])
    assert key_of(scheme, host, port, path) != key_of(scheme, host, policy.DEFAULT_PORTS[scheme], path)


@given(hostnames, plain_paths, hostnames, plain_paths)
def test_a_different_url_gives_a_different_key(host1: str, path1: str, host2: str, path2: str) -> None:
    assume((host1, path1) != (host2, path2))
    assert key_of("https", host1, 443, path1) != key_of("https", host2, 443, path2)


@given(st.sampled_from(policy.KEYED_HEADERS), header_values, header_values)
def test_a_different_accept_value_gives_a_different_key(name: str, value1: str, value2: str) -> None:
    assume(value1 != value2)
    assert policy.cache_key(view(**{name: value1}), SALT) != policy.cache_key(view(**{name: value2}), SALT)


@given(st.sampled_from(policy.KEYED_HEADERS), header_values)
def test_an_accept_value_differs_from_none(name: str, value: str) -> None:
    assert policy.cache_key(view(**{name: value}), SALT) != policy.cache_key(view(), SALT)


@pytest.mark.parametrize(
    ("value1", "value2"),
    [
        ("application/json", "APPLICATION/JSON"),
        ("gzip, deflate", "gzip,deflate"),
        (" gzip ,  br ", "gzip,br"),
    ],
)
def test_keyed_values_are_compared_in_normal_form(value1: str, value2: str) -> None:
    for name in policy.KEYED_HEADERS:
        assert policy.cache_key(view(**{name: value1}), SALT) == policy.cache_key(
            view(**{name: value2}), SALT
        )


def test_the_key_is_injective_over_keyed_values() -> None:
    a = view(accept="a accept-encoding=b", accept_encoding="")
    b = view(accept="a", accept_encoding="b accept-encoding=")
    assert policy.cache_key(a, SALT) != policy.cache_key(b, SALT)


@given(credentials, field_text, field_text)
def test_a_different_credential_gives_a_different_key(name: str, secret1: str, secret2: str) -> None:
    assume(secret1 != secret2)
    assert policy.cache_key(view(**{name: secret1}), SALT) != policy.cache_key(view(**{name: secret2}), SALT)


@given(credentials, field_text)
def test_a_credential_gives_a_different_key_than_none(name: str, secret: str) -> None:
    assert policy.cache_key(view(**{name: secret}), SALT) != policy.cache_key(view(), SALT)


@given(credentials, credentials, field_text)
def test_the_same_value_in_another_credential_header_gives_another_key(
    name1: str, name2: str, secret: str
) -> None:
    assume(name1 != name2)
    assert policy.cache_key(view(**{name1: secret}), SALT) != policy.cache_key(view(**{name2: secret}), SALT)


@given(credentials, field_text.filter(lambda s: len(s) >= 12))
def test_the_credential_never_appears_in_clear_in_the_key(name: str, secret: str) -> None:
    anonymous = policy.cache_key(view(accept="application/json"), SALT)
    assume(secret not in anonymous and secret.lower() not in anonymous)
    key = policy.cache_key(view(accept="application/json", **{name: secret}), SALT)
    assert secret not in key
    assert secret.lower() not in key


@given(credentials, field_text, st.binary(min_size=1, max_size=32), st.binary(min_size=1, max_size=32))
def test_the_salt_changes_the_fingerprint(name: str, secret: str, salt1: bytes, salt2: bytes) -> None:
    assume(salt1 != salt2)
    headers = {name: secret}
    assert policy.credential_fingerprint(headers, salt1) != policy.credential_fingerprint(headers, salt2)
    assert policy.cache_key(view(**headers), salt1) != policy.cache_key(view(**headers), salt2)


@given(header_values, st.binary(min_size=1, max_size=32), st.binary(min_size=1, max_size=32))
def test_without_credentials_the_salt_does_not_matter(accept: str, salt1: bytes, salt2: bytes) -> None:
    assert policy.cache_key(view(accept=accept), salt1) == policy.cache_key(view(accept=accept), salt2)


# shared keys: an unencoded answer suits every client


@given(header_values, header_values, header_values)
def test_clients_with_other_accept_encodings_share_the_key_of_an_unencoded_answer(
    accept: str, coding1: str, coding2: str
) -> None:
    k1 = policy.cache_keys(view(accept=accept, accept_encoding=coding1), SALT)
    k2 = policy.cache_keys(view(accept=accept, accept_encoding=coding2), SALT)
    assume(k1.identity_ok and k2.identity_ok)
    assert k1.for_response(None) == k2.for_response("identity") == k1.shared == k2.shared
    assert k1.shared != k1.coded
    if policy.cache_key(view(accept_encoding=coding1), SALT) != policy.cache_key(
        view(accept_encoding=coding2), SALT
    ):
        assert k1.for_response("gzip") != k2.for_response("gzip")


@given(header_values, header_values, header_values)
def test_the_shared_key_still_tells_accept_variants_apart(coding: str, accept1: str, accept2: str) -> None:
    assume(policy.cache_key(view(accept=accept1), SALT) != policy.cache_key(view(accept=accept2), SALT))
    assert (
        policy.cache_keys(view(accept=accept1, accept_encoding=coding), SALT).shared
        != policy.cache_keys(view(accept=accept2, accept_encoding=coding), SALT).shared
    )


@given(credentials, field_text, field_text)
def test_the_shared_key_still_tells_credentials_apart(name: str, secret1: str, secret2: str) -> None:
    assume(secret1 != secret2)
    k1 = policy.cache_keys(view(**{name: secret1}), SALT)
    k2 = policy.cache_keys(view(**{name: secret2}), SALT)
    assert k1.shared != k2.shared and k1.shared != policy.cache_keys(view(), SALT).shared


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
    keys = policy.cache_keys(view(accept_encoding=accept_encoding), SALT)
    assert keys.identity_ok is identity_ok
    assert keys.lookup_order() == ((keys.shared, keys.coded) if identity_ok else (keys.coded,))
    assert keys.for_response(None) == (keys.shared if identity_ok else keys.coded)
    assert keys.for_response("gzip") == keys.coded


def test_salted_vary_digests() -> None:
    assert policy.vary_digest("tok", b"salt1") != policy.vary_digest("tok", b"salt2")
    assert policy.vary_digest("tok", b"salt1") != policy.vary_digest("tok")
    entry = make_entry(vary=())
    recorded = policy.vary_values(("x-token",), view(x_token="tok"), b"s")
    salted = Entry(**{**entry.__dict__, "vary": recorded})
    assert policy.vary_matches(salted, view(x_token="tok"), b"s")
    assert not policy.vary_matches(salted, view(x_token="tok"), b"other")
    assert not policy.vary_matches(salted, view(x_token="tok2"), b"s")


def test_an_empty_credential_counts_as_none() -> None:
    assert policy.credential_fingerprint({"authorization": ""}, SALT) == ""
    assert policy.cache_key(view(authorization=""), SALT) == policy.cache_key(view(), SALT)


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
    assert policy.vary_names(vary) == expected


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
    assert policy.vary_matches(make_entry(vary=stored), view(**headers)) is expected


def test_vary_values_record_digests_of_what_the_request_sent() -> None:
    request = view(user_agent="pip/24.0", x_foo="A, b")
    recorded = policy.vary_values(("user-agent", "x-foo", "x-absent"), request)
    assert recorded == (
        ("user-agent", policy.vary_digest("pip/24.0")),
        ("x-foo", policy.vary_digest("A, b")),
        ("x-absent", policy.vary_digest("")),
    )
    assert all("pip" not in value and "A" not in value for _, value in recorded)
    assert len({value for _, value in recorded}) == 3


def test_vary_on_a_credential_does_not_record_it_in_clear() -> None:
    secret = "npm_Abcdefghijklmnop123456"
    request = view(authorization=f"Bearer {secret}", cookie=f"session={secret}")
    names = policy.vary_names("Authorization, Cookie") or ()
    recorded = repr(policy.vary_values(names, request))
    assert secret.lower() not in recorded.lower()


# request_cacheability and storability


@pytest.mark.parametrize(
    ("method", "headers", "cacheable"),
    [
        ("GET", {}, True),
        ("HEAD", {}, True),
        ("GET", {"accept": "application/json", "authorization": "Bearer x"}, True),
        ("POST", {}, False),
        ("PUT", {}, False),
        ("DELETE", {}, False),
        ("PATCH", {}, False),
        ("OPTIONS", {}, False),
        ("get", {}, False),
        # a range is cut from the stored body (or passed upstream by the service on a miss)
        ("GET", {"range": "bytes=0-99"}, True),
        ("HEAD", {"range": "bytes=0-"}, True),
    ],
)
def test_request_cacheability(method: str, headers: dict[str, str], cacheable: bool) -> None:
    reason = policy.request_cacheability(view(method=method, **headers))
    assert (reason is None) is cacheable
    if not cacheable:
        assert reason == f"not cacheable: method {method}"


@pytest.mark.parametrize(
    ("status", "storable"),
    [(200, True), (203, True), (300, True), (301, True), (308, True), (404, True), (410, True)]
    + [(s, False) for s in (201, 204, 206, 302, 303, 304, 307, 400, 401, 403, 429, 500, 502, 503, 504)],
)
def test_storability_by_status(status: int, storable: bool) -> None:
    reason = policy.storability(status, {}, 10, SETTINGS)
    assert (reason is None) is storable
    if not storable:
        assert reason == f"not stored: status {status}"


@pytest.mark.parametrize(
    ("headers", "length", "expected"),
    [
        ({"vary": "Accept-Encoding"}, 10, None),
        ({"vary": "*"}, 10, "not stored: Vary: *"),
        ({"vary": "Accept, *"}, 10, "not stored: Vary: *"),
        ({"content-range": "bytes 0-9/100"}, 10, "not stored: partial content"),
        ({}, None, None),
        ({}, 1024, None),
        ({}, 1025, "not stored: larger than cache_max_object_size (1025 bytes)"),
    ],
)
def test_storability_by_headers_and_size(
    headers: dict[str, str], length: int | None, expected: str | None
) -> None:
    limits = make_settings(cache_max_object_size="1k")
    assert policy.storability(200, headers, length, limits) == expected


@pytest.mark.parametrize(
    ("request_headers", "cache_control", "expected"),
    [
        ({"x-auth-token": "alice"}, "private", "not stored: private answer to a request with x-auth-token"),
        (
            {"x-auth-token": "alice"},
            "max-age=60, Private",
            "not stored: private answer to a request with x-auth-token",
        ),
        (
            {"x-registry-secret": "s"},
            "private",
            "not stored: private answer to a request with x-registry-secret",
        ),
        ({"x-auth-token": "alice"}, "public, max-age=60", None),  # the upstream says anyone may have it
        ({"x-auth-token": "alice"}, "", None),
        ({"authorization": "Bearer a"}, "private", None),  # keyed: it stays with its credentials anyway
        ({"npm-auth-type": "web", "npm-session": "1f2e"}, "private", None),  # npm's own, no credentials
        ({"accept": "application/json"}, "private", None),  # anonymous: issue 2, private is ignored
    ],
)
def test_private_answers_to_unkeyed_credentials_are_not_stored(
    request_headers: dict[str, str], cache_control: str, expected: str | None
) -> None:
    request = RequestView("GET", URL, request_headers)
    response_headers = {"cache-control": cache_control} if cache_control else {}
    assert policy.private_storability(request, response_headers) == expected


# freshness


@pytest.mark.parametrize(
    ("url", "status", "now", "fresh"),
    [
        (URL, 200, 1000.0, True),
        (URL, 200, 1059.9, True),
        (URL, 200, 1060.0, False),
        (URL, 200, 999_999.0, False),
        (URL, 200, 500.0, True),  # stored "in the future" (clock stepped back): age 0
        (URL, 301, 1059.0, True),
        (URL, 301, 1061.0, False),
        (URL, 404, 1009.9, True),
        (URL, 404, 1010.0, False),
        (URL, 410, 1010.0, False),
        (WHEEL_URL, 200, 1e12, True),
        (WHEEL_URL + "?x=1", 200, 1e12, True),
        ("https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz", 200, 1e12, True),
        ("https://h/a-1.0.tar.gz", 200, 1e12, True),
        ("https://h/a-1.0.tar.gz/", 200, 1e12, False),
        ("https://h/tar.gz/index", 200, 1e12, False),
        # a negative answer for a package file is not immutable: the file may be uploaded later
        (WHEEL_URL, 404, 1010.0, False),
    ],
)
def test_is_fresh(url: str, status: int, now: float, fresh: bool) -> None:
    assert policy.is_fresh(make_entry(url=url, status=status, stored_at=1000.0), now, SETTINGS) is fresh


def test_ttl_zero_is_never_fresh() -> None:
    assert not policy.is_fresh(make_entry(stored_at=1000.0), 1000.0, make_settings(cache_ttl=0))


def test_immutable_patterns_are_configurable() -> None:
    entry = make_entry(url=WHEEL_URL, stored_at=0.0)
    assert not policy.is_fresh(entry, 1e9, make_settings(cache_immutable=""))
    deb = make_entry(url="https://deb.example/pool/a_1.0.deb", stored_at=0.0)
    assert policy.is_fresh(deb, 1e9, make_settings(cache_immutable=["*.deb, *.rpm"]))


@given(st.floats(0, 1e9), st.floats(0, 1e6), st.floats(0, 1e6), st.sampled_from([200, 301, 404]))
def test_once_stale_an_entry_stays_stale(stored_at: float, later: float, more: float, status: int) -> None:
    entry = make_entry(status=status, stored_at=stored_at)
    if not policy.is_fresh(entry, stored_at + later, SETTINGS):
        assert not policy.is_fresh(entry, stored_at + later + more, SETTINGS)


@pytest.mark.parametrize(
    ("stored_at", "now", "expected"), [(1000.0, 1000.0, 0), (1000.0, 1061.7, 61), (1000.0, 10.0, 0)]
)
def test_age(stored_at: float, now: float, expected: int) -> None:
    assert policy.age(make_entry(stored_at=stored_at), now) == expected


# decide

FRESH_NOW, STALE_NOW = 1030.0, 5000.0
A = make_entry(stored_at=1000.0, vary=(("user-agent", "pip/24"),))


@pytest.mark.parametrize(
    ("entry", "now", "conf", "backing_off", "expected"),
    [
        (None, FRESH_NOW, SETTINGS, False, Decision(Action.FETCH, Outcome.MISS, "miss")),
        (None, FRESH_NOW, SETTINGS, True, Decision(Action.FETCH, Outcome.MISS, "miss")),
        (
            None,
            FRESH_NOW,
            OFFLINE,
            False,
            Decision(Action.OFFLINE_MISS, Outcome.MISS, "offline: not in cache"),
        ),
        (A, FRESH_NOW, SETTINGS, False, Decision(Action.SERVE, Outcome.HIT, "fresh")),
        (A, FRESH_NOW, SETTINGS, True, Decision(Action.SERVE, Outcome.HIT, "fresh")),
        (A, FRESH_NOW, OFFLINE, False, Decision(Action.SERVE, Outcome.HIT, "fresh, offline")),
        (A, STALE_NOW, SETTINGS, False, Decision(Action.FETCH, Outcome.REVALIDATED, "stale: revalidating")),
        (A, STALE_NOW, OFFLINE, False, Decision(Action.SERVE, Outcome.STALE, "stale: offline mode")),
        (A, STALE_NOW, OFFLINE, True, Decision(Action.SERVE, Outcome.STALE, "stale: offline mode")),
        (
            A,
            STALE_NOW,
            SETTINGS,
            True,
            Decision(Action.SERVE, Outcome.STALE, "stale: upstream failing recently", probe=True),
        ),
        (A, STALE_NOW, NO_STALE, True, Decision(Action.FETCH, Outcome.REVALIDATED, "stale: revalidating")),
    ],
)
def test_decide(
    entry: Entry | None, now: float, conf: settings.Settings, backing_off: bool, expected: Decision
) -> None:
    assert policy.decide(view(user_agent="pip/24"), entry, now, conf, backing_off) == expected


@pytest.mark.parametrize(
    ("conf", "now", "expected"),
    [
        (SETTINGS, FRESH_NOW, Decision(Action.FETCH, Outcome.MISS, "miss")),
        (SETTINGS, STALE_NOW, Decision(Action.FETCH, Outcome.MISS, "miss")),
        (OFFLINE, FRESH_NOW, Decision(Action.OFFLINE_MISS, Outcome.MISS, "offline: not in cache")),
    ],
)
def test_decide_treats_a_vary_mismatch_as_a_miss(
    conf: settings.Settings, now: float, expected: Decision
) -> None:
    assert policy.decide(view(user_agent="curl/8"), A, now, conf, True) == expected


@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.floats(0, 1e6),
    st.sampled_from(["pip/24", "curl/8", ""]),
)
def test_decide_invariants(
    has_entry: bool, offline: bool, stale_on_error: bool, backing_off: bool, elapsed: float, agent: str
) -> None:
    conf = make_settings(cache_ttl=60, cache_offline=offline, cache_stale_on_error=stale_on_error)
    entry = A if has_entry else None
    request = view(user_agent=agent)
    decision = policy.decide(request, entry, A.stored_at + elapsed, conf, backing_off)
    usable = entry is not None and policy.vary_matches(entry, request)
    assert decision.action in set(Action)
    assert decision.reason
    if decision.action is Action.SERVE:
        assert usable
    if not usable:
        assert decision.outcome is Outcome.MISS
    if offline:
        assert decision.action in (Action.SERVE, Action.OFFLINE_MISS)
    else:
        assert decision.action is not Action.OFFLINE_MISS
    if decision.outcome is Outcome.STALE:
        assert offline or (backing_off and stale_on_error)
    assert decision.probe == (decision.outcome is Outcome.STALE and not offline)


def test_outcome_values_are_the_x_cache_values() -> None:
    assert {o.value for o in Outcome} == {"HIT", "MISS", "REVALIDATED", "STALE"}


# on_failure


@pytest.mark.parametrize(
    ("entry", "conf", "expected"),
    [
        (None, SETTINGS, None),
        (None, OFFLINE, None),
        (A, NO_STALE, None),
        (A, SETTINGS, Decision(Action.SERVE, Outcome.STALE, "stale: upstream connection refused")),
        (
            make_entry(status=404),
            SETTINGS,
            Decision(Action.SERVE, Outcome.STALE, "stale: upstream connection refused"),
        ),
    ],
)
def test_on_failure(entry: Entry | None, conf: settings.Settings, expected: Decision | None) -> None:
    assert policy.on_failure(entry, "connection refused", conf) == expected


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
    assert policy.conditional_headers(entry) == expected


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
    assert policy.client_has_current(make_entry(headers=entry_headers), view(**request_headers)) is current


@pytest.mark.parametrize("status", [404, 410])
def test_a_negative_entry_never_answers_a_conditional_request(status: int) -> None:
    entry = make_entry(status=status, headers=(ETAG,))
    assert not policy.client_has_current(entry, view(if_none_match="*"))


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
    assert policy.byte_range(value, size) == expected


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
    span = policy.byte_range(value, size)
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
    assert policy.if_range_allows(make_entry(headers=entry_headers), if_range) is allowed


@pytest.mark.parametrize(
    ("url", "immutable"),
    [
        ("https://static.crates.io/crates/serde/1.0.200/download", True),
        ("https://static.crates.io/crates/serde/serde-1.0.200.crate", True),
        ("https://index.crates.io/se/rd/serde", False),  # the sparse index changes with every release
        ("https://proxy.golang.org/golang.org/x/mod/@v/v0.17.0.mod", True),
        ("https://proxy.golang.org/golang.org/x/mod/@v/v0.17.0.info", True),
        ("https://proxy.golang.org/golang.org/x/mod/@v/v0.17.0.zip", True),
        ("https://proxy.golang.org/golang.org/x/mod/@v/list", False),
        ("https://proxy.golang.org/golang.org/x/mod/@latest", False),
        ("https://repo1.maven.org/maven2/junit/junit/4.13.2/junit-4.13.2.pom", True),
        ("https://repo1.maven.org/maven2/junit/junit/maven-metadata.xml", False),
        ("https://registry.npmjs.org/left-pad", False),
        ("https://pypi.org/simple/requests/", False),
    ],
)
def test_default_immutable_patterns(url: str, immutable: bool) -> None:
    assert policy.is_immutable(url, make_settings()) is immutable
