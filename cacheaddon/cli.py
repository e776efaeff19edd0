"""The `cacheaddon` console script: run the caching proxy, print client configuration, print CI variables."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import urlsplit

from cacheaddon import cli_ops, clientconfig, leanaddons, mitmca, registries, workers

if TYPE_CHECKING:
    from mitmproxy.tools.dump import DumpMaster

AddonFactory = Callable[[], object]

DEFAULT_CONFDIR = mitmca.DEFAULT_CONFDIR  # mitmproxy's own default, so `env` and `run` share one CA
BUNDLE_NAME = "cacheaddon-ca-bundle.pem"

_LAZY_REASON = (
    "connection_strategy must be lazy: with eager, mitmproxy connects upstream before any hook runs, "
    "so the cache cannot answer while a registry is down"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage dump: errors must be easy to spot in a CI log.
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _fail(command: str, message: str) -> None:
    print(f"cacheaddon {command}: {message}", file=sys.stderr)


def _parser() -> _Parser:
    parser = _Parser(prog="cacheaddon", description="A caching proxy for package registries (mitmproxy).")
    cli_ops.add_cache_dir(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        # mitmdump's own flags pass through, so ours must never match one of them by abbreviation.
        allow_abbrev=False,
        help="run the proxy (mitmdump with the cache addon)",
        description="Runs mitmdump with the cache addon, listening on 127.0.0.1 unless --listen-host says "
        "otherwise, always with connection_strategy=lazy. The forward proxy listens on port 8080 (or -p), "
        "unless --mode replaces it.",
        epilog="Every other argument goes to mitmdump, e.g. -p 9090, --set confdir=DIR, -q "
        "(see mitmdump --help).",
    )
    run.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="SPEC",
        help="also serve a registry as a reverse proxy: NAME, NAME@PORT or URL@PORT; "
        + ", ".join(f"{p.name} ({p.upstream}) on {p.port}" for p in registries.PRESETS.values())
        + ". Repeatable.",
    )
    run.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="run N proxy processes on the same listen addresses (SO_REUSEPORT), sharing cache_dir and "
        "confdir; auto: one per core (default: 1, this process)",
    )

    config = commands.add_parser("config", help="print a client's configuration for a registry endpoint")
    config.add_argument(
        "client",
        choices=list(clientconfig.CLIENTS),
        metavar="CLIENT",
        help=f"one of: {', '.join(clientconfig.CLIENTS)}",
    )
    config.add_argument(
        "--endpoint",
        metavar="URL",
        help="the registry endpoint (default: http://127.0.0.1:PORT of the client's registry "
        "preset); the client's path (e.g. /simple/) is added unless URL has a path",
    )

    env = commands.add_parser("env", help="print shell lines that point clients at the proxy, for eval")
    env.add_argument(
        "--proxy",
        metavar="URL",
        help="the forward proxy's URL (default: where `cacheaddon run` with the same confdir listens: "
        "listen_host and listen_port of its config.yaml, else http://127.0.0.1:8080)",
    )
    env.add_argument(
        "--set",
        action="append",
        default=[],
        dest="settings",
        metavar="confdir=DIR",
        help="mitmproxy's confdir, spelled as for `cacheaddon run`; same as --confdir",
    )
    env.add_argument(
        "--confdir",
        metavar="DIR",
        help=f"mitmproxy's confdir, which holds its CA; the CA is created there (with mitmproxy's own code) "
        f"when there is none yet (default: {DEFAULT_CONFDIR})",
    )
    env.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="also wait up to SECONDS for the proxy to accept connections (exit 1 if it does not)",
    )
    env.add_argument(
        "--bundle",
        metavar="PATH",
        help=f"where to write the CA bundle, system CAs + mitmproxy's (default: DIR/{BUNDLE_NAME})",
    )
    cli_ops.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None, *, addon_factory: AddonFactory | None = None) -> int:
    """Run the console script; returns the exit status. `addon_factory` replaces the cache addon (tests)."""
    parser = _parser()
    try:
        args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        if args.command != "run" and rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "env":
            args.confdir = _env_confdir(parser, args.confdir, args.settings)
    except SystemExit as e:  # --help, or a usage error already printed
        return _exit_status(e)
    if args.command in cli_ops.COMMANDS:
        return cli_ops.main(args)
    if args.command == "run":
        cache_dir = ["--set", f"cache_dir={args.cache_dir}"] if args.cache_dir else []
        return run_command(args, [*cache_dir, *rest], addon_factory)
    try:
        if args.command == "config":
            return print_config(args.client, args.endpoint)
        return write_env(args.proxy, args.confdir, args.bundle, args.wait)
    except BrokenPipeError:
        # The reader left early (`| head`); without this, flushing stdout at exit prints a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def print_config(client: str, endpoint: str | None) -> int:
    """Print `client`'s configuration snippet for the endpoint."""
    try:
        print(clientconfig.snippet(client, endpoint))
    except ValueError as e:
        _fail("config", str(e))
        return 2
    return 0


