"""The mitmproxy addons `cacheaddon run` keeps: every hook of every request is dispatched to each addon in
the chain (DumpMaster has about forty), which was up to a third of a small hit's time (notes/profile).

The master is built with all of them, so that every mitmdump flag is declared and parsed as usual; once the
options are final, the addons below that do nothing unless configured are removed when every option they
declare is at its default. What stays: core, proxyserver, next_layer, tlsconfig, dns_resolver, block,
disable_h2c, update_alt_svc, strip_dns_https_records, dumper, keepserving, errorcheck and the cache addon, and
any of the removable ones the command line or config.yaml turned on (-s scripts, -w save, --set proxyauth=,
upstream_auth, map_local, modify_headers, -r, server/client replay...). `mitmdump -s cacheaddon/addon.py`
is not affected: it keeps the full set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Addons inert at their defaults (no hooks that change a flow unless an option says so), by mitmproxy name.
# onboarding (the mitm.it pages) and command_history are on by default but serve only the interactive tools;
# `cacheaddon env` hands clients the CA.
REMOVABLE = frozenset(
    {
        "anticache",
        "anticomp",
        "blocklist",
        "browser",
        "clientplayback",
        "commandhistory",
        "comment",
        "cut",
        "export",
        "maplocal",
        "mapremote",
        "modifybody",
        "modifyheaders",
        "onboarding",
        "proxyauth",
        "readfilestdin",
        "save",
        "savehar",
        "scriptloader",
        "serverplayback",
        "stickyauth",
        "stickycookie",
        "upstreamauth",
    }
)
# Options that are on by default but only matter to the addon that declares them being there at all.
_IGNORED_DEFAULTS = {"onboarding": ("onboarding",), "commandhistory": ("command_history",)}


class _OptionRecorder:
    """Stands in for mitmproxy's Loader: records the names of the options an addon declares."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_option(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.names.append(name)

    def add_command(self, path: str, func: Callable[..., Any]) -> None:
        pass


def declared_options(addon: object) -> list[str] | None:
    """The options `addon`'s class declares in `load`, found on a fresh instance; None if that fails."""
    try:
        probe = type(addon)()
        recorder = _OptionRecorder()
        load = getattr(probe, "load", None)
        if load is not None:
            load(recorder)
    except Exception:  # an addon we cannot probe is kept
        return None
    return recorder.names


def _name(addon: object) -> str:
    return str(getattr(addon, "name", type(addon).__name__.lower()))


def prune(addons: Any, options: Any) -> list[str]:
    """Removes the removable addons whose options are all at their defaults; the names removed."""
    removed = []
    for addon in list(addons.chain):
        name = _name(addon)
        if name not in REMOVABLE:
            continue
        names = declared_options(addon)
        if names is None:
            continue
        ignored = _IGNORED_DEFAULTS.get(name, ())
        if any(options.has_changed(n) for n in names if n not in ignored and n in options):
            continue
        _remove(addons, addon)
        removed.append(name)
    return removed


def _remove(addons: Any, addon: object) -> None:
    """AddonManager.remove without its `done` hook: the addon never ran (some have an async `done`, which
    mitmproxy refuses to call from here)."""
    from mitmproxy.addonmanager import traverse

    for part in traverse([addon]):
        addons.chain = [a for a in addons.chain if a is not part]
        addons.lookup.pop(_name(part), None)


def drop_legacy_log_events(master: Any) -> bool:
    """mitmproxy turns every log record, debug ones included, into a deprecated `add_log` event: formatted,
    handed to the event loop through its self-pipe and dispatched to every addon (a few percent of a hit,
    which logs one line). None of mitmproxy's own addons listens; it is uninstalled when no addon in the chain
    does and no script (which could) is loaded. True when it was."""
    from mitmproxy.addonmanager import traverse

    events = getattr(master, "_legacy_log_events", None)
    if events is None or "scriptloader" in master.addons.lookup:
        return False
    if any(hasattr(addon, "add_log") for addon in traverse(master.addons.chain)):
        return False
    events.uninstall()
    return True
