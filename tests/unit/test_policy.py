"""The pure decision core: cacheability, storability, freshness and decide()."""

from __future__ import annotations

import pytest
from factories import NO_STALE, OFFLINE, SETTINGS, URL, WHEEL_URL, make_entry, make_settings, view
from hypothesis import given
from hypothesis import strategies as st

from cacheaddon import keys, policy, settings
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
ORIGIN = "https://pypi.org"


def backoff_at(now: float, backing_off: bool) -> policy.Backoff | None:
    return policy.Backoff(ORIGIN, now + 29.5) if backing_off else None


UNAVAILABLE = Decision(
    Action.ERROR,
    Outcome.MISS,
    "upstream failing recently: https://pypi.org not tried for another 30 s (cache_upstream_backoff)",
    probe=True,
    status=503,
)


@pytest.mark.parametrize(
    ("entry", "now", "conf", "backing_off", "expected"),
    [
        (None, FRESH_NOW, SETTINGS, False, Decision(Action.FETCH, Outcome.MISS, "miss")),
        # An outage costs one timeout, even for what is not cached: 503 at once, one probe in the background.
        (None, FRESH_NOW, SETTINGS, True, UNAVAILABLE),
        (None, FRESH_NOW, NO_STALE, True, UNAVAILABLE),
        (
            None,
            FRESH_NOW,
            OFFLINE,
            False,
            Decision(Action.ERROR, Outcome.MISS, "offline: not in cache", status=504),
        ),
        (
            None,
            FRESH_NOW,
            OFFLINE,
            True,
            Decision(Action.ERROR, Outcome.MISS, "offline: not in cache", status=504),
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
    assert (
        policy.decide(view(user_agent="pip/24"), entry, now, conf, backoff_at(now, backing_off)) == expected
    )


@pytest.mark.parametrize(
    ("conf", "now", "backing_off", "expected"),
    [
        (SETTINGS, FRESH_NOW, False, Decision(Action.FETCH, Outcome.MISS, "miss")),
        (SETTINGS, STALE_NOW, False, Decision(Action.FETCH, Outcome.MISS, "miss")),
        (SETTINGS, FRESH_NOW, True, UNAVAILABLE),
        (OFFLINE, FRESH_NOW, True, Decision(Action.ERROR, Outcome.MISS, "offline: not in cache", status=504)),
    ],
)
def test_decide_treats_a_vary_mismatch_as_a_miss(
    conf: settings.Settings, now: float, backing_off: bool, expected: Decision
) -> None:
    assert policy.decide(view(user_agent="curl/8"), A, now, conf, backoff_at(now, backing_off)) == expected


@pytest.mark.parametrize(("left", "said"), [(30.0, "30 s"), (0.2, "1 s"), (4.5, "5 s")])
def test_unavailable_names_the_origin_and_the_seconds_left(left: float, said: str) -> None:
    decision = policy.unavailable(policy.Backoff(ORIGIN, 100.0 + left), 100.0)
    assert (decision.action, decision.status, decision.outcome) == (Action.ERROR, 503, Outcome.MISS)
    assert f"{ORIGIN} not tried for another {said}" in decision.reason
    assert not decision.probe


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
    now = A.stored_at + elapsed
    decision = policy.decide(request, entry, now, conf, backoff_at(now, backing_off))
    usable = entry is not None and keys.vary_matches(entry, request)
    assert decision.action in (Action.SERVE, Action.FETCH, Action.ERROR)
    assert decision.reason
    if decision.action is Action.SERVE:
        assert usable
    if not usable:
        assert decision.outcome is Outcome.MISS
    if offline:
        assert decision.action in (Action.SERVE, Action.ERROR)
        assert decision.action is not Action.ERROR or decision.status == 504
    if decision.action is Action.ERROR:
        assert not usable
        assert decision.status == (504 if offline else 503)
        assert offline or backing_off
    if decision.outcome is Outcome.STALE:
        assert offline or (backing_off and stale_on_error)
    # In back-off, what the cache cannot answer fresh is answered at once and probed for in the background.
    assert decision.probe == (
        not offline and decision.outcome in (Outcome.STALE, Outcome.MISS) and backing_off
    )
    if backing_off and not offline:
        assert decision.action is not Action.FETCH or (usable and not stale_on_error)


def test_outcome_values_are_the_x_cache_values() -> None:
    assert {o.value for o in Outcome} == {"HIT", "MISS", "REVALIDATED", "STALE"}


# after the upstream answered, or failed

REFUSED = policy.Failure("connection refused")
TIMED_OUT = policy.Failure("timed out", timeout=True)
ANSWERED_503 = policy.Failure("answered 503", status=503)


@pytest.mark.parametrize(
    ("entry", "conf", "failure", "expected"),
    [
        (
            None,
            SETTINGS,
            REFUSED,
            Decision(Action.ERROR, Outcome.MISS, "upstream connection refused", status=502),
        ),
        (
            None,
            OFFLINE,
            REFUSED,
            Decision(Action.ERROR, Outcome.MISS, "upstream connection refused", status=502),
        ),
        (
            A,
            NO_STALE,
            REFUSED,
            Decision(Action.ERROR, Outcome.MISS, "upstream connection refused", status=502),
        ),
        (None, SETTINGS, TIMED_OUT, Decision(Action.ERROR, Outcome.MISS, "upstream timed out", status=504)),
        (None, SETTINGS, ANSWERED_503, Decision(Action.PASS, Outcome.MISS, "upstream answered 503")),
        (A, NO_STALE, ANSWERED_503, Decision(Action.PASS, Outcome.MISS, "upstream answered 503")),
        (A, SETTINGS, REFUSED, Decision(Action.SERVE, Outcome.STALE, "stale: upstream connection refused")),
        (A, SETTINGS, TIMED_OUT, Decision(Action.SERVE, Outcome.STALE, "stale: upstream timed out")),
        (A, SETTINGS, ANSWERED_503, Decision(Action.SERVE, Outcome.STALE, "stale: upstream answered 503")),
        (
            make_entry(status=404),
            SETTINGS,
            REFUSED,
            Decision(Action.SERVE, Outcome.STALE, "stale: upstream connection refused"),
        ),
    ],
)
def test_on_failure(
    entry: Entry | None, conf: settings.Settings, failure: policy.Failure, expected: Decision
) -> None:
    assert policy.on_failure(entry, failure, conf) == expected


@pytest.mark.parametrize(
    ("entry", "conf", "expected"),
    [
        (A, SETTINGS, Decision(Action.SERVE, Outcome.STALE, "stale: new body could not be held (disk full)")),
        (
            A,
            NO_STALE,
            Decision(Action.ERROR, Outcome.MISS, "new body could not be held (disk full)", status=502),
        ),
        (
            None,
            SETTINGS,
            Decision(Action.ERROR, Outcome.MISS, "new body could not be held (disk full)", status=502),
        ),
    ],
)
def test_on_unheld(entry: Entry | None, conf: settings.Settings, expected: Decision) -> None:
    assert policy.on_unheld(entry, "disk full", conf) == expected


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (500, True),
        (502, True),
        (503, True),
        (599, True),
        (429, True),
        (200, False),
        (404, False),
        (304, False),
    ],
)
def test_is_failure(status: int, failure: bool) -> None:
    assert policy.is_failure(status) is failure


MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("method", "entry", "status", "headers", "length", "expected"),
    [
        ("GET", None, 503, {}, 10, policy.Answer(policy.Verdict.FAILED, "upstream answered 503")),
        ("GET", A, 429, {}, 10, policy.Answer(policy.Verdict.FAILED, "upstream answered 429")),
        ("GET", A, 304, {}, None, policy.Answer(policy.Verdict.NOT_MODIFIED, "revalidated: 304")),
        # a 304 we did not ask for (no entry): passed on, never stored
        (
            "GET",
            None,
            304,
            {},
            None,
            policy.Answer(policy.Verdict.NEW, "not stored: status 304", "not stored: status 304"),
        ),
        ("GET", None, 200, {}, 10, policy.Answer(policy.Verdict.NEW, "miss", None, buffer=True)),
        ("GET", None, 200, {}, 2 * MIB, policy.Answer(policy.Verdict.NEW, "miss", None, buffer=False)),
        ("GET", None, 200, {}, None, policy.Answer(policy.Verdict.NEW, "miss", None, buffer=False)),
        # a new body for a stale entry is read whole (up to 8 MiB), so that a failure midway falls back
        (
            "GET",
            A,
            200,
            {},
            2 * MIB,
            policy.Answer(policy.Verdict.NEW, "refreshed: entry was stale", None, True),
        ),
        (
            "GET",
            A,
            200,
            {},
            None,
            policy.Answer(policy.Verdict.NEW, "refreshed: entry was stale", None, True),
        ),
        (
            "GET",
            A,
            200,
            {},
            9 * MIB,
            policy.Answer(policy.Verdict.NEW, "refreshed: entry was stale", None, False),
        ),
        (
            "HEAD",
            None,
            200,
            {},
            9 * MIB,
            policy.Answer(policy.Verdict.NEW, "not stored: HEAD", "not stored: HEAD", True),
        ),
        (
            "GET",
            None,
            200,
            {"vary": "*"},
            10,
            policy.Answer(policy.Verdict.NEW, "not stored: Vary: *", "not stored: Vary: *", True),
        ),
        (
            "GET",
            None,
            200,
            {"cache-control": "private"},
            10,
            policy.Answer(
                policy.Verdict.NEW,
                "not stored: private answer to a request with x-auth-token",
                "not stored: private answer to a request with x-auth-token",
                True,
            ),
        ),
    ],
)
def test_on_answer(
    method: str,
    entry: Entry | None,
    status: int,
    headers: dict[str, str],
    length: int | None,
    expected: policy.Answer,
) -> None:
    request = view(method=method, user_agent="pip/24", x_auth_token="t")
    assert policy.on_answer(request, entry, status, headers, length, SETTINGS) == expected


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
