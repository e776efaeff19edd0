"""`cacheaddon run --workers N`: several processes answer on one port, a dead worker is replaced, SIGTERM
stops them all, a bad option still exits 1 with one line. The proxy answers by itself (offline: a 504 from
the addon for a cached host), so no upstream is needed; which process served a connection is read from /proc
(the socket's inode among the worker's descriptors)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import free_port

pytestmark = pytest.mark.e2e

CACHEADDON = Path(sys.executable).parent / "cacheaddon"
DEADLINE = 60.0


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found |= {int(c) for c in f.read().split()}
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate: object, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ask(port: int, sock: socket.socket | None = None) -> tuple[socket.socket, bytes]:
    """One request on a (new) keep-alive connection; the connection stays open for _owner()."""
    conn = sock or socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(b"GET http://127.0.0.2:9/probe HTTP/1.1\r\nHost: 127.0.0.2:9\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            break
        head += chunk
    return conn, head


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _server_side_inodes(port: int, state: str = "01") -> dict[int, int]:
    """inode -> the client port, of the proxy's end of each established connection to `port` (state 0A:
    its listening sockets)."""
    found = {}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == state and int(fields[1].split(":")[1], 16) == port:
                found[int(fields[9])] = int(fields[2].split(":")[1], 16)
    return found


def _start(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    argv = [str(CACHEADDON), "run", "--workers", "2", "-p", str(port)]
    argv += ["--set", f"confdir={tmp_path / 'conf'}", "--set", f"cache_dir={tmp_path / 'cache'}"]
    argv += ["--set", "cache_hosts=127.0.0.2"]
    argv += ["--set", "cache_offline=true", *extra]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    log = open(tmp_path / "run.log", "ab")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    log.close()
    return proc


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = _start(tmp_path, port)
    try:
        both = lambda: len(_server_side_inodes(port, "0A")) == 2 and _answers(port)  # noqa: E731
        _wait_for(both, "two workers listening")
        yield proc, port
    finally:
        workers = _children(proc.pid) if proc.poll() is None else set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in workers:  # by PID, in case the supervisor left one behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _answers(port: int) -> bool:
    try:
        conn, head = _ask(port)
    except OSError:
        return False
    conn.close()
    return head.startswith(b"HTTP/1.1 504") and b"X-Cache: MISS" in head


def test_two_workers_answer_on_one_port(
    supervisor: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    proc, port = supervisor
    workers = _children(proc.pid)
    assert len(workers) == 2
    log = (tmp_path / "run.log").read_text()
    assert "cacheaddon run: 2 workers sharing the listen addresses" in log
    # 24 connections held open at once: the kernel spreads them over both workers (all on one: 2^-23).
    conns = []
    try:
        for _ in range(24):
            conn, head = _ask(port)
            conns.append(conn)
            assert head.startswith(b"HTTP/1.1 504") and b"X-Cache: MISS" in head
        served = _server_side_inodes(port)
        by_worker = {pid: len(_socket_inodes(pid) & set(served)) for pid in workers}
        assert sum(by_worker.values()) == 24, by_worker
        assert all(n > 0 for n in by_worker.values()), by_worker
    finally:
        for conn in conns:
            conn.close()


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(
    supervisor: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    proc, port = supervisor
    before = _children(proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: not _alive(victim), "the killed worker to die")
    # The other worker answers meanwhile. A connection the kernel queued on the replacement's listener while
    # that process starts can be reset (SO_REUSEPORT spreads connections over every bound listener): a
    # client's retry is answered, and every request gets an answer within two tries.
    for _ in range(10):
        assert _answers(port) or _answers(port)
    _wait_for(lambda: victim not in _children(proc.pid), "the killed worker reaped")
    _wait_for(lambda: len(_server_side_inodes(port, "0A")) == 2, "a new worker listening")
    replacement = (_children(proc.pid) - before).pop()
    _wait_for(lambda: f"exited with status -{signal.SIGKILL}" in (tmp_path / "run.log").read_text(), "log")
    # The replacement serves too: connections until one lands on it (bounded).
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        conn, head = _ask(port)
        try:
            assert head.startswith(b"HTTP/1.1 504")
            mine = _socket_inodes(replacement) & set(_server_side_inodes(port))
        finally:
            conn.close()
        if mine:
            break
    else:
        raise AssertionError("the replacement worker never answered")
    assert proc.poll() is None


def test_sigterm_stops_every_worker(supervisor: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = supervisor
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers to exit", 15)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_bad_option_exits_1_with_one_line_and_no_restart(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, port, "--set", "cache_ttl=abc")
    try:
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [line for line in (tmp_path / "run.log").read_text().splitlines() if line.strip()]
    assert lines == ["cacheaddon run: Failed to parse option cache_ttl: not an integer: abc"]


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_worker_count_is_refused(value: str) -> None:
    done = subprocess.run(
        [str(CACHEADDON), "run", "--workers", value], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr == f"cacheaddon run: --workers: expected a number >= 1 or auto, not {value!r}\n"


def test_workers_exit_when_the_supervisor_is_killed(supervisor: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = supervisor
    workers = _children(proc.pid)
    proc.kill()  # no chance to stop them itself
    proc.wait(10)
    _wait_for(lambda: not any(_alive(pid) for pid in workers), "orphaned workers to exit", 30)
    _wait_for(lambda: not _server_side_inodes(port, "0A"), "the port to close", 10)
