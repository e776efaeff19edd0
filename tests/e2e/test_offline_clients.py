"""pip, uv and npm facing an offline miss (cache_offline=true, nothing cached): each gets the 504, fails
without waiting longer than its own retry settings make it, and shows why ("offline: not in cache")
wherever it shows anything of the answer: pip in its debug output (-vv: it logs an index page's error only
there), uv and npm in their error messages. What each printed and how long it took is printed for the record
(`pytest -s`); only behaviour is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clients import (
    ClientResult,
    Proxy,
    ProxyFactory,
    client_env,
    npm_install,
    pip_install,
    report,
    uv_binary,
    uv_install,
)
from .fakeregistry import FakeRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WHY = "offline: not in cache"


def record(name: str, result: ClientResult) -> None:
    """The lines a user sees, for the lead's note (visible with -s)."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    shown = dict.fromkeys([line for line in lines if "504" in line] + lines[-4:])
    print(f"\n--- {name}: exit {result.returncode} after {result.elapsed:.1f}s")
    print("\n".join(shown))


def asked(proxy: Proxy, url: str, mark: int) -> list[str]:
    """The X-Cache outcomes the proxy logged for `url` since `mark`: one per request the client made."""
    return [outcome for outcome, logged in proxy.cache_log(mark) if logged == url]


@pytest.fixture
def offline(proxy_factory: ProxyFactory) -> Proxy:
    return proxy_factory(cache_offline=True)


def test_pip_gets_the_504_once_and_shows_why_in_its_debug_output(
    tmp_path: Path, npm_registry: FakeRegistry, offline: Proxy
) -> None:
    env = client_env(offline)
    page = f"{npm_registry.pypi_url}delta/"
    mark = offline.log_size()
    # pip's own default of 5 retries: it retries 500, 502, 503, 520 and 527, never a 504
    result = pip_install(tmp_path, ["delta"], npm_registry.pypi_url, env, retries=5)
    record("pip", result)
    assert result.returncode != 0 and not result.timed_out, report(result, offline)
    assert "No matching distribution found for delta" in result.stderr, report(result, offline)
    assert asked(offline, page, mark) == ["MISS"], offline.log_text(mark)

    verbose = pip_install(tmp_path, ["delta"], npm_registry.pypi_url, env, retries=5, extra_args=["-vv"])
    record("pip -vv", verbose)
    expected = f"504 Server Error: Gateway Timeout (cacheaddon: {WHY})"
    assert expected in verbose.stdout, report(verbose, offline)


@pytest.mark.skipif(uv_binary() is None, reason="uv is not installed")
@pytest.mark.parametrize("retries", [None, "0"], ids=["default-retries", "UV_HTTP_RETRIES=0"])
def test_uv_shows_why_and_stops_at_once_with_no_retries(
    tmp_path: Path, npm_registry: FakeRegistry, offline: Proxy, retries: str | None
) -> None:
    env = client_env(offline)
    settings = {"UV_HTTP_RETRIES": retries} if retries is not None else {}
    page = f"{npm_registry.pypi_url}delta/"
    mark = offline.log_size()
    result = uv_install(tmp_path, ["delta"], npm_registry.pypi_url, env, settings=settings)
    record(f"uv ({'UV_HTTP_RETRIES=' + retries if retries else 'defaults'})", result)
    assert result.returncode != 0 and not result.timed_out, report(result, offline)
    assert "504 Gateway Timeout" in result.stderr, report(result, offline)
    assert WHY in result.stderr, report(result, offline)
    # uv retries a 504 three times by default, whatever Retry-After says; UV_HTTP_RETRIES=0 asks once
    assert asked(offline, page, mark) == ["MISS"] * (4 if retries is None else 1), offline.log_text(mark)


@pytest.mark.parametrize("fetch_retries", [2, 0], ids=["default-retries-short-waits", "fetch-retries=0"])
def test_npm_shows_why_and_stops_at_once_with_no_retries(
    tmp_path: Path, npm_registry: FakeRegistry, offline: Proxy, fetch_retries: int
) -> None:
    # npm's default fetch-retries=2 waits 10 s, then 60 s, before its third and last try (README); the waits
    # are shortened here, the tries are npm's defaults.
    env = {
        **client_env(offline),
        "npm_config_fetch_retry_mintimeout": "100",
        "npm_config_fetch_retry_maxtimeout": "200",
    }
    packument = npm_registry.npm_url + "kilo"
    mark = offline.log_size()
    result = npm_install(
        tmp_path, ["kilo"], npm_registry.npm_url, env, timeout=60, fetch_retries=fetch_retries
    )
    record(f"npm (fetch-retries={fetch_retries})", result)
    assert result.returncode != 0 and not result.timed_out, report(result, offline)
    assert "npm error code E504" in result.stderr, report(result, offline)
    expected = f"504 Gateway Timeout (cacheaddon: {WHY}) - GET {packument}"
    assert expected in result.stderr, report(result, offline)
    assert asked(offline, packument, mark) == ["MISS"] * (fetch_retries + 1), offline.log_text(mark)
