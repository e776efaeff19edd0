"""The operator subcommands of the `cacheaddon` console script: their arguments, the settings and store they
share, and dispatch to cli_inventory (stats, ls, purge, refresh, verify), cli_bundle and cli_prewarm.

Exit status: 0 success, 1 failure (including problems found), 2 bad usage; errors are one line naming the
argument. Output: tables on a terminal, plain columns when piped, JSON with --json.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from cacheaddon import settings
from cacheaddon.counters import StatsError
from cacheaddon.display import fail
from cacheaddon.store import Store, StoreError

COMMANDS = ("stats", "ls", "purge", "refresh", "verify", "bundle", "prewarm")
SORT_KEYS = ("url", "size", "age", "used", "status")


class UsageError(ValueError):
    """A bad argument: exit status 2."""


def add_cache_dir(parser: argparse.ArgumentParser, top: bool = False) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        # A subcommand's default must not overwrite what was given before the subcommand.
        default=None if top else argparse.SUPPRESS,
        help="the proxy's cache_dir (default: the addon's own default, $XDG_CACHE_HOME/cacheaddon or "
        "~/.cache/cacheaddon)",
    )


def _common(json_output: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_cache_dir(common)
    common.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a proxy option the command must agree with (cache_ttl, cache_negative_ttl, cache_immutable, "
        "cache_size_limit), as given to the proxy; repeatable",
    )
    if json_output:
        common.add_argument("--json", action="store_true", help="print JSON (see README for its fields)")
    return common


def add_parsers(commands: Any) -> None:
    """Adds the operator subcommands to the console script's subparsers."""
    common = _common()
    stats = commands.add_parser("stats", parents=[common], help="what the cache holds and how well it works")
    stats.add_argument(
        "--since", metavar="TIME", help="count answers since TIME (ISO 8601, Unix time, or 2h ago)"
    )
    stats.add_argument("--top", type=int, default=10, metavar="N", help="hosts to list (default 10)")

    ls = commands.add_parser("ls", parents=[common], help="list cached responses")
    ls.add_argument("pattern", nargs="?", metavar="PATTERN", help="a glob on the URL, or a part of it")
    ls.add_argument(
        "--sort", choices=SORT_KEYS, default="url", help="order (default url; size, age, used: largest first)"
    )

    purge = commands.add_parser("purge", parents=[common], help="remove cached responses")
    purge.add_argument("pattern", nargs="?", metavar="PATTERN", help="a glob on the URL, or a part of it")
    purge.add_argument("--all", action="store_true", help="remove everything (asks first)")
    purge.add_argument("--older-than", metavar="DURATION", help="only entries stored longer ago (e.g. 30d)")
    purge.add_argument("--stale", action="store_true", help="only entries that are stale now")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask before --all")

    refresh = commands.add_parser(
        "refresh", parents=[common], help="mark metadata stale, so the next request revalidates it"
    )
    refresh.add_argument("target", metavar="NAME|PATTERN", help="a package name, or a glob/part of URLs")

    verify = commands.add_parser("verify", parents=[common], help="re-hash every body; report damage")
    verify.add_argument("--fix", action="store_true", help="drop what is damaged, keep every healthy entry")

    bundle = commands.add_parser("bundle", help="carry cached entries to another cache (offline builds)")
    actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        parents=[common],
        help="write the recorded entries to one file",
        usage="%(prog)s [options] RECORD OUT.tar | --since TIME OUT.tar",
    )
    create.add_argument(
        "paths", nargs="+", metavar="RECORD OUT.tar", help="a cache_record file, and the bundle"
    )
    create.add_argument(
        "--since", metavar="TIME", help="instead of a record: every entry used or stored since TIME"
    )
    load = actions.add_parser("import", parents=[common], help="load a bundle into the cache, checking it")
    load.add_argument("file", metavar="FILE", help="a bundle written by `bundle create`")

    from cacheaddon import cli_prewarm

    cli_prewarm.add_parser(commands, _common())


def main(args: argparse.Namespace) -> int:
    command = args.command if args.command != "bundle" else f"bundle {args.action}"
    try:
        config = resolve_settings(getattr(args, "cache_dir", None), getattr(args, "options", []))
        if args.command == "prewarm":
            from cacheaddon import cli_prewarm

            return cli_prewarm.run(args, config)
        if args.command == "bundle":
            from cacheaddon import cli_bundle

            return cli_bundle.run(args, config)
        from cacheaddon import cli_inventory

        return cli_inventory.run(args, config)
    except ValueError as exc:  # UsageError, and the units display.py parses: a bad argument
        fail(command, str(exc))
        return 2
    except (StoreError, StatsError, OSError) as exc:
        fail(command, str(exc))
        return 1
    except KeyboardInterrupt:
        fail(command, "interrupted")
        return 130
    except BrokenPipeError:  # the reader left early (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def resolve_settings(cache_dir: str | None, options: Sequence[str]) -> settings.Settings:
    """The settings the proxy would have with these options. Raises UsageError naming the option."""
    values = settings.defaults()
    types = {name: typespec for name, typespec, _, _ in settings.OPTIONS}
    lists: dict[str, list[str]] = {}
    for spec in options:
        name, sep, text = spec.partition("=")
        if not sep or name not in types:
            raise UsageError(f"--set: {spec!r} is not NAME=VALUE with NAME a cache_* option")
        kind = types[name]
        if kind is int:
            if not text.strip().isdigit():
                raise UsageError(f"{name}: {text!r} is not a whole number")
            values[name] = int(text)
        elif kind is bool:
            values[name] = text.lower() in ("true", "1", "yes", "on")
        elif kind is str:
            values[name] = text
        else:  # a list: the first --set replaces the default, later ones add to it, as in mitmproxy
            lists.setdefault(name, []).append(text)
            values[name] = lists[name]
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    try:
        return settings.from_options(values)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_store(config: settings.Settings, create: bool = False) -> Store:
    """The proxy's store. A directory that does not exist is an error (a typo must not look like an empty
    cache), unless `create`."""
    if config.cache_dir.exists() and not config.cache_dir.is_dir():
        raise OSError(f"cache_dir {config.cache_dir} is not a directory (see --cache-dir)")
    if not create and not config.cache_dir.is_dir():
        raise OSError(f"cache_dir {config.cache_dir} does not exist (see --cache-dir)")
    return Store(config.cache_dir, config.size_limit)
