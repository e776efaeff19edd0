"""Which origins failed recently, so that an outage costs a build one timeout, not one per request."""

from __future__ import annotations

from cacheaddon.policy import Backoff


class HostHealth:
    """After a failure an origin (scheme://host:port) backs off for a while: what the cache holds is served
    at once, what it does not is answered 503 at once, and at most one background probe at a time asks
    whether it is back. Time is passed in, never read."""

    def __init__(self) -> None:
        self._down_until: dict[str, float] = {}
        self._probing: set[str] = set()

    def failed(self, origin: str, now: float, backoff: int) -> None:
        self._down_until[origin] = now + backoff

    def succeeded(self, origin: str) -> None:
        self._down_until.pop(origin, None)

    def backoff(self, origin: str, now: float) -> Backoff | None:
        """The origin's back-off, while it lasts."""
        until = self._down_until.get(origin)
        if until is None:
            return None
        if now >= until:
            del self._down_until[origin]
            return None
        return Backoff(origin, until)

    def backing_off(self, origin: str, now: float) -> bool:
        return self.backoff(origin, now) is not None

    def start_probe(self, origin: str) -> bool:
        """True when the caller may probe now (no other probe of this origin is under way)."""
        if origin in self._probing:
            return False
        self._probing.add(origin)
        return True

    def end_probe(self, origin: str) -> None:
        self._probing.discard(origin)
