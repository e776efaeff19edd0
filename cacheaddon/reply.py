"""The currency between the service, the endpoints and the addon: what to put on a flow."""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http

from cacheaddon import responses
from cacheaddon.policy import Decision, Outcome
from cacheaddon.relay import Job


@dataclass
class Reply:
    """A finished response, or a relay job that streams one; outcome and detail are its X-Cache fields,
    stored whether the upstream's answer was stored (Cache-Status' `stored`)."""

    outcome: Outcome
    detail: str
    response: http.Response | None = None
    job: Job | None = None
    stored: bool = False
    sha256: str | None = None  # of the stored body it sends whole, unchanged (what memos of it are keyed by)

    async def discard(self) -> None:
        """Releases what an unused reply holds: its open file, or its upstream stream."""
        if self.job is not None:
            await self.job.aclose()


def error(decision: Decision, url: str) -> Reply:
    """Our error page for an ERROR decision, naming the URL and the reason."""
    return Reply(decision.outcome, decision.reason, responses.error(decision.status, url, decision.reason))
