"""The operator subcommands' arguments: units, settings from --set, usage errors (exit 2, one line)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
from pathlib import Path

import certifi
import pytest

from cacheaddon import cli
from cacheaddon.cli_ops import UsageError, resolve_settings
from cacheaddon.display import Output, parse_duration, parse_time
from cacheaddon.entry import Entry
from cacheaddon.store import Store


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("--older-than", text) == seconds


def test_times() -> None:
    now = 1_800_000_000.0
    assert parse_time("--since", "2h", now) == now - 7200
    assert parse_time("--since", "1700000000", now) == 1_700_000_000
    assert parse_time("--since", "2026-01-02T03:04:05+00:00", now) == 1767323045
    for bad in ("soon", "-3h", "", "99999999999999999999", "999999999999w", "0001-01-01T00:00:00+14:00"):
        with pytest.raises(ValueError, match="^--since: "):
            parse_time("--since", bad, now)


def test_settings_from_set(tmp_path: Path) -> None:
    config = resolve_settings(
        str(tmp_path), ["cache_ttl=60", "cache_immutable=*.whl", "cache_immutable=*.tgz"]
    )
    assert (config.cache_dir, config.ttl, config.immutable) == (tmp_path, 60, ("*.whl", "*.tgz"))
    for bad, name in (
        ("cache_ttl=soon", "cache_ttl"),
        ("ttl=5", "--set"),
        ("cache_size_limit=1k", "cache_size_limit"),
    ):
        with pytest.raises(UsageError, match=f"^{name}"):
            resolve_settings(None, [bad])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["purge"], "PATTERN"),
        (["purge", ""], "PATTERN"),
        (["purge", " "], "PATTERN"),
        (["refresh", ""], "NAME|PATTERN"),
        (["purge", "x", "--all", "--yes"], "--all"),
        (["purge", "--older-than", "soon"], "--older-than"),
        (["stats", "--since", "whenever"], "--since"),
        (["stats", "--since", "99999999999999999999"], "--since"),
        (["bundle", "create", "--since", "99999999999w", "out.tar"], "--since"),
        (["ls", "--set", "cache_ttl=x"], "cache_ttl"),
        (["bundle", "create", "only-one.tar"], "RECORD"),
        (["bundle", "create", "a", "b", "--since", "1h"], "--since"),
        (["prewarm"], "LOCKFILE"),
        (["prewarm", "requirements.txt"], "requirements.txt"),
        (["prewarm", "--npm", "x", "--jobs", "0"], "--jobs"),
        (["prewarm", "--npm", "x", "--cafile", __file__], "--cafile"),  # a file, but no certificate in it
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    assert cli.main([*argv, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err, err


def test_cache_dir_before_or_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert cli.main(["--cache-dir", str(missing), "stats"]) == 1
    assert str(missing) in capsys.readouterr().err
    assert cli.main(["stats", "--cache-dir", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err


def test_plain_table_when_not_a_terminal() -> None:
    stream = io.StringIO()
    Output(stream=stream).table(["name", ">n"], [["a", "1"], ["bbb", "22"]])
    assert stream.getvalue() == "name   n\na      1\nbbb   22\n"


def test_an_empty_table_has_its_header() -> None:
    stream = io.StringIO()
    Output(stream=stream).table(["URL", ">size"], [])
    assert stream.getvalue() == "URL  size\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("url", ["https://x.example/a[/b]", "https://x.example/[bold]c[/bold]", "https://x/:smile:"])
def test_a_table_on_a_terminal_shows_cells_as_they_are(url: str) -> None:
    stream = _Terminal()
    Output(stream=stream).table(["URL", ">n"], [[url, "1"]])
    assert url in stream.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "directory"])
def test_damaged_counters_are_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    assert cli.main(["ls", "--cache-dir", str(tmp_path)]) == 0  # a cache directory
    if damage == "garbage":
        (tmp_path / "stats.db").write_bytes(b"not a database" * 100)
    else:
        (tmp_path / "stats.db").mkdir()
    capsys.readouterr()
    assert cli.main(["stats", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "stats.db" in err, err


def test_an_empty_pattern_removes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "https://pypi.org/simple/x/"
    store = Store(tmp_path, 10**9)
    entry = Entry(url, 200, "OK", (), 1.0, 1, hashlib.sha256(b"x").hexdigest())
    store.commit(f"{url}\naccept=", entry, b"x")
    store.close()
    assert cli.main(["purge", "", "--cache-dir", str(tmp_path)]) == 2
    assert cli.main(["ls", "--json", "--cache-dir", str(tmp_path)]) == 0
    assert url in capsys.readouterr().out


def test_a_lockfile_url_no_client_could_ask_is_one_failure_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(b"x").digest()).decode()
    lock = {
        "lockfileVersion": 3,
        "packages": {
            "": {},
            "node_modules/a": {"resolved": "http://[::1/a.tgz", "integrity": integrity},
            "node_modules/b": {"resolved": "http://127.0.0.1:1/b\x00.tgz", "integrity": integrity},
        },
    }
    (tmp_path / "package-lock.json").write_text(json.dumps(lock))
    code = cli.main(
        ["prewarm", str(tmp_path / "package-lock.json"), "--proxy", "http://127.0.0.1:1", "--json",
         "--cafile", certifi.where(), "--cache-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert [f["error"].split(":")[0] for f in report["failures"]] == ["InvalidURL", "InvalidURL"]


@pytest.mark.parametrize("argv", [["ls"], ["stats"], ["bundle", "import", "x.tar"]])
def test_a_cache_dir_that_is_a_file_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a directory" in err, err


def test_the_prewarm_progress_bar_counts_files_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Output(stream=_Terminal()).files_progress(2, "files") as progress:
        progress.bytes(1500)
        progress.file()
        progress.bytes(2500)
        progress.file()
    shown = terminal.getvalue()
    assert "2/2" in shown and "4.0 kB" in shown
