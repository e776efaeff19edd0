"""The stored record of one cached response; its body lives in the store under its sha256."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

logger = logging.getLogger(__name__)

# Bump when the record's meaning changes: an older or newer record then reads as a miss, never a crash.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Entry:
    url: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]  # the upstream's, minus hop-by-hop fields and Set-Cookie
    stored_at: float  # when the upstream last sent or confirmed (304) this answer
    size: int
    sha256: str
    # Request header values this answer was chosen by (the response's Vary), beyond those in the key.
    vary: tuple[tuple[str, str], ...] = ()
    # Marked stale by `cacheaddon refresh`: revalidated on the next request, still a fallback in an outage.
    invalidated: bool = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def etag(self) -> str | None:
        return self.header("etag")

    @property
    def last_modified(self) -> str | None:
        return self.header("last-modified")

    def refreshed(self, now: float, new_headers: tuple[tuple[str, str], ...] = ()) -> Entry:
        """The entry after a 304: headers it sent replace ours (RFC 9111 4.3.4), the body stays."""
        if not new_headers:
            return replace(self, stored_at=now, invalidated=False)
        names = {k.lower() for k, _ in new_headers}
        kept = tuple((k, v) for k, v in self.headers if k.lower() not in names)
        return replace(self, stored_at=now, headers=kept + new_headers, invalidated=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "url": self.url,
            "status": self.status,
            "reason": self.reason,
            "headers": [list(h) for h in self.headers],
            "stored_at": self.stored_at,
            "size": self.size,
            "sha256": self.sha256,
            "vary": [list(v) for v in self.vary],
            **({"invalidated": True} if self.invalidated else {}),
        }

    @classmethod
    def from_record(cls, record: object) -> Entry | None:
        if not isinstance(record, dict) or record.get("v") != FORMAT_VERSION:
            return None
        try:
            stored_at, size = float(record["stored_at"]), int(record["size"])
            if not math.isfinite(stored_at) or size < 0:  # an age that cannot be computed fails every hit
                raise ValueError(f"stored_at {stored_at}, size {size}")
            return cls(
                url=str(record["url"]),
                status=int(record["status"]),
                reason=str(record["reason"]),
                headers=tuple((str(k), str(v)) for k, v in record["headers"]),
                stored_at=stored_at,
                size=size,
                sha256=str(record["sha256"]),
                vary=tuple((str(k), str(v)) for k, v in record["vary"]),
                invalidated=record.get("invalidated") is True,
            )
        except (KeyError, TypeError, ValueError):
            logger.warning("unreadable cache record: treated as a miss")
            return None
