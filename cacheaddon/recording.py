"""The record of a build (option cache_record): one JSON line per entry the proxy answered from or stored in
the cache, which `cacheaddon bundle create` turns into a bundle of exactly those entries.

    {"v": 1, "key": "...", "url": "https://...", "status": 200, "size": 1234, "sha256": "...", "at": 1.7e9}

Lines are appended with one write each to a file opened O_APPEND, so several proxy processes may record to
one file; a line cut short by a crash is skipped when the record is read.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cacheaddon.entry import Entry

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Recorded:
    key: str
    url: str
    status: int
    size: int
    sha256: str
    at: float


class Recorder:
    def __init__(self, path: Path) -> None:
        """Raises OSError when the file cannot be opened for appending."""
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def write(self, key: str, entry: Entry, now: float | None = None) -> None:
        line = {
            "v": FORMAT_VERSION,
            "key": key,
            "url": entry.url,
            "status": entry.status,
            "size": entry.size,
            "sha256": entry.sha256,
            "at": time.time() if now is None else now,
        }
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read(path: Path) -> tuple[list[Recorded], int]:
    """The record's lines, first occurrence of each key kept, and the number of unreadable lines.
    Raises OSError when the file cannot be read, ValueError when it is not a record at all."""
    found: dict[str, Recorded] = {}
    bad = lines = 0
    with open(path, "rb") as f:
        for raw in f:
            lines += 1
            try:
                item = json.loads(raw)
                recorded = Recorded(
                    str(item["key"]),
                    str(item["url"]),
                    int(item["status"]),
                    int(item["size"]),
                    str(item["sha256"]),
                    float(item["at"]),
                )
                if item.get("v") != FORMAT_VERSION:
                    raise ValueError("unknown version")
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
                bad += 1
                continue
            found.setdefault(recorded.key, recorded)
    if lines and bad == lines:
        raise ValueError(f"{path} is not a cacheaddon record (no line of it is readable)")
    return list(found.values()), bad
