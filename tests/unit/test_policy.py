"""The pure decision core: cacheability, storability, freshness and decide()."""

from __future__ import annotations

import pytest
from factories import NO_STALE, OFFLINE, SETTINGS, URL, WHEEL_URL, make_entry, make_settings, view
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon import policy, settings
from cacheaddon.entry import Entry
from cacheaddon.keys import RequestView
from cacheaddon.policy import Action, Decision, Outcome

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
