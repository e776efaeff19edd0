"""The RFC 9211 `Cache-Status` value of an answer, from its outcome and detail (the X-Cache pair). Pure.

    Cache-Status: cacheaddon; hit; detail="fresh"
    Cache-Status: cacheaddon; fwd=miss; stored; detail="miss"
    Cache-Status: cacheaddon; fwd=stale; fwd-status=304; stored; detail="revalidated: 304"
    Cache-Status: cacheaddon; fwd=stale; detail="stale: upstream connection refused"

`hit`: answered from the cache without asking the upstream (RFC 9211 2.1), so a stale answer during a
back-off or offline is a hit; `fwd`: the upstream was asked, and why (2.2): miss, stale, method (another
method than GET/HEAD), partial (a Range of something not cached); `stored`: the answer was stored (2.5);
`detail` (2.8): the X-Cache-Detail text. An answer the proxy made without asking anyone (offline, back-off)
carries only `detail`.
"""

from __future__ import annotations

from cacheaddon.policy import Outcome

NAME = "cacheaddon"
# STALE answers given without asking the upstream.
_NOT_FORWARDED_STALE = frozenset({"stale: offline mode", "stale: upstream failing recently"})


def value(outcome: Outcome, detail: str, stored: bool = False) -> str:
    params: list[str] = []
    # What comes after "; " is a note on the answer (an answer negotiated from another Accept's, a document
    # the guard filtered), not how it was had.
    reason = detail.split("; ", 1)[0]
    if outcome is Outcome.HIT:
        params.append("hit")
    elif outcome is Outcome.STALE:
        if reason in _NOT_FORWARDED_STALE:
            params.append("hit")
        else:
            params.append("fwd=stale")
    elif outcome is Outcome.REVALIDATED:
        params += ["fwd=stale", "fwd-status=304"]
    elif outcome is Outcome.MISS:
        forwarded = _miss_forward(detail)
        if forwarded is not None:
            params.append(f"fwd={forwarded}")
    if stored or outcome is Outcome.REVALIDATED:
        params.append("stored")
    params.append(f"detail={_sf_string(detail)}")
    return "; ".join([NAME, *params])


def _miss_forward(detail: str) -> str | None:
    if detail.startswith(("offline", "upstream failing recently")):
        return None  # answered by the proxy itself
    if detail.startswith("not cacheable: method"):
        return "method"
    if detail.startswith("range request"):
        return "partial"
    if detail == "refreshed: entry was stale":
        return "stale"
    return "miss"


def _sf_string(text: str) -> str:
    """An RFC 8941 sf-string: printable ASCII only, quotes and backslashes escaped."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