# --- run ---


def run_command(args: argparse.Namespace, mitm_args: list[str], addon_factory: AddonFactory | None) -> int:
    """`cacheaddon run`: this process, or a supervisor of --workers processes each running it."""
    try:
        count = workers.worker_count(args.workers)
    except ValueError as e:
        _fail("run", str(e))
        return 2
    ready_fd = workers.worker_fd()
    if count > 1 and ready_fd is None:
        run_args = ["run", *(f"--registry={spec}" for spec in args.registry), *mitm_args]
        # The CA the workers will share: where they will look for it, as large as they would make it.
        confdir, key_size = _ca_settings(mitm_args)
        return workers.supervise(count, run_args, str(confdir), key_size)
    return run_proxy(mitm_args, args.registry, addon_factory, ready_fd)


def _mode_arguments(mitm_args: Sequence[str], reverse_modes: Sequence[str]) -> list[str]:
    """mitmdump's arguments with one reverse mode per registry added next to the user's own modes."""
    if not reverse_modes:
        return list(mitm_args)
    flag_mode = any(a == "--mode" or a.startswith("--mode=") or a.startswith("-m") for a in mitm_args)
    set_mode = bool(_set_values(mitm_args, "mode"))
    if set_mode and not flag_mode:
        # mitmproxy applies --mode after --set and would drop the user's `--set mode=` list: extend that.
        return [*mitm_args, *(a for m in reverse_modes for a in ("--set", f"mode={m}"))]
    ours = [a for m in reverse_modes for a in ("--mode", m)]
    if flag_mode:
        return [*mitm_args, *ours]
    # The first --mode replaces mitmproxy's default list, so the forward proxy must be named again;
    # without a port it still follows -p / listen_port (8080 when unset).
    return ["--mode", "regular", *ours, *mitm_args]


def _set_values(mitm_args: Sequence[str], name: str) -> list[str]:
    """The values the user gave option `name` with `--set name=value` or `--set=name=value`."""
    specs = [arg for prev, arg in zip(["", *mitm_args], mitm_args, strict=False) if prev == "--set"]
    specs += [arg.removeprefix("--set=") for arg in mitm_args if arg.startswith("--set=")]
    return [spec.partition("=")[2] for spec in specs if spec.partition("=")[0] == name]


def _ca_settings(mitm_args: Sequence[str]) -> tuple[Path, int]:
    """The confdir and key_size mitmproxy will use for its CA (the command line's; config.yaml lives in the
    confdir and cannot move it)."""
    confdir = Path(([DEFAULT_CONFDIR] + _set_values(mitm_args, "confdir"))[-1]).expanduser()
    key_size = ["2048"] + [v for v in _set_values(mitm_args, "key_size") if v.isdigit()]
    return confdir, int(key_size[-1])


def _filter_options(args: Any) -> dict[str, str]:
    # What mitmproxy's own `mitmdump` entry point does with its positional filter expression.
    if args.filter_args:
        expr = " ".join(args.filter_args)
        return {"save_stream_filter": expr, "readfile_filter": expr, "dumper_filter": expr}
    return {}


