"""Leases across processes: the pure verdict with `now` injected, and the lease files in a temporary
directory (acquire, renew, release, take-over of a dead holder's lease, never of a live one's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cacheaddon.leases import (
    LEFTOVER_AGE,
    STALE_AFTER,
    Holder,
    Lease,
    Leases,
    Seen,
    Verdict,
    judge,
    lease_name,
    leftovers,
    pid_alive,
)

NOW = 1_000_000.0


def seen(renewed: float = NOW, alive: bool | None = True) -> Seen:
    return Seen(Holder("t", 1234, "here", NOW - 60), renewed, alive)


@pytest.mark.parametrize(
    ("renewed", "alive", "verdict"),
    [
        (NOW, True, Verdict.HELD),
        (NOW - STALE_AFTER + 0.1, True, Verdict.HELD),  # renewed a moment ago
        (NOW - STALE_AFTER - 0.1, True, Verdict.EXPIRED),  # stopped renewing: hung, or its clock stopped
        (NOW, False, Verdict.EXPIRED),  # its pid is gone on this host: no need to wait
        (NOW, None, Verdict.HELD),  # another host: only renewals tell
        (NOW - STALE_AFTER - 0.1, None, Verdict.EXPIRED),
        (NOW + 3.0, True, Verdict.HELD),  # renewed "in the future" (a clock step): still held
    ],
)
def test_judge(renewed: float, alive: bool | None, verdict: Verdict) -> None:
    assert judge(seen(renewed, alive), NOW) is verdict


def test_judge_honours_a_given_staleness() -> None:
    assert judge(seen(NOW - 2.0), NOW, stale_after=1.0) is Verdict.EXPIRED
    assert judge(seen(NOW - 2.0), NOW, stale_after=3.0) is Verdict.HELD


def test_lease_names_differ_by_key_and_are_file_names() -> None:
    a, b = lease_name("GET https://x/a\naccept=*/*"), lease_name("GET https://x/a\naccept=text/html")
    assert a != b and a.isalnum() and len(a) == 40


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(0)


def test_one_holder_at_a_time(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    mine = leases.acquire("k")
    assert isinstance(mine, Lease)
    other = leases.acquire("k")
    assert isinstance(other, Seen)
    assert other.holder == mine.holder and other.alive is True
    assert judge(other, time.time()) is Verdict.HELD
    assert isinstance(leases.acquire("another key"), Lease)

    leases.release(mine)
    assert leases.look("k") is None
    assert isinstance(leases.acquire("k"), Lease)


def test_renewal_moves_the_mtime_and_notices_a_lost_lease(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    mine = leases.acquire("k")
    assert isinstance(mine, Lease)
    path = tmp_path / "flights" / "k.lease"
    os.utime(path, (NOW, NOW))
    assert leases.renew(mine)
    assert path.stat().st_mtime > NOW
    path.unlink()
    assert not leases.renew(mine)


def write_lease(directory: Path, name: str, holder: Holder, mtime: float) -> None:
    path = directory / f"{name}.lease"
    path.write_text(json.dumps(holder.to_json()))
    os.utime(path, (mtime, mtime))


def test_a_dead_holders_lease_is_taken_over(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    write_lease(leases.directory, "k", Holder("dead", dead_pid(), leases.host, 1.0), time.time())
    leases.announce(Lease("k", Holder("dead")), {"path": "/nowhere"})
    found = leases.look("k")
    assert found is not None and found.alive is False
    assert judge(found, time.time()) is Verdict.EXPIRED

    taken = leases.take_over("k", found)
    assert isinstance(taken, Lease) and taken.holder.pid == os.getpid()
    assert leases.announced("k", found.holder) is None, "the dead holder's announcement stayed"
    assert sorted(p.name for p in leases.directory.iterdir()) == ["k.lease"]


def test_a_lease_renewed_since_it_was_judged_is_not_taken_over(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    holder = Holder("slow", os.getpid(), "elsewhere", 1.0)
    write_lease(leases.directory, "k", holder, NOW)
    judged = leases.look("k")
    assert judged is not None and judge(judged, NOW + STALE_AFTER + 1) is Verdict.EXPIRED
    os.utime(leases.directory / "k.lease")  # its holder renews it just before the take-over

    kept = leases.take_over("k", judged)
    assert isinstance(kept, Seen) and kept.holder == holder
    assert (leases.directory / "k.lease").exists()


def test_a_lease_taken_over_meanwhile_is_not_released_by_its_old_holder(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    old = leases.acquire("k")
    assert isinstance(old, Lease)
    (leases.directory / "k.lease").unlink()  # taken over by another process...
    new = leases.acquire("k")  # ...which holds it now
    assert isinstance(new, Lease)
    leases.release(old)
    now_seen = leases.look("k")
    assert now_seen is not None and now_seen.holder == new.holder


def test_announcements(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    mine = leases.acquire("k")
    assert isinstance(mine, Lease)
    assert leases.announced("k", mine.holder) is None
    leases.announce(mine, {"path": "/tmp/x.part", "head": {"status": 200}})
    assert leases.announced("k", mine.holder) == {"path": "/tmp/x.part", "head": {"status": 200}}
    assert leases.announced("k", Holder()) is None  # a lease still being written names no announcement
    leases.release(mine)
    assert leases.announced("k", mine.holder) is None


def test_an_unwritten_lease_counts_as_held_until_it_goes_stale(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    path = leases.directory / "k.lease"
    path.write_bytes(b"")  # created with O_EXCL, its holder not done writing it
    found = leases.look("k")
    assert found is not None and found.holder == Holder() and found.alive is None
    assert judge(found, found.renewed + 1) is Verdict.HELD
    assert judge(found, found.renewed + STALE_AFTER + 1) is Verdict.EXPIRED


def test_old_files_are_swept_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "flights"
    directory.mkdir()
    old, new = directory / "a.lease", directory / "b.x.head"
    old.write_text("{}")
    new.write_text("{}")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    Leases(directory)
    assert not old.exists() and new.exists()


def test_leftovers_are_what_no_download_in_progress_needs(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "flights")
    live = leases.acquire("live")
    assert isinstance(live, Lease)
    leases.announce(live, {"path": "/tmp/live.part"})
    gone = leases.acquire("gone")
    assert isinstance(gone, Lease)
    leases.announce(gone, {"path": "/tmp/gone.part"})
    (leases.directory / "gone.aaaa.partial").write_text("{")  # a holder that died while announcing
    assert leftovers(leases.directory, time.time()) == []  # all just written

    later = time.time() + 2 * LEFTOVER_AGE
    path = leases.directory / "live.lease"
    os.utime(path, (later, later))  # renewed all along: its announcement, written once, stays needed
    found = sorted(p.name for p in leftovers(leases.directory, later))
    assert found == sorted(["gone.aaaa.partial", f"gone.{gone.holder.token}.head", "gone.lease"])
    assert leftovers(tmp_path / "no such directory", later) == []


def test_a_lease_that_cannot_be_written_is_not_left_behind(tmp_path: Path) -> None:
    """A full disk fails the lease's write after its file was created: an empty lease left there would hold
    the key against every process for STALE_AFTER seconds. (A file size limit makes the write fail.)"""
    leases = Leases(tmp_path)
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from cacheaddon.leases import Leases\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
        "try:\n"
        "    Leases(Path(sys.argv[1])).acquire('k')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "OSError"
    assert leases.look("k") is None
