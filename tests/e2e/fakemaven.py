"""A fake Maven repository over HTTPS: the layout of repo1.maven.org/maven2/ (poms, jars, their .sha1/.md5
files, maven-metadata.xml) for a few tiny artifacts, on one FakeHost of fakeregistry (same modes, same
request log). Jars and poms are built in memory with fixed timestamps, so their bytes never change."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .fakeregistry import CertPaths, FakeHost, Reply, Request

PREFIX = "/maven2"
INDEX_CACHE_CONTROL = "max-age=600, public"
FILE_CACHE_CONTROL = "max-age=365000000, immutable, public"
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_CONTENT_TYPES = {
    ".jar": "application/java-archive",
    ".pom": "text/xml",
    ".xml": "text/xml",
    ".sha1": "text/plain",
    ".md5": "text/plain",
}


@dataclass(frozen=True)
class Coordinates:
    group: str
    artifact: str
    version: str

    def __str__(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def directory(self) -> str:
        """The version's directory under the repository root: org/example/e2e/india/2.0.0"""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}"

    def filename(self, extension: str) -> str:
        return f"{self.artifact}-{self.version}.{extension}"

    def path(self, extension: str) -> str:
        """The file's path on the server, /maven2/org/example/e2e/india/2.0.0/india-2.0.0.jar"""
        return f"{PREFIX}/{self.directory}/{self.filename(extension)}"


@dataclass(frozen=True)
class Artifact:
    coordinates: Coordinates
    packaging: str  # "jar" or "pom"
    pom: bytes
    jar: bytes | None

    def files(self) -> dict[str, bytes]:
        """Server path -> bytes, checksum files included."""
        c = self.coordinates
        found = {c.path("pom"): self.pom}
        if self.jar is not None:
            found[c.path("jar")] = self.jar
        return with_checksums(found)


def with_checksums(files: dict[str, bytes]) -> dict[str, bytes]:
    out = dict(files)
    for path, data in files.items():
        out[path + ".sha1"] = hashlib.sha1(data).hexdigest().encode()
        out[path + ".md5"] = hashlib.md5(data).hexdigest().encode()
    return out


def make_pom(c: Coordinates, packaging: str, deps: Iterable[Coordinates] = ()) -> bytes:
    dependencies = "".join(
        "\n    <dependency>"
        f"\n      <groupId>{d.group}</groupId>\n      <artifactId>{d.artifact}</artifactId>"
        f"\n      <version>{d.version}</version>\n    </dependency>"
        for d in deps
    )
    block = f"\n  <dependencies>{dependencies}\n  </dependencies>" if dependencies else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>{c.group}</groupId>\n  <artifactId>{c.artifact}</artifactId>\n"
        f"  <version>{c.version}</version>\n  <packaging>{packaging}</packaging>\n"
        f"  <description>cacheaddon e2e test artifact {c}</description>{block}\n"
        "</project>\n"
    ).encode()


def make_jar(c: Coordinates) -> bytes:
    """A jar holding a manifest and one properties file naming the artifact."""
    files = {
        "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\nCreated-By: cacheaddon-e2e\r\n\r\n",
        f"META-INF/{c.artifact}.properties": f"artifact={c}\n".encode(),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def make_metadata(group: str, artifact: str, versions: list[str]) -> bytes:
    listed = "".join(f"\n      <version>{v}</version>" for v in versions)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<metadata>\n'
        f"  <groupId>{group}</groupId>\n  <artifactId>{artifact}</artifactId>\n  <versioning>\n"
        f"    <latest>{versions[-1]}</latest>\n    <release>{versions[-1]}</release>\n"
        f"    <versions>{listed}\n    </versions>\n    <lastUpdated>20200101000000</lastUpdated>\n"
        "  </versioning>\n</metadata>\n"
    ).encode()


GROUP = "org.example.e2e"
# A build extension with one dependency, and a parent pom: what `mvn validate` resolves with no plugin at all.
EXTENSION = Coordinates(GROUP, "hotel-ext", "1.0.0")
LIBRARY = Coordinates(GROUP, "india", "2.0.0")
PARENT = Coordinates(GROUP, "juliet-parent", "1.0.0")
# Maven 3 adds plexus-utils 1.1 to the class realm of every extension and plugin that does not depend on it;
# an empty stand-in is enough (the real classes come from Maven's core).
PLEXUS_UTILS = Coordinates("org.codehaus.plexus", "plexus-utils", "1.1")


class FakeMaven:
    """Serves its artifacts under /maven2/ on https://<ip>:<port>; 404 for anything else."""

    def __init__(
        self, certs: CertPaths, *, ip: str = "127.0.0.4", port: int = 0, defaults: bool = True
    ) -> None:
        self._lock = threading.Lock()
        self._artifacts: dict[Coordinates, Artifact] = {}
        self.host = FakeHost(ip, certs, self._route, port, name="maven")
        if defaults:
            self.add(LIBRARY)
            self.add(EXTENSION, deps=[LIBRARY])
            self.add(PARENT, packaging="pom")
            self.add(PLEXUS_UTILS)

    def add(self, c: Coordinates, *, deps: Iterable[Coordinates] = (), packaging: str = "jar") -> Artifact:
        artifact = Artifact(
            c, packaging, make_pom(c, packaging, deps), make_jar(c) if packaging == "jar" else None
        )
        with self._lock:
            self._artifacts[c] = artifact
        return artifact

    def artifact(self, c: Coordinates) -> Artifact:
        with self._lock:
            return self._artifacts[c]

    @property
    def url(self) -> str:
        """The host's origin (what a registry endpoint forwards to)."""
        return self.host.url

    @property
    def repo_url(self) -> str:
        return f"{self.host.url}{PREFIX}/"

    @property
    def requests(self) -> list[Request]:
        return self.host.requests

    def paths(self, method: str | None = "GET") -> list[str]:
        return [r.path for r in self.host.requests if method is None or r.method == method]

    def clear_requests(self) -> None:
        self.host.clear_requests()

    def start(self) -> FakeMaven:
        self.host.start()
        return self

    def stop(self) -> None:
        self.host.stop()

    def _files(self) -> dict[str, bytes]:
        with self._lock:
            artifacts = list(self._artifacts.values())
        files: dict[str, bytes] = {}
        versions: dict[tuple[str, str], list[str]] = {}
        for a in artifacts:
            files |= a.files()
            versions.setdefault((a.coordinates.group, a.coordinates.artifact), []).append(
                a.coordinates.version
            )
        for (group, name), listed in versions.items():
            path = f"{PREFIX}/{group.replace('.', '/')}/{name}/maven-metadata.xml"
            files |= with_checksums({path: make_metadata(group, name, listed)})
        return files

    def _route(self, request: Request) -> Reply:
        path = unquote(urlsplit(request.path).path)
        data = self._files().get(path)
        if data is None:
            return Reply(404, b"Not Found\n", "text/plain")
        immutable = path.endswith((".jar", ".pom", ".jar.sha1", ".pom.sha1", ".jar.md5", ".pom.md5"))
        suffix = "." + path.rsplit(".", 1)[-1]
        return Reply(
            body=data,
            content_type=_CONTENT_TYPES.get(suffix, "application/octet-stream"),
            headers={"Cache-Control": FILE_CACHE_CONTROL if immutable else INDEX_CACHE_CONTROL},
        )
