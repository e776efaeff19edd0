"""The addon's shared tier across reconfigurations: kept while its location and timings hold."""

from __future__ import annotations

from typing import Any

from cacheaddon import fleet, settings

ENV = {"HOME": "/home/builder"}


def build(**overrides: Any) -> settings.Settings:
    return settings.from_options({**settings.defaults(), **overrides}, env=ENV)


def test_the_tier_is_kept_while_its_settings_hold_and_replaced_when_they_change() -> None:
    assert fleet.tier_for(build(), None) is None
    first = fleet.tier_for(build(cache_shared="s3://fleet-cache/ci"), None)
    assert first is not None and first.location.prefix == "ci/"
    try:
        assert fleet.tier_for(build(cache_shared="s3://fleet-cache/ci", cache_ttl=5), first) is first
        second = fleet.tier_for(build(cache_shared="s3://fleet-cache/other"), first)
        assert second is not None and second is not first
        assert (second.timeout, second.backoff) == (5, 30)
        third = fleet.tier_for(build(cache_shared="s3://fleet-cache/other", cache_upstream_timeout=9), second)
        assert third is not None and third is not second and third.timeout == 9
        assert fleet.tier_for(build(), third) is None  # cache_shared emptied: no tier
    finally:
        first.close()


def test_offline_there_is_no_tier_unless_cache_shared_offline_says_so() -> None:
    """An offline rebuild must be hermetic: a bucket is on the network too."""
    shared = {"cache_shared": "s3://fleet-cache/ci"}
    online = fleet.tier_for(build(**shared), None)
    assert online is not None
    try:
        assert fleet.tier_for(build(**shared, cache_offline=True), online) is None  # and the old one closed
        assert fleet.tier_for(build(**shared, cache_shared_offline=True), online) is online
        reading = fleet.tier_for(build(**shared, cache_offline=True, cache_shared_offline=True), None)
        assert reading is not None
        reading.close()
    finally:
        online.close()