def _master_class(addon_factory: AddonFactory, ready_fd: int | None = None) -> type[DumpMaster]:
    from mitmproxy import exceptions, hooks
    from mitmproxy.tools.dump import DumpMaster

    from cacheaddon import ports

    class CacheMaster(DumpMaster):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Set as values before the command line and config.yaml are read, so both can override them:
            # a proxy for all interfaces would be an open proxy, and eager defeats the cache (checked below);
            # the addon logs one line per request, so mitmproxy's own per-flow lines only on request
            # (--set flow_detail=1..4, or -v).
            self.options.set("listen_host=127.0.0.1", "connection_strategy=lazy", "flow_detail=0")
            self.cache_addon = addon_factory()
            # mitmproxy's AddonManager and OptManager.keys are unannotated: cast for mypy --strict.
            cast(Any, self.addons).add(self.cache_addon)
            if ready_fd is not None:  # a worker: tells its supervisor once everything listens
                cast(Any, self.addons).add(workers.ReadySignal(ready_fd))

        async def run(self) -> None:
            if self.options.connection_strategy != "lazy":
                _fail("run", _LAZY_REASON)
                sys.exit(2)
            # An addon added here (unlike one loaded with -s) is only told about options that were set;
            # give it the one full configure that `mitmdump -s` gives, now that every value is final.
            try:
                every_option = set(cast(Any, self.options).keys())
                cast(Any, self.addons).invoke_addon_sync(self.cache_addon, hooks.ConfigureHook(every_option))
            except exceptions.OptionsError as e:
                _fail("run", str(e))
                sys.exit(1)
            # Options are final: drop the addons this run does not use, or every hook is dispatched to them.
            leanaddons.prune(self.addons, self.options)
            leanaddons.drop_legacy_log_events(self)
            opts = cast(Any, self.options)
            if opts.flow_detail == 0:
                # mitmproxy's per-connection lines ("client connect") go with its per-flow ones.
                logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
            # Workers share their ports (SO_REUSEPORT): each would find them taken by the others.
            worker = ready_fd is not None
            if not worker and (busy := ports.busy_listener(opts.mode, opts.listen_host, opts.listen_port)):
                _fail("run", busy)
                sys.exit(1)
            await super().run()

    return CacheMaster


def _exit_status(e: SystemExit) -> int:
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


def run_proxy(
    mitm_args: Sequence[str],
    registry_specs: Sequence[str],
    addon_factory: AddonFactory | None,
    ready_fd: int | None = None,
) -> int:
    """Run mitmdump in this process with the cache addon and one reverse proxy per registry spec."""
    try:
        modes = [registries.reverse_mode(spec) for spec in registry_specs]
    except ValueError as e:
        _fail("run", str(e))
        return 2
    # Checked here as well as in the master: the addon may quietly turn eager back to lazy.
    if any(value != "lazy" for value in _set_values(mitm_args, "connection_strategy")):
        _fail("run", _LAZY_REASON)
        return 2
    ports = [m.rpartition("@")[2] for m in modes]
    if dupes := sorted({p for p in ports if ports.count(p) > 1}):
        _fail("run", f"--registry: port {', '.join(dupes)} given to more than one registry")
        return 2
    confdir, key_size = _ca_settings(mitm_args)
    try:
        mitmca.ensure_ca(confdir, key_size)  # before mitmproxy would, under the lock `env` takes too
    except OSError as e:
        _fail("run", f"cannot create mitmproxy's CA in {confdir}: {e}")
        return 1
    if addon_factory is None:
        try:
            from cacheaddon.addon import CacheAddon
        except ImportError as e:
            _fail("run", f"cannot load the cache addon: {e}")
            return 1
        addon_factory = CacheAddon

    from mitmproxy.tools import cmdline
    from mitmproxy.tools import main as mitmproxy_main

    if ready_fd is not None:
        workers.share_listen_ports()

    # mitmproxy names the program after sys.argv[0] in its usage and option errors.
    saved_argv0, sys.argv[0] = sys.argv[0], "cacheaddon run"
    try:
        mitmproxy_main.run(
            _master_class(addon_factory, ready_fd),
            cmdline.mitmdump,
            _mode_arguments(mitm_args, modes),
            _filter_options,
        )
    except SystemExit as e:  # mitmproxy exits on bad options, after printing one line naming the option
        return _exit_status(e)
    except KeyboardInterrupt:  # before mitmproxy has installed its own SIGINT handler
        return 130
    finally:
        sys.argv[0] = saved_argv0
    return 0


