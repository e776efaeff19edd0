"""Settings, entries and request views for the unit tests of the pure modules."""

from __future__ import annotations

from typing import Any

from cacheaddon import keys, settings
from cacheaddon.entry import Entry
from cacheaddon.keys import RequestView


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
    hidden = tuple((name, keys.vary_digest(value)) for name, value in vary)
    return Entry(url, status, "OK", headers, stored_at, 3, "0" * 64, hidden)


def view(url: str = URL, method: str = "GET", **headers: str) -> RequestView:
    return RequestView(method, url, {k.replace("_", "-").lower(): v for k, v in headers.items()})

