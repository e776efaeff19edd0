"""routing: where a request goes (refused, our error, left to mitmproxy, forwarded, answered), as data."""

from __future__ import annotations

from typing import Any

import pytest
from factories import make_settings

from cacheaddon.rewrite import Origin
from cacheaddon.routing import Target, Way, route

PYPI = Origin("https", "pypi.org", 443)
CONF = make_settings(cache_hosts=["pypi.org", "files.pythonhosted.org"])


def target(path: str = "/simple/six/", **overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "method": "GET",
        "scheme": "https",
        "host": "pypi.org",
        "port": 443,
        "path": path,
        "headers": {"accept": "text/html"},
        "client_ip": "127.0.0.1",
        "endpoint_origin": None,
    }
    return Target(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("request_target", "conf", "way", "status", "detail"),
    [
        (target(), CONF, Way.ANSWER, 0, ""),
        (target(method="HEAD"), CONF, Way.ANSWER, 0, ""),
        (target(method="POST"), CONF, Way.FORWARD, 0, "not cacheable: method POST"),
        (target(host="example.org"), CONF, Way.PASS, 0, ""),
        (
            target(headers={"upgrade": "websocket"}),
            CONF,
            Way.PASS,
            0,
            "protocol switch: passed to the upstream",
        ),
        (target(client_ip="10.1.2.3"), CONF, Way.REFUSE, 0, "client 10.1.2.3 is not in cache_allow_clients"),
        (target("simple"), CONF, Way.ERROR, 400, "invalid request target"),
        (target("/simple/six/?\x00"), CONF, Way.ERROR, 400, "invalid request target"),
        (target("/simple/\r\nX: 1"), CONF, Way.ERROR, 400, "invalid request target"),
        (target("/" + "p" * 70_000), CONF, Way.ERROR, 400, "invalid request target"),
        (target("/" + "p" * 60_000), CONF, Way.ANSWER, 0, ""),
        (
            target(host="example.org"),
            make_settings(cache_offline=True),
            Way.ERROR,
            504,
            "offline: not a cached host",
        ),
        (
            target(method="PUT"),
            make_settings(cache_offline=True),
            Way.ERROR,
            504,
            "offline: not cacheable: method PUT",
        ),
    ],
)
def test_route(request_target: Target, conf: Any, way: Way, status: int, detail: str) -> None:
    where = route(request_target, conf)
    assert (where.way, where.status, where.detail) == (way, status, detail)
    assert (where.view is not None) is (way in (Way.ANSWER, Way.FORWARD))
    if where.view is not None:
        assert where.origin == "https://pypi.org"


def test_an_endpoint_route_leads_to_the_cached_host_it_names_without_the_endpoint_credentials() -> None:
    path = "/_cacheaddon/https/files.pythonhosted.org/packages/six.whl"
    headers = {"authorization": "Bearer endpoint-token", "accept": "*/*"}
    where = route(target(path, endpoint_origin=PYPI, headers=headers), CONF)
    assert (where.way, where.destination, where.path) == (
        Way.ANSWER,
        Origin("https", "files.pythonhosted.org", 443),
        "/packages/six.whl",
    )
    assert where.url == "https://files.pythonhosted.org/packages/six.whl"
    assert where.drop_credentials and where.view is not None and "authorization" not in where.view.headers
    assert where.origin == "https://files.pythonhosted.org"


def test_an_endpoint_route_to_a_host_outside_cache_hosts_is_refused() -> None:
    where = route(target("/_cacheaddon/https/evil.example/x", endpoint_origin=PYPI), CONF)
    assert (where.way, where.detail) == (Way.REFUSE, "evil.example:443 is not in cache_hosts")


def test_a_head_on_an_endpoint_fetches_the_document_it_serves_rewritten() -> None:
    where = route(target(method="HEAD", endpoint_origin=PYPI), CONF)
    assert where.view is not None and where.view.method == "GET"
    wheel = route(target("/packages/six-1.0-py3-none-any.whl", method="HEAD", endpoint_origin=PYPI), CONF)
    assert wheel.view is not None and wheel.view.method == "HEAD"  # immutable files are never rewritten
