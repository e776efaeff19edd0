"""Which parent proxy the cache's own requests go through: mitmproxy's upstream mode, else (opted in) the
environment's proxy variables, read with curl's and httpx's rules."""

from __future__ import annotations

import httpx
import pytest

from cacheaddon.parent import Route, from_env, routes


def test_no_parent_by_default() -> None:
    assert routes(["regular"], None, None) == ()
    assert routes(["regular"], None, {"HTTPS_PROXY": "http://corp:3128"}) != ()  # only when opted in


def test_upstream_mode_with_its_credentials_takes_everything() -> None:
    env = {"HTTPS_PROXY": "http://other:1"}
    found = routes(["upstream:http://corp.example:3128", "reverse:https://pypi.org@8081"], "me:pw:x", env)
    assert found == (Route("all://", "http://corp.example:3128", ("me", "pw:x")),)


@pytest.mark.parametrize(
    ("modes", "auth", "message"),
    [
        (["upstream:http://a:1", "upstream:http://b:2@9000"], None, "mode: "),
        (["upstream:http://a:1"], "no-colon", "upstream_auth: "),
    ],
)
def test_bad_parents_name_the_option(modes: list[str], auth: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        routes(modes, auth, None)


def test_the_environment_as_curl_reads_it() -> None:
    env = {
        "https_proxy": "http://lower:1",
        "HTTPS_PROXY": "http://upper:2",  # the lower-case spelling wins
        "HTTP_PROXY": "corp:3",  # no scheme: http
        "NO_PROXY": "localhost, 10.1.2.3,::1,.internal.example,pypi.example",
    }
    assert from_env(env) == (
        Route("http://", "http://corp:3"),
        Route("https://", "http://lower:1"),
        Route("all://localhost", None),
        Route("all://10.1.2.3", None),
        Route("all://[::1]", None),
        Route("all://*.internal.example", None),
        Route("all://*pypi.example", None),
    )
    assert from_env({"HTTPS_PROXY": "http://corp:3", "NO_PROXY": "*"}) == ()
    assert from_env({"NO_PROXY": "example.org"}) == ()


@pytest.mark.parametrize(
    ("url", "proxied"),
    [
        ("https://pypi.org/simple/", True),
        ("https://pypi.example/simple/", False),
        ("https://files.pypi.example/x.whl", False),
        ("https://notpypi.example/", True),
        ("https://a.internal.example/", False),
        ("https://internal.example/", True),
    ],
)
def test_httpx_picks_the_route_curl_would(url: str, proxied: bool) -> None:
    found = from_env({"HTTPS_PROXY": "http://corp:3", "NO_PROXY": ".internal.example,pypi.example"})
    patterns = [(httpx._utils.URLPattern(r.pattern), r.proxy) for r in found]  # httpx's own matching
    matching = sorted((p for p in patterns if p[0].matches(httpx.URL(url))), key=lambda p: p[0])
    assert (matching[0][1] is not None) is proxied
