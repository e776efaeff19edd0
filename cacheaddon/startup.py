"""A bad value for one of our options stops `mitmdump -s cacheaddon/addon.py` with one line, as under
`cacheaddon run`, instead of leaving a proxy running without the cache.

mitmproxy 12.3 defers `--set` values of a script's options until the script has declared them, and parses
them in `AddonManager.register` right after our `load`: a value it cannot parse (`cache_ttl=abc`,
`cache_offline=yes`) raises out of its script watcher task, where nobody sees it, and the script is never
added to the chain. A value our `configure` refuses is logged with a traceback by the script loader, and the
proxy starts anyway unless mitmproxy's startup error check happens to run after it. mitmproxy offers an addon
no exit status other than SystemExit (what its own ErrorCheck addon raises), so that is what stop() raises.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from mitmproxy import exceptions

# ctx.master attribute, set once the proxy runs: from then on a bad value is refused (mitmproxy rolls the
# change back), never a reason to stop a running proxy; a reloaded script's new instance must know it too.
RUNNING = "_cacheaddon_running"


def stop(message: str) -> NoReturn:
    """One line naming the option, then exit status 1 (mitmproxy's own format for a bad option)."""
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def apply_deferred(options: Any) -> None:
    """Parses the `--set` values mitmproxy deferred for options declared so far, now, while a bad one can
    still stop the proxy (in load, before mitmproxy's own attempt escapes unseen)."""
    try:
        options.process_deferred()
    except (exceptions.OptionsError, TypeError) as exc:  # TypeError: a config.yaml value of the wrong type
        stop(str(exc))


def is_running(master: Any) -> bool:
    return bool(getattr(master, RUNNING, False))


def mark_running(master: Any) -> None:
    setattr(master, RUNNING, True)
