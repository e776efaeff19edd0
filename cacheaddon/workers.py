"""`cacheaddon run --workers N`: N proxy processes on the same listen addresses, and their supervisor.

Each worker is `cacheaddon run` itself (a new interpreter, the same arguments), told by the environment that
it is a worker: its TCP listeners then set SO_REUSEPORT, so the kernel spreads connections over the workers,
and it reports through an inherited pipe once it listens. Workers share cache_dir (diskcache is safe across
processes) and confdir; the supervisor creates mitmproxy's CA there before the first worker starts, so that
no two workers write one. A worker that fails before any has ever listened ends the run with its status (a
bad option prints its one line and exits 1, as without workers); one that dies later is started again, with
a growing pause when it keeps dying at once. SIGINT and SIGTERM stop every worker, then the supervisor.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cacheaddon import mitmca

WORKER_ENV = "CACHEADDON_WORKER_READY_FD"  # set in a worker: the pipe to write one byte to once listening
_QUICK_DEATH = 10.0  # seconds: a worker that dies sooner than this after its start is restarted with back-off
_MAX_PAUSE = 30.0
_STOP_GRACE = 10.0  # seconds workers get to finish after SIGTERM before SIGKILL


def worker_count(text: str) -> int:
    """The value of --workers: a positive number, or `auto` for the number of cores."""
    if text == "auto":
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--workers: expected a number >= 1 or auto, not {text!r}")
    return int(text)


def worker_fd() -> int | None:
    """In a worker: the readiness pipe's descriptor (and the variable is cleared for what it starts)."""
    value = os.environ.pop(WORKER_ENV, None)
    if not value or not value.isdigit():
        return None
    _die_with_parent()
    return int(value)


def _die_with_parent() -> None:
    """A worker gets SIGTERM when its supervisor dies, even by SIGKILL: no orphan keeps the port (Linux)."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def share_listen_ports() -> None:
    """Makes mitmproxy's TCP listeners set SO_REUSEPORT (only in workers, only for mitmproxy's own servers):
    its AsyncioServerInstance.listen calls asyncio.start_server without it, so its module gets an asyncio
    whose start_server adds it."""
    import asyncio

    from mitmproxy.proxy import mode_servers

    shim = types.ModuleType("asyncio")
    shim.__dict__.update(vars(asyncio))
    shim.start_server = functools.partial(asyncio.start_server, reuse_port=True)  # type: ignore[attr-defined]
    mode_servers.asyncio = shim  # type: ignore[attr-defined]


class ReadySignal:
    """A worker's last addon: once every server listens (`running` runs after proxyserver's), tell the
    supervisor."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def running(self) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, b"1")
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen[bytes]
    ready_fd: int
    started: float
    ready: bool = False


@dataclass
class Supervisor:
    count: int
    argv: list[str]  # the worker's command line
    workers: dict[int, _Worker] = field(default_factory=dict)  # by worker number
    stopping: threading.Event = field(default_factory=threading.Event)
    signal_number: int = 0
    ever_ready: bool = False
    quick_deaths: dict[int, int] = field(default_factory=dict)
    restart_at: dict[int, float] = field(default_factory=dict)

    def spawn(self, number: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                env={**os.environ, WORKER_ENV: str(write_fd)},
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker = _Worker(number, proc, read_fd, time.monotonic())
        self.workers[number] = worker
        return worker

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal_number = self.signal_number or signum
        self.stopping.set()

    def _poll_ready(self, timeout: float) -> None:
        waiting = {w.ready_fd: w for w in self.workers.values() if not w.ready}
        if not waiting:
            self.stopping.wait(timeout)
            return
        try:
            readable, _, _ = select.select(list(waiting), [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            worker = waiting[fd]
            if os.read(fd, 1):
                worker.ready = self.ever_ready = True

    def _reaped(self, worker: _Worker) -> None:
        os.close(worker.ready_fd)
        del self.workers[worker.number]

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            self.stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _run(self) -> int:
        # One worker first: it checks the options, and the others start only once it listens.
        first = self.spawn(1)
        while not first.ready:
            if self.stopping.is_set():
                return 0
            self._poll_ready(0.2)
            if not first.ready and first.proc.poll() is not None:
                self._reaped(first)
                return first.proc.returncode if first.proc.returncode > 0 else 1
        for number in range(2, self.count + 1):
            self.spawn(number)
        pids = ", ".join(str(w.proc.pid) for w in self.workers.values())
        print(
            f"cacheaddon run: {self.count} workers sharing the listen addresses (pids {pids})",
            file=sys.stderr,
            flush=True,
        )
        while not self.stopping.is_set():
            self._poll_ready(0.2)
            now = time.monotonic()
            for worker in list(self.workers.values()):
                status = worker.proc.poll()
                if status is None or self.stopping.is_set():
                    continue
                self._reaped(worker)
                quick = now - worker.started < _QUICK_DEATH
                deaths = self.quick_deaths[worker.number] = (
                    self.quick_deaths.get(worker.number, 0) + 1 if quick else 0
                )
                pause = min(_MAX_PAUSE, 0.5 * 2 ** (deaths - 1)) if deaths else 0.0
                print(
                    f"cacheaddon run: worker {worker.number} (pid {worker.proc.pid}) exited with status "
                    f"{status};"
                    f" starting it again{f' in {pause:.1f} s' if pause else ''}",
                    file=sys.stderr,
                    flush=True,
                )
                self.restart_at[worker.number] = now + pause
            for number, when in list(self.restart_at.items()):
                if when <= now and not self.stopping.is_set():
                    del self.restart_at[number]
                    self.spawn(number)
        return 0

    def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for worker in list(self.workers.values()):
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(5)
            self._reaped(worker)


def supervise(count: int, run_args: Sequence[str], confdir: str, key_size: int = 2048) -> int:
    """Run `cacheaddon run RUN_ARGS` as `count` workers until SIGINT/SIGTERM; the exit status."""
    try:
        mitmca.ensure_ca(Path(confdir), key_size)  # under the lock `cacheaddon env` takes too
    except Exception as exc:  # mitmproxy's CertStore raises OSError and its own errors alike
        print(f"cacheaddon run: cannot create mitmproxy's CA in {confdir}: {exc}", file=sys.stderr)
        return 1
    argv = [sys.executable, "-m", "cacheaddon.cli", *run_args]
    return Supervisor(count, argv).run()
