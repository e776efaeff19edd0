"""Which origins failed recently, so that an outage costs a build one timeout, not one per request."""

from __future__ import annotations

import logging

from cacheaddon.policy import Backoff

logger = logging.getLogger(__name__)


class HostHealth:
    """After a failure an origin (scheme://host:port) backs off for a while: what the cache holds is served
    at once, what it does not is answered 503 at once, and at most one background probe at a time asks
    whether it is back. Time is passed in, never read. The log says when an origin starts failing and when
    it answers again, once each: not once per request answered from the cache meanwhile."""

    def __init__(self) -> None:
        self._down_until: dict[str, float] = {}
        self._probing: set[str] = set()
        self._failing: set[str] = set()  # failed since it last answered

    def failed(self, origin: str, now: float, backoff: int, reason: str = "") -> None:
        self._down_until[origin] = now + backoff
        if origin not in self._failing:
            self._failing.add(origin)
            because = f" ({reason})" if reason else ""
            logger.warning(
                "%s is failing%s: answering from the cache, asking it again at most once at a time "
                "(back-off %d s)",
                origin,
                because,
                backoff,
            )

    def succeeded(self, origin: str) -> None:
        self._down_until.pop(origin, None)
        if origin in self._failing:
            self._failing.discard(origin)
            logger.warning("%s answers again", origin)

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
