"""A fake crates.io: a sparse index on one host and crate downloads on another, as crates.io splits them
(index.crates.io, static.crates.io), over plain HTTP on 127.0.0.x.

The index host serves /config.json, whose "dl" names the download host by absolute URL (a registry endpoint
must rewrite it, or cargo would download every crate straight from the registry), and one index file per
crate (JSON lines, with the sha256 cargo checks every .crate against). The download host serves
/crates/<name>/<version>/download, the path cargo builds from a "dl" without markers.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cached_property

from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, not_found
from .packages import make_tgz

INDEX_IP, DL_IP = "127.0.0.10", "127.0.0.11"


@dataclass(frozen=True)
class Crate:
    name: str
    version: str
    deps: tuple[tuple[str, str], ...] = ()  # (name, version requirement)

    @cached_property
    def data(self) -> bytes:
        """The .crate: a gzipped tar of NAME-VERSION/ with its manifest and a library, made reproducibly."""
        manifest = f'[package]\nname = "{self.name}"\nversion = "{self.version}"\nedition = "2021"\n'
        if self.deps:
            manifest += "\n[dependencies]\n" + "".join(f'{n} = "{req}"\n' for n, req in self.deps)
        files = {
            "Cargo.toml": manifest.encode(),
            "src/lib.rs": f'pub fn name() -> &\'static str {{ "{self.name}" }}\n'.encode(),
        }
        return make_tgz({f"{self.name}-{self.version}/{path}": data for path, data in files.items()})

    def index_line(self) -> str:
        deps = [
            {
                "name": n,
                "req": req,
                "features": [],
                "optional": False,
                "default_features": True,
                "target": None,
                "kind": "normal",
            }
            for n, req in self.deps
        ]
        cksum = hashlib.sha256(self.data).hexdigest()
        entry = {"name": self.name, "vers": self.version, "deps": deps, "cksum": cksum, "features": {}}
        return json.dumps({**entry, "yanked": False})


TINY = Crate("tiny-e2e", "1.0.0")
SMALL = Crate("small-e2e", "0.2.0", (("tiny-e2e", "^1.0"),))
DEFAULT_CRATES = (TINY, SMALL)


def index_path(name: str) -> str:
    """Where a sparse index keeps a crate's file (cargo's layout by name length)."""
    if len(name) <= 2:
        return f"/{len(name)}/{name}"
    if len(name) == 3:
        return f"/3/{name[0]}/{name}"
    return f"/{name[:2]}/{name[2:4]}/{name}"


def cargo_available() -> bool:
    """cargo 1.68 or newer (sparse indexes) on PATH."""
    cargo = shutil.which("cargo")
    if cargo is None:
        return False
    try:
        out = subprocess.run([cargo, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    match = re.match(r"cargo (\d+)\.(\d+)", out)
    return match is not None and (int(match[1]), int(match[2])) >= (1, 68)


class FakeCrates:
    def __init__(self, crates: tuple[Crate, ...] = DEFAULT_CRATES) -> None:
        self.crates = crates
        self.index = FakeOrigin(INDEX_IP)
        self.dl = FakeOrigin(DL_IP)
        self.index.default = self._index_file
        self.dl.default = self._download

    @property
    def url(self) -> str:
        return self.index.url

    def start(self) -> FakeCrates:
        self.dl.start()
        self.index.start()
        return self

    def stop(self) -> None:
        self.index.stop()
        self.dl.stop()

    def download_path(self, crate: Crate) -> str:
        return f"/crates/{crate.name}/{crate.version}/download"

    def _index_file(self, request: OriginRequest) -> OriginReply:
        if request.path == "/config.json":
            config = {"dl": f"{self.dl.url}/crates", "api": self.index.url}
            return OriginReply(body=json.dumps(config).encode(), headers={"Content-Type": "application/json"})
        lines = [c.index_line() for c in self.crates if index_path(c.name) == request.path]
        if not lines:
            return not_found(request)
        body = ("\n".join(lines) + "\n").encode()
        return OriginReply(body=body, headers={"Content-Type": "text/plain", "Cache-Control": "max-age=60"})

    def _download(self, request: OriginRequest) -> OriginReply:
        for crate in self.crates:
            if request.path == self.download_path(crate):
                return OriginReply(body=crate.data, headers={"Content-Type": "application/gzip"})
        return not_found(request)
