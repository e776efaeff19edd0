"""Which mitmproxy addons `cacheaddon run` keeps: a real DumpMaster with every default addon, pruned once its
options are final."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from cacheaddon import leanaddons

ALWAYS = {
    "core",
    "proxyserver",
    "nextlayer",
    "tlsconfig",
    "dnsresolver",
    "block",
    "disableh2c",
    "updatealtsvc",
    "stripdnshttpsrecords",
    "dumper",
    "keepserving",
    "errorcheck",
}


@pytest.fixture
def master() -> Iterator[DumpMaster]:
    loop = asyncio.new_event_loop()
    try:
        yield DumpMaster(options.Options(), loop=loop, with_termlog=False)
    finally:
        loop.close()


def _names(m: DumpMaster) -> set[str]:
    return {leanaddons._name(a) for a in m.addons.chain}


def test_defaults_keep_only_what_a_proxy_needs(master: DumpMaster) -> None:
    before = _names(master)
    removed = leanaddons.prune(master.addons, master.options)
    assert _names(master) == ALWAYS
    assert set(removed) == before - ALWAYS
    assert len(removed) >= 20


@pytest.mark.parametrize(
    ("setting", "kept"),
    [
        ({"save_stream_file": "/tmp/flows"}, "save"),
        ({"proxyauth": "user:pass"}, "proxyauth"),
        ({"upstream_auth": "user:pass"}, "upstreamauth"),
        ({"modify_headers": ["/~q/X-Test/1"]}, "modifyheaders"),
        ({"map_local": ["|example.com/x|/tmp"]}, "maplocal"),
        ({"anticache": True}, "anticache"),
        ({"stickycookie": ".*"}, "stickycookie"),
        ({"onboarding_host": "setup.example"}, "onboarding"),
    ],
)
def test_an_addon_turned_on_is_kept(master: DumpMaster, setting: dict[str, object], kept: str) -> None:
    master.options.update(**setting)
    removed = leanaddons.prune(master.addons, master.options)
    assert kept in _names(master)
    assert kept not in removed
    assert _names(master) == ALWAYS | {kept}


def test_an_addon_that_cannot_be_probed_is_kept() -> None:
    class Needy:
        name = "anticache"

        def __init__(self, required: object) -> None:
            pass

    assert leanaddons.declared_options(Needy(1)) is None


def _legacy_installed(m: DumpMaster) -> bool:
    return m._legacy_log_events in logging.getLogger().handlers


def test_log_records_are_not_turned_into_add_log_events_nobody_listens_to(master: DumpMaster) -> None:
    assert _legacy_installed(master)
    leanaddons.prune(master.addons, master.options)
    assert leanaddons.drop_legacy_log_events(master)
    assert not _legacy_installed(master)


def test_an_addon_listening_to_add_log_keeps_them(master: DumpMaster) -> None:
    class Listener:
        def add_log(self, entry: object) -> None:
            pass

    master.addons.add(Listener())
    leanaddons.prune(master.addons, master.options)
    assert not leanaddons.drop_legacy_log_events(master)
    assert _legacy_installed(master)
    master._legacy_log_events.uninstall()


def test_a_script_could_listen_to_add_log_so_they_stay(master: DumpMaster) -> None:
    assert "scriptloader" in master.addons.lookup  # not pruned: as when -s was given
    assert not leanaddons.drop_legacy_log_events(master)
    master._legacy_log_events.uninstall()
