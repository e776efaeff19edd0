"""Which upstream hosts failed recently, so that an outage costs a build one timeout, not one per request."""

from __future__ import annotations


class HostHealth:
    """After a failure an origin (scheme://host:port; the argument named `host` below) backs off for a while:
    stale entries are served at once and at most one background probe at a time asks whether it is back.
    Time is passed in, never read."""

    def __init__(self) -> None:
        self._down_until: dict[str, float] = {}
        self._probing: set[str] = set()

    def failed(self, host: str, now: float, backoff: int) -> None:
        self._down_until[host] = now + backoff

    def succeeded(self, host: str) -> None:
        self._down_until.pop(host, None)

    def backing_off(self, host: str, now: float) -> bool:
        until = self._down_until.get(host)
        if until is None:
            return False
        if now >= until:
            del self._down_until[host]
            return False
        return True

    def start_probe(self, host: str) -> bool:
        """True when the caller may probe now (no other probe of this host is under way)."""
        if host in self._probing:
            return False
        self._probing.add(host)
        return True

    def end_probe(self, host: str) -> None:
        self._probing.discard(host)
