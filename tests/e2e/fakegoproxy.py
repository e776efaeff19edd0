"""A fake Go module proxy (the GOPROXY protocol of proxy.golang.org) over HTTPS: /<module>/@v/list,
/<module>/@v/<version>.info, .mod and .zip, and /<module>/@latest, for two tiny modules, one requiring the
other. Zips are built in memory with fixed timestamps, so their bytes (and the go.sum hashes of their files)
never change."""

from __future__ import annotations

import io
import json
import shutil
import socket
import zipfile
from dataclasses import dataclass
from functools import cached_property

from .fakeorigin import FakeOrigin, OriginReply, OriginRequest, not_found
from .fakeregistry import CertPaths

_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_TIME = "2020-01-01T00:00:00Z"


@dataclass(frozen=True)
class GoModule:
    path: str  # lower case: no "!" escaping needed
    version: str
    requires: tuple[tuple[str, str], ...] = ()

    @property
    def package(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def go_mod(self) -> bytes:
        text = f"module {self.path}\n\ngo 1.19\n"
        if self.requires:
            text += "\nrequire (\n" + "".join(f"\t{p} {v}\n" for p, v in self.requires) + ")\n"
        return text.encode()

    @cached_property
    def zip(self) -> bytes:
        """The module zip: every file under <module>@<version>/, as the go command expects."""
        imports = "".join(f'import _ "{p}"\n' for p, _ in self.requires)
        source = f'package {self.package}\n\n{imports}\nconst Name = "{self.path}"\n'
        files = {"go.mod": self.go_mod, f"{self.package}.go": source.encode()}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                info = zipfile.ZipInfo(f"{self.path}@{self.version}/{name}", date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        return buf.getvalue()

    @property
    def info(self) -> bytes:
        return json.dumps({"Version": self.version, "Time": _TIME}).encode()


GOLF = GoModule("example.test/e2e/golf", "v1.0.0")
HOTEL = GoModule("example.test/e2e/hotel", "v1.2.0", ((GOLF.path, GOLF.version),))
DEFAULT_MODULES = (GOLF, HOTEL)


def go_available() -> bool:
    return shutil.which("go") is not None


def loopback_name() -> str | None:
    """A host name (this machine's own) that resolves to a loopback address: the go command never sends
    `localhost` or a loopback IP through HTTPS_PROXY, so a test reaching the fake through the proxy needs
    another name. None where there is no such name."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        return None
    return name if address.startswith("127.") and name != "localhost" else None


class FakeGoProxy:
    """Serves DEFAULT_MODULES on https://<ip>:<port>/ (the GOPROXY URL), with the e2e test certificate."""

    def __init__(
        self, certs: CertPaths, ip: str = "127.0.0.1", modules: tuple[GoModule, ...] = DEFAULT_MODULES
    ) -> None:
        self.modules = modules
        self.origin = FakeOrigin(ip, certs=certs)
        self.origin.default = self._route

    @property
    def url(self) -> str:
        return self.origin.url

    def url_named(self, host: str) -> str:
        return f"https://{host}:{self.origin.port}"

    def start(self) -> FakeGoProxy:
        self.origin.start()
        return self

    def stop(self) -> None:
        self.origin.stop()

    def file_paths(self) -> set[str]:
        """The .mod and .zip paths a build of HOTEL fetches."""
        return {f"/{m.path}/@v/{m.version}.{ext}" for m in self.modules for ext in ("mod", "zip")}

    def _route(self, request: OriginRequest) -> OriginReply:
        path = request.path.split("?", 1)[0]
        for module in self.modules:
            prefix = f"/{module.path}/"
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if rest == "@v/list":
                versions = [m.version for m in self.modules if m.path == module.path]
                return OriginReply(body=("\n".join(versions) + "\n").encode(), headers=_TEXT)
            if rest == "@latest":
                return OriginReply(body=module.info, headers=_JSON)
            if rest == f"@v/{module.version}.info":
                return OriginReply(body=module.info, headers=_JSON)
            if rest == f"@v/{module.version}.mod":
                return OriginReply(body=module.go_mod, headers=_TEXT)
            if rest == f"@v/{module.version}.zip":
                return OriginReply(body=module.zip, headers={"Content-Type": "application/zip"})
        return not_found(request)


_TEXT = {"Content-Type": "text/plain; charset=utf-8"}
_JSON = {"Content-Type": "application/json"}
