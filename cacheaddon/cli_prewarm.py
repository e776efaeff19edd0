"""`cacheaddon prewarm`: fill the cache through a running proxy before anyone relies on it."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
from pathlib import Path
from typing import Any

from cacheaddon import clientconfig, lockfiles, prewarm
from cacheaddon.cli_ops import UsageError
from cacheaddon.display import Output, size

DEFAULT_CONFDIR = Path("~/.mitmproxy")
CA_CERT, ENV_BUNDLE = "mitmproxy-ca-cert.pem", "cacheaddon-ca-bundle.pem"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "prewarm",
        parents=[common],
        help="fill the cache through a running proxy",
        description="Fetches what lockfiles pin straight through the proxy, each file checked against its "
        "digest; runs pip download / npm install through it for requirements and package specs.",
    )
    parser.add_argument(
        "lockfiles",
        nargs="*",
        metavar="LOCKFILE",
        help="package-lock.json, npm-shrinkwrap.json, pylock.toml, uv.lock",
    )
    parser.add_argument(
        "-r", "--requirement", action="append", default=[], metavar="FILE", help="pip requirements"
    )
    parser.add_argument("--pip", action="append", default=[], metavar="SPEC", help="a pip requirement spec")
    parser.add_argument("--npm", action="append", default=[], metavar="SPEC", help="an npm package spec")
    parser.add_argument(
        "--proxy", default=clientconfig.DEFAULT_PROXY, metavar="URL", help="the proxy (default %(default)s)"
    )
    parser.add_argument(
        "--cafile",
        metavar="PEM",
        help=f"CAs to trust the proxy with (default: {ENV_BUNDLE} from `cacheaddon env`, else the system's + "
        f"{CA_CERT} of --confdir)",
    )
    parser.add_argument("--confdir", default=str(DEFAULT_CONFDIR), metavar="DIR", help="mitmproxy's confdir")
    parser.add_argument("--index-url", metavar="URL", help="pip's index (default: pip's own)")
    parser.add_argument("--registry", metavar="URL", help="npm's registry (default: npm's own)")
    parser.add_argument(
        "--jobs", type=int, default=4, metavar="N", help="parallel lockfile downloads (default 4)"
    )
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG", help="extra pip argument")
    parser.add_argument("--npm-arg", action="append", default=[], metavar="ARG", help="extra npm argument")


def run(args: argparse.Namespace, _config: object) -> int:
    if not (args.lockfiles or args.requirement or args.pip or args.npm):
        raise UsageError("say what to fetch: LOCKFILE, -r FILE, --pip SPEC or --npm SPEC")
    if args.jobs < 1:
        raise UsageError("--jobs: must be at least 1")
    try:
        clientconfig.check_proxy_url(args.proxy)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    downloads: list[lockfiles.Download] = []
    for name in args.lockfiles:
        try:
            downloads += lockfiles.parse(Path(name))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    out = Output(args.json)
    with tempfile.TemporaryDirectory(prefix="cacheaddon-ca-") as tmp:
        bundle = _bundle(args, Path(tmp))
        fetched = _fetch(out, downloads, args, bundle)
        clients = _clients(out, args, bundle)
    return _summary(out, fetched, clients)


def _bundle(args: argparse.Namespace, tmp: Path) -> Path:
    """A CA file clients can trust the proxy with."""
    if args.cafile:
        if not Path(args.cafile).is_file():
            raise UsageError(f"--cafile: {args.cafile} is not a file")
        if not _holds_certificates(Path(args.cafile)):
            raise UsageError(f"--cafile: {args.cafile} holds no PEM certificate")
        return Path(args.cafile)
    confdir = Path(args.confdir).expanduser()
    if (confdir / ENV_BUNDLE).is_file():
        if not _holds_certificates(confdir / ENV_BUNDLE):
            raise OSError(f"{confdir / ENV_BUNDLE} holds no PEM certificate: run `cacheaddon env` again")
        return confdir / ENV_BUNDLE
    if not (confdir / CA_CERT).is_file():
        raise OSError(f"no {CA_CERT} in {confdir}: give --cafile, or --confdir of the running proxy")
    paths = ssl.get_default_verify_paths()
    system = next((p for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()), None)
    text = (Path(system).read_text() if system else "") + "\n" + (confdir / CA_CERT).read_text()
    (tmp / "bundle.pem").write_text(text)
    return tmp / "bundle.pem"


def _holds_certificates(path: Path) -> bool:
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError):
        return False
    return True


def _fetch(
    out: Output, downloads: list[lockfiles.Download], args: argparse.Namespace, bundle: Path
) -> list[prewarm.Fetched]:
    if not downloads:
        return []
    verify = ssl.create_default_context(cafile=str(bundle))
    with out.files_progress(len(downloads), "files") as progress:

        def on_file(result: prewarm.Fetched) -> None:
            progress.file()
            if not out.tty and not out.as_json:
                state = "failed: " + result.error if result.error else ("cached" if result.cached else "new")
                out.line(f"{state} {size(result.size)} {result.url}")

        return asyncio.run(
            prewarm.fetch_all(downloads, args.proxy, verify, args.jobs, on_file, progress.bytes)
        )


def _clients(out: Output, args: argparse.Namespace, bundle: Path) -> list[prewarm.ClientRun]:
    runs = []
    for what in [*(["-r", r] for r in args.requirement), *([spec] for spec in args.pip)]:
        if not out.as_json:
            out.line(f"pip download {' '.join(what)} ...")
        runs.append(prewarm.pip_download(what, args.proxy, bundle, args.index_url, args.pip_arg))
    if args.npm:
        if not out.as_json:
            out.line(f"npm install {' '.join(args.npm)} ...")
        runs.append(prewarm.npm_install(args.npm, args.proxy, bundle, args.registry, args.npm_arg))
    return runs


def _summary(out: Output, fetched: list[prewarm.Fetched], clients: list[prewarm.ClientRun]) -> int:
    failures = [{"what": f.url, "error": f.error} for f in fetched if f.error]
    for run in clients:
        if run.returncode != 0:
            tail = run.output.strip().splitlines()[-1:] or [""]
            failures.append({"what": " ".join(run.command[:3]), "error": f"exit {run.returncode}: {tail[0]}"})
    ok = [f for f in fetched if not f.error]
    report: dict[str, Any] = {
        "files": len(ok) + sum(r.files for r in clients),
        "bytes": sum(f.size for f in ok) + sum(r.bytes for r in clients),
        "new": sum(1 for f in ok if not f.cached),
        "already_cached": sum(1 for f in ok if f.cached),
        "client_runs": [
            {"command": r.command, "exit": r.returncode, "files": r.files, "bytes": r.bytes} for r in clients
        ],
        "failures": failures,
    }
    if out.as_json:
        out.json(report)
    else:
        out.line(
            f"prewarmed {report['files']} files ({size(report['bytes'])}): from lockfiles "
            f"{report['new']} new, {report['already_cached']} already cached; {len(clients)} client runs; "
            f"{len(failures)} failures"
        )
        for failure in failures:
            out.line(f"failed: {failure['what']}: {failure['error']}")
    return 1 if failures else 0
