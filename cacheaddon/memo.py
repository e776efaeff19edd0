"""What the hit path keeps in memory between requests, so that a hit of a fresh entry needs no trip to the
database thread, no read and no hash of its body, and an endpoint's index document is not rewritten again.

Nothing here can be stale or wrong:
- records: the newest entry found under a lookup order, kept only while SQLite's data_version is the value
  read before that lookup (it changes with every commit of any other connection: this process's threads and
  every process sharing the cache directory), so a record changed or removed anywhere is read again;
- bodies: bytes hashed against their sha256 as they were read, by sha256. Content-addressed, so they are the
  right bytes for every entry that names that digest, whatever happens to the file afterwards;
- rewritten documents: by the stored document's sha256 and everything the rewrite depends on.
Each is bounded (entries or bytes), least recently used out first. Used from the event loop's thread only
(Bodies.holds, a membership test, also from the database thread).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Hashable

from cacheaddon.entry import Entry
from cacheaddon.policy import INLINE_LIMIT
from cacheaddon.store import Body

# Bodies up to this size are answered from memory (read once, hashed as read, then kept) while the byte
# budget allows; larger ones, or any beyond the budget, stream from their file through the relay.
MEMORY_LIMIT = 16 * 1024 * 1024
BODY_BUDGET = 64 * 1024 * 1024
REWRITE_BUDGET = 32 * 1024 * 1024
RECORDS = 4096


class Lru:
    """Byte strings by key within a byte budget, least recently used out first; one larger than item_limit
    is not kept."""

    def __init__(self, budget: int, item_limit: int) -> None:
        self.budget, self.item_limit = budget, item_limit
        self.size = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.item_limit or key in self._items:
            return
        self._items[key] = data
        self.size += len(data)
        while self.size > self.budget:
            self.pop_oldest()

    def pop_oldest(self) -> bytes | None:
        if not self._items:
            return None
        _, data = self._items.popitem(last=False)
        self.size -= len(data)
        return data


class Records:
    """Entries by lookup order, valid for one data_version of the store."""

    def __init__(self, limit: int = RECORDS) -> None:
        self._items: OrderedDict[tuple[str, ...], Entry] = OrderedDict()
        self._version: int | None = None
        self._limit = limit

    def get(self, order: tuple[str, ...], version: int | None) -> Entry | None:
        """The entry found under `order`, if nothing was committed since (`version`: data_version now)."""
        if version is None or version != self._version:
            self._items.clear()
            self._version = version
            return None
        entry = self._items.get(order)
        if entry is not None:
            self._items.move_to_end(order)
        return entry

    def put(self, order: tuple[str, ...], entry: Entry, version: int | None) -> None:
        """`version`: data_version as read before the lookup that found `entry`."""
        if version is None:
            return
        if version != self._version:
            self._items.clear()
            self._version = version
        self._items[order] = entry
        self._items.move_to_end(order)
        if len(self._items) > self._limit:
            self._items.popitem(last=False)


class Bodies:
    """Verified bodies by sha256, within a byte budget. Large ones (over INLINE_LIMIT) are read into memory
    only within it, and count while answers being sent still hold them (after they left the memo, or before
    they entered it): what the process holds of large bodies stays bounded however many clients it serves.
    Small ones are always answered from memory, as before; kept here, they count too."""

    def __init__(self, budget: int = BODY_BUDGET, item_limit: int = MEMORY_LIMIT) -> None:
        self.budget, self.item_limit = budget, item_limit
        self._items: OrderedDict[str, Body] = OrderedDict()
        self._size = 0  # of _items
        self._reserved = 0  # being read for an answer
        self._out: list[bytes] = []  # large bodies out of the memo that an answer may still hold

    def holds(self, sha256: str) -> bool:
        return sha256 in self._items

    def get(self, sha256: str) -> Body | None:
        """The body, with the file it was read from (if any): whoever serves it checks that the file did not
        change since, or a corrupt copy on disk would go unnoticed while its bytes are served from here."""
        body = self._items.get(sha256)
        if body is not None:
            self._items.move_to_end(sha256)
        return body

    def drop(self, sha256: str) -> None:
        body = self._items.pop(sha256, None)
        if body is not None:
            self._let_go(body)

    def reserve(self, size: int) -> int:
        """Room for a body of `size` bytes to be read into memory for an answer: the bytes reserved (to be
        released once it is read or failed), or 0 when it must be streamed from its file instead. Small
        bodies are always read into memory and reserve nothing."""
        if size <= INLINE_LIMIT or size > self.item_limit:
            return 0
        self._out = _in_use(self._out)
        if not self._make_room(size):
            return 0
        self._reserved += size
        return size

    def release(self, reserved: int) -> None:
        self._reserved -= reserved

    def keep(self, sha256: str, body: Body) -> None:
        """Keeps a body read into memory and verified (body.data) for later hits."""
        if body.data is None or body.size > self.item_limit or sha256 in self._items:
            return
        self._items[sha256] = body
        self._size += body.size
        self._make_room(0)

    def _held(self) -> int:
        return self._size + self._reserved + sum(len(data) for data in self._out)

    def _make_room(self, size: int) -> bool:
        while self._items and self._held() + size > self.budget:
            self._let_go(self._items.popitem(last=False)[1])
        return self._held() + size <= self.budget

    def _let_go(self, body: Body) -> None:
        self._size -= body.size
        if body.size > INLINE_LIMIT and body.data is not None:
            self._out.append(body.data)
        del body  # or its bytes would count as in use
        self._out = _in_use(self._out)


def _in_use(bodies: list[bytes]) -> list[bytes]:
    """Those of `bodies` that something besides the list references: an answer mitmproxy is still sending
    (its socket buffer keeps a view of the bytes). A fresh object counted the same way is the baseline, so
    this holds whatever references the interpreter's own frames take."""
    baseline = [sys.getrefcount(probe) for probe in [object()]][0]
    return [data for data in bodies if sys.getrefcount(data) > baseline]


class Memo:
    def __init__(self) -> None:
        self.records = Records()
        self.bodies = Bodies()
        # (stored document's sha256, content coding, client base, endpoint origin) -> the rewritten document
        self.rewrites = Lru(REWRITE_BUDGET, REWRITE_BUDGET // 4)
