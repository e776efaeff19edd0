"""Output of the operator commands: rich tables and progress bars on a terminal, plain aligned columns when
piped, JSON with --json; and the units they read and print (sizes, durations, times)."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(option: str, text: str) -> float:
    """'90' (seconds), '45s', '30m', '12h', '7d', '2w'. Raises ValueError naming the option."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f"{option}: {text!r} is not a duration (e.g. 90, 45s, 30m, 12h, 7d, 2w)")
    return float(m[1]) * _SECONDS[m[2]]


def parse_time(option: str, text: str, now: float) -> float:
    """A point in time: ISO 8601 ('2026-11-27', '2026-11-27T10:00', local time unless it names a zone),
    a Unix timestamp ('1764237600'), or a duration ago ('2h', '7d')."""
    text = text.strip()
    try:
        if text.isdigit():
            moment = float(text)
        elif _DURATION.fullmatch(text.lower()):
            moment = now - parse_duration(option, text)
        else:
            moment = dt.datetime.fromisoformat(text).timestamp()
        dt.datetime.fromtimestamp(moment)  # a time this machine's calendar holds (it is printed back)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"{option}: {text!r} is not a time (ISO 8601 like 2026-11-27T10:00, a Unix timestamp, "
            "or a duration ago like 2h)"
        ) from None
    return moment


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


class Output:
    """Where a command writes: a rich console on a terminal, plain text otherwise; JSON when asked."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.as_json = as_json
        self.tty = self.stream.isatty()
        self.console = Console(file=self.stream, highlight=False) if self.tty else None

    def json(self, value: Any) -> None:
        self.stream.write(json.dumps(value, indent=2, sort_keys=True) + "\n")

    def line(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            self.stream.write(text + "\n")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
        """Columns whose name starts with '>' are right-aligned (numbers)."""
        names = [c.lstrip(">") for c in columns]
        right = [c.startswith(">") for c in columns]
        if self.console is not None:
            table = Table(title=title or None, title_justify="left")
            for name, is_right in zip(names, right, strict=True):
                table.add_column(name, justify="right" if is_right else "left", overflow="fold")
            for row in rows:
                # Text, not markup: a URL may hold "[/x]" (a MarkupError) or "[bold]" (rendered, not shown).
                table.add_row(*(Text(cell) for cell in row))
            self.console.print(table)
            return
        if title:
            self.stream.write(title + "\n")
        widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
        for row in [names, *rows]:
            cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
            self.stream.write("  ".join(cells).rstrip() + "\n")

    @contextmanager
    def progress(self, total: int, what: str) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr when it is a terminal (and not --json); a no-op otherwise."""
        if self.as_json or not sys.stderr.isatty():
            yield lambda n: None
            return
        columns = (TextColumn(what), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)

    @contextmanager
    def files_progress(self, total: int, what: str) -> Iterator[FileProgress]:
        """A progress bar of files (count) and the bytes they held, on stderr when it is a terminal."""
        if self.as_json or not sys.stderr.isatty():
            yield FileProgress()
            return
        columns = (
            TextColumn(what),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[nbytes]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
            yield FileProgress(bar, bar.add_task(what, total=total, nbytes=size(0)))


class FileProgress:
    """Counts files and their bytes (what `files_progress` yields)."""

    def __init__(self, bar: Progress | None = None, task: Any = None) -> None:
        self.bar, self.task, self.nbytes = bar, task, 0

    def file(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, 1)

    def bytes(self, n: int) -> None:
        self.nbytes += n
        if self.bar is not None:
            self.bar.update(self.task, nbytes=size(self.nbytes))


def fail(command: str, message: str) -> None:
    """The one-line error every command prints (stderr)."""
    print(f"cacheaddon {command}: {message}", file=sys.stderr)