# --- env ---


def _env_confdir(parser: _Parser, confdir: str | None, settings: Sequence[str]) -> Path:
    """The confdir from --confdir or `--set confdir=DIR` (the spelling `run` takes); no other --set."""
    values = []
    for spec in settings:
        name, sep, value = spec.partition("=")
        if name != "confdir" or not sep:
            parser.error(f"--set: only confdir=DIR is read by env, got {spec!r}")
        values.append(value)
    if confdir is not None:
        values.append(confdir)
    if len(set(values)) > 1:
        parser.error(f"--set confdir and --confdir disagree: {', '.join(values)}")
    return Path(values[0] if values else DEFAULT_CONFDIR).expanduser()


def _system_certificates(bundle: Path) -> tuple[list[str], str]:
    """The system's CA certificates and the file they came from (never our own bundle)."""
    paths = ssl.get_default_verify_paths()
    # cafile honours SSL_CERT_FILE; after an earlier `eval` that is our bundle, which must not feed itself.
    candidates = [paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"]
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    for name in candidates:
        if not name or not os.path.isfile(name) or Path(name).resolve() == bundle.resolve():
            continue
        try:
            text = Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if text.startswith(clientconfig.BUNDLE_MARKER):  # one we wrote, perhaps for another proxy
            continue
        certs = clientconfig.pem_certificates(text)
        if certs:
            return certs, name
    return [], ""


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A client starting while we write must see the old bundle or the new one, never half of one.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # CA certificates are public; mkstemp's 0600 would lock out other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _default_proxy(confdir: Path) -> str:
    host, port = mitmca.listen_address(confdir)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _wait_for(proxy: str, seconds: float) -> bool:
    """Whether the proxy accepts a TCP connection within `seconds` (sends nothing)."""
    parts = urlsplit(proxy)
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((parts.hostname or "", parts.port or 80), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def write_env(proxy: str | None, confdir: Path, bundle_arg: str | None, wait: float = 0) -> int:
    """Write the CA bundle (creating mitmproxy's CA if the confdir has none) and print the `export` lines
    for it and the proxy."""
    try:
        proxy = proxy or _default_proxy(confdir)
        clientconfig.check_proxy_url(proxy)
    except ValueError as e:  # a bad --proxy, or a config.yaml mitmproxy refuses
        _fail("env", str(e))
        return 2
    bundle = (Path(bundle_arg).expanduser() if bundle_arg else confdir / BUNDLE_NAME).absolute()
    try:
        ca_path = mitmca.ensure_ca(confdir)
    except OSError as e:
        _fail("env", f"cannot create mitmproxy's CA in {confdir}: {e}")
        return 1
    try:
        mitm_certs = clientconfig.pem_certificates(ca_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        _fail("env", f"cannot read the mitmproxy CA {ca_path}: {e}")
        return 1
    if not mitm_certs:
        _fail("env", f"{ca_path} holds no PEM certificate")
        return 1
    system_certs, source = _system_certificates(bundle)
    if not system_certs:
        _fail("env", "found no system CA certificates (tried SSL_CERT_FILE, OpenSSL's default, certifi)")
        return 1
    try:
        _write_atomically(bundle, clientconfig.bundle_text(system_certs, mitm_certs))
    except OSError as e:
        _fail("env", f"cannot write the CA bundle {bundle}: {e}")
        return 1
    if wait > 0 and not _wait_for(proxy, wait):
        _fail("env", f"the proxy at {proxy} accepted no connection within {wait:g} s")
        return 1
    # A comment ends at a newline, and the rest would be run by `eval`: escape any in the paths.
    comment = f"# CA bundle {bundle}: system CAs from {source} + {ca_path}"
    print(comment.encode("unicode_escape").decode("ascii"))
    print("\n".join(clientconfig.env_lines(proxy, str(bundle))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
