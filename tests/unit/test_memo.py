"""The hit path's memory: bounded, least recently used out first, records never kept across a commit, and
large bodies counted while answers still hold them."""

from __future__ import annotations

from cacheaddon.entry import Entry
from cacheaddon.memo import Bodies, Lru, Records
from cacheaddon.policy import INLINE_LIMIT
from cacheaddon.store import Body

MIB = 1024 * 1024


def entry(name: str) -> Entry:
    return Entry(f"https://h/{name}", 200, "OK", (), 1000.0, 1, "0" * 64)


def test_lru_keeps_the_most_recently_used_within_its_budget() -> None:
    lru = Lru(budget=10, item_limit=5)
    lru.put("a", b"aaaa")
    lru.put("b", b"bbbb")
    assert lru.get("a") == b"aaaa"  # now the most recently used
    lru.put("c", b"cccc")  # 12 bytes: the least recently used goes
    assert ("a" in lru, "b" in lru, "c" in lru) == (True, False, True)
    assert lru.size == 8
    lru.put("d", b"dddddd")  # over item_limit: not kept
    assert "d" not in lru and lru.size == 8


def test_records_are_kept_only_while_the_data_version_stays() -> None:
    records = Records(limit=2)
    order = ("shared", "coded")
    records.put(order, entry("a"), version=7)
    assert records.get(order, 7) == entry("a")
    assert records.get(order, 8) is None  # something was committed since
    assert records.get(order, 7) is None  # and what was kept before is gone for good
    records.put(order, entry("a"), version=None)  # no version could be read: nothing is kept
    assert records.get(order, None) is None


def test_a_record_looked_up_before_another_commit_is_not_served_after_it() -> None:
    records = Records()
    records.put(("k",), entry("old"), version=3)  # looked up when the version was 3
    records.put(("j",), entry("j"), version=4)  # another lookup saw a commit since
    assert records.get(("k",), 4) is None
    assert records.get(("j",), 4) == entry("j")


def test_records_are_bounded() -> None:
    records = Records(limit=2)
    for name in "abc":
        records.put((name,), entry(name), version=1)
    assert [records.get((n,), 1) is not None for n in "abc"] == [False, True, True]


def test_small_bodies_are_always_read_into_memory_and_reserve_nothing() -> None:
    bodies = Bodies(budget=2 * MIB, item_limit=4 * MIB)
    assert bodies.reserve(INLINE_LIMIT) == 0
    bodies.keep("s", Body(b"x" * 100, None, 100))
    assert bodies.get("s") == Body(b"x" * 100, None, 100) and bodies.holds("s")


def test_large_bodies_are_read_into_memory_only_within_the_budget() -> None:
    bodies = Bodies(budget=10 * MIB, item_limit=4 * MIB)
    assert bodies.reserve(5 * MIB) == 0  # over the item limit: streamed from its file
    first = bodies.reserve(3 * MIB)
    second = bodies.reserve(3 * MIB)
    third = bodies.reserve(3 * MIB)
    assert (first, second, third) == (3 * MIB, 3 * MIB, 3 * MIB)
    assert bodies.reserve(3 * MIB) == 0  # 12 MiB would be held at once
    bodies.release(first)
    assert bodies.reserve(3 * MIB) == 3 * MIB


def test_a_kept_body_makes_room_unless_an_answer_still_holds_it() -> None:
    bodies = Bodies(budget=10 * MIB, item_limit=4 * MIB)
    held = [bytes(3 * MIB)]  # stands for an answer mitmproxy is still sending
    for name in ("a", "b", "c"):
        reserved = bodies.reserve(3 * MIB)
        data = held[0] if name == "a" else bytes(3 * MIB)
        bodies.release(reserved)
        bodies.keep(name, Body(data, None, len(data)))
        del data
    assert bodies.reserve(3 * MIB) == 3 * MIB  # "a" and "b" left the memo; "a" still counts
    assert (bodies.holds("a"), bodies.holds("b"), bodies.holds("c")) == (False, False, True)
    assert bodies.reserve(3 * MIB) == 3 * MIB  # "c" left too: nothing held it
    assert not bodies.holds("c")
    assert bodies.reserve(3 * MIB) == 0  # "a" (held) and two reservations: 12 MiB with this one
    held.clear()  # that answer was sent
    assert bodies.reserve(3 * MIB) == 3 * MIB


def test_a_dropped_body_no_longer_counts_once_its_answers_are_sent() -> None:
    bodies = Bodies(budget=4 * MIB, item_limit=4 * MIB)
    data = bytes(3 * MIB)
    bodies.keep("a", Body(data, None, len(data)))
    bodies.drop("a")
    assert not bodies.holds("a")
    assert bodies.reserve(3 * MIB) == 0  # an answer still holds its bytes
    del data
    assert bodies.reserve(3 * MIB) == 3 * MIB
