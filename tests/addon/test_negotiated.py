"""A request whose own keys miss is served an answer stored for another Accept that it admits: explicitly
admitted types always, wildcard-admitted ones only when the upstream cannot be asked (offline, back-off) or
fails; never another credential owner's, another Vary variant, a type the request does not admit, or a
coding it cannot decode."""

from __future__ import annotations

import time

import pytest
from test_addon import Harness, closed_port, flow_for

PIP = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
UV = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
PYPI_JSON = "application/vnd.pypi.simple.v1+json"
NPM_ABBREVIATED_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
JSON_PAGE = b'{"meta": {"api-version": "1.0"}, "name": "pkg", "files": []}'


def down(harness: Harness, **options: object) -> str:
    """Configures the addon with an upstream that refuses connections; returns the page's URL there."""
    port = closed_port()
    harness.configure(cache_hosts=[f"127.0.0.1:{port}"], **options)
    return f"http://127.0.0.1:{port}/simple/pkg/"


def ask(harness: Harness, url: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    [answer] = asks(harness, url, headers)
    return answer


def asks(harness: Harness, url: str, *requests: dict[str, str]) -> list[tuple[int, bytes, dict[str, str]]]:
    """Answers each request (header fields; "_" for "-" in names) in turn, in one run of the addon."""
    flows = [flow_for(url, headers={k.replace("_", "-"): v for k, v in r.items()}) for r in requests]

    async def run() -> None:
        for f in flows:
            await harness.addon.request(f)

    harness.live(run)
    answers = []
    for f in flows:
        assert f.response is not None
        answers.append((f.response.status_code, f.response.raw_content or b"", dict(f.response.headers)))
    return answers


def store_json(harness: Harness, url: str, accept: str = PIP, age: float = 0.0, **headers: str) -> None:
    fields = {"Accept": accept, **{k.replace("_", "-"): v for k, v in headers.items()}}
    harness.store_entry(
        flow_for(url, headers=fields),
        JSON_PAGE,
        age=age,
        headers=(("Content-Type", PYPI_JSON), ("ETag", '"j"')),
    )


def test_offline_uv_is_served_the_json_page_pip_stored(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    url = "https://pypi.org/simple/pkg/"
    store_json(harness, url)
    status, body, headers = ask(harness, url, Accept=UV)
    assert (status, body) == (200, JSON_PAGE)
    assert headers["X-Cache"] == "HIT"
    assert headers["X-Cache-Detail"] == f"fresh, offline; negotiated {PYPI_JSON}"
    assert headers["Content-Type"] == PYPI_JSON and headers["ETag"] == '"j"'


def test_an_explicitly_admitted_fresh_answer_is_served_without_asking_the_upstream(harness: Harness) -> None:
    url = down(harness)
    store_json(harness, url)
    status, body, headers = ask(harness, url, Accept=UV)
    assert (status, body, headers["X-Cache"]) == (200, JSON_PAGE, "HIT")
    assert not harness.addon.health.backing_off(url.split("/simple")[0], time.time())  # never asked


def test_a_wildcard_admitted_answer_is_served_only_once_the_upstream_failed(harness: Harness) -> None:
    url = down(harness)
    store_json(harness, url)
    status, body, headers = ask(harness, url, Accept="*/*")
    assert (status, body) == (200, JSON_PAGE)
    # the upstream was asked first (it would have sent curl HTML), and only its failure brought the JSON
    assert headers["X-Cache"] == "STALE"
    assert headers["X-Cache-Detail"] == "stale: upstream connection refused"
    assert harness.addon.health.backing_off(url.split("/simple")[0], time.time())


def test_during_back_off_a_wildcard_admitted_answer_is_served_at_once(harness: Harness) -> None:
    url = down(harness)
    store_json(harness, url)
    harness.addon.health.failed(url.split("/simple")[0], time.time(), 30)
    status, body, headers = ask(harness, url)  # no Accept at all: any type, by wildcard
    assert (status, body, headers["X-Cache"]) == (200, JSON_PAGE, "HIT")
    assert headers["X-Cache-Detail"] == f"fresh; negotiated {PYPI_JSON}"


def test_a_stale_explicit_match_is_fetched_anew_and_served_when_that_fails(harness: Harness) -> None:
    url = down(harness, cache_ttl=60)
    store_json(harness, url, age=3600)
    status, body, headers = ask(harness, url, Accept=UV)
    assert (status, body, headers["X-Cache"]) == (200, JSON_PAGE, "STALE")


@pytest.mark.parametrize(
    ("stored_accept", "content_type", "accept"),
    [
        (PIP, PYPI_JSON, "text/html"),  # JSON and HTML never mix
        ("text/html", "text/html", PYPI_JSON),
        (NPM_ABBREVIATED_ACCEPT, "application/vnd.npm.install-v1+json", "application/json"),
        (PIP, PYPI_JSON, f"{PYPI_JSON};q=0, */*"),  # refused outright
    ],
    ids=["json-for-html", "html-for-json", "abbreviated-for-full", "q-0"],
)
def test_offline_a_type_the_request_does_not_admit_is_never_served(
    harness: Harness, stored_accept: str, content_type: str, accept: str
) -> None:
    harness.configure(cache_offline=True)
    url = "https://registry.npmjs.org/pkg"
    harness.store_entry(
        flow_for(url, headers={"Accept": stored_accept}), b"{}", headers=(("Content-Type", content_type),)
    )
    status, _, headers = ask(harness, url, Accept=accept)
    assert status == 504, headers


def test_offline_npm_ci_is_served_the_full_document_npm_install_stored(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    url = "https://registry.npmjs.org/pkg"
    full = b'{"name": "pkg", "versions": {}, "time": {}}'
    harness.store_entry(
        flow_for(url, headers={"Accept": "application/json"}),
        full,
        headers=(("Content-Type", "application/json"),),
    )
    status, body, headers = ask(harness, url, Accept=NPM_ABBREVIATED_ACCEPT)
    assert (status, body) == (200, full)
    assert headers["X-Cache-Detail"] == "fresh, offline; negotiated application/json"


@pytest.mark.parametrize("credentials", [{}, {"Authorization": "Bearer other"}], ids=["anonymous", "other"])
def test_another_credential_owners_answer_is_never_negotiated(
    harness: Harness, credentials: dict[str, str]
) -> None:
    harness.configure(cache_offline=True)
    url = "https://pypi.org/simple/private/"
    store_json(harness, url, Authorization="Bearer mine")
    other, mine = asks(
        harness, url, {"Accept": UV, **credentials}, {"Accept": UV, "Authorization": "Bearer mine"}
    )
    assert (other[0], mine[0]) == (504, 200)


def test_an_answer_for_another_vary_value_is_never_negotiated(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    url = "https://pypi.org/simple/pkg/"
    stored = flow_for(url, headers={"Accept": PIP, "X-Flavour": "a"})
    harness.store_entry(
        stored,
        JSON_PAGE,
        headers=(("Content-Type", PYPI_JSON), ("Vary", "X-Flavour")),
        vary=(("x-flavour", "a"),),
    )
    assert ask(harness, url, Accept=UV, X_Flavour="b")[0] == 504


def test_an_encoded_answer_goes_only_to_a_client_that_decodes_it(harness: Harness) -> None:
    harness.configure(cache_offline=True)
    url = "https://pypi.org/simple/pkg/"
    harness.store_entry(
        flow_for(url, headers={"Accept": PIP, "Accept-Encoding": "gzip"}),
        b"\x1f\x8b gzip bytes",
        headers=(("Content-Type", PYPI_JSON), ("Content-Encoding", "gzip")),
    )
    none, brotli, gzip = asks(
        harness,
        url,
        {"Accept": UV},
        {"Accept": UV, "Accept-Encoding": "br"},
        {"Accept": UV, "Accept-Encoding": "gzip, deflate"},
    )
    assert (none[0], brotli[0]) == (504, 504)  # without Accept-Encoding: unencoded only
    assert gzip[:2] == (200, b"\x1f\x8b gzip bytes")
