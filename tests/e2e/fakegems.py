"""A fake RubyGems server over HTTPS: the "full index" protocol `gem install` falls back to when a source has
no compact index (anything else answers 404): /specs.4.8.gz, /latest_specs.4.8.gz, /prerelease_specs.4.8.gz,
/quick/Marshal.4.8/<name>-<version>.gemspec.rz and /gems/<name>-<version>.gem, on one FakeHost of
fakeregistry.

The gems are real ones, made with `gem build` when the server is built, and the index files are written by
ruby itself (they are Marshal dumps of Gem objects), so this needs ruby and gem on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import packages
from .fakeregistry import CertPaths, FakeHost, Reply, Request

INDEX_CACHE_CONTROL = "max-age=600, public"
FILE_CACHE_CONTROL = "max-age=365000000, immutable, public"
BUILD_TIMEOUT = 120

# Writes the full-index files for every .gem in DIR/gems, as `gem generate_index` does (which newer RubyGems
# no longer ship): tuples [name, Gem::Version, platform], gzip'd Marshal; one deflated Marshal'd spec each.
_INDEX_SCRIPT = r"""
require "rubygems/package"
require "fileutils"
require "stringio"
require "zlib"
dir = ARGV.fetch(0)
def gzip(data)
  io = StringIO.new("".b)
  gz = Zlib::GzipWriter.new(io)
  gz.mtime = 0
  gz.write(data)
  gz.close
  io.string
end
specs = Dir[File.join(dir, "gems", "*.gem")].sort.map { |path| Gem::Package.new(path).spec }
tuples = specs.map { |s| [s.name, s.version, s.original_platform] }
released, prerelease = tuples.partition { |t| !t[1].prerelease? }
latest = released.group_by { |t| [t[0], t[2]] }.values.map { |group| group.max_by { |t| t[1] } }
{ "specs" => released, "latest_specs" => latest, "prerelease_specs" => prerelease }.each do |name, list|
  File.binwrite(File.join(dir, "#{name}.4.8.gz"), gzip(Marshal.dump(list)))
end
quick = File.join(dir, "quick", "Marshal.4.8")
FileUtils.mkdir_p(quick)
specs.each do |s|
  File.binwrite(File.join(quick, "#{s.full_name}.gemspec.rz"), Zlib::Deflate.deflate(Marshal.dump(s)))
end
"""


@dataclass(frozen=True)
class GemSpec:
    name: str
    version: str
    deps: tuple[tuple[str, str], ...] = ()  # (name, requirement)

    @property
    def full_name(self) -> str:
        return f"{self.name}-{self.version}"


DEFAULT_GEMS = (GemSpec("lambda-e2e", "1.0.0"), GemSpec("kappa-e2e", "1.0.0", (("lambda-e2e", ">= 1.0"),)))


def ruby_available() -> bool:
    return shutil.which("ruby") is not None and shutil.which("gem") is not None


def _gemspec(spec: GemSpec) -> str:
    deps = "".join(f"  s.add_runtime_dependency {name!r}, {req!r}\n" for name, req in spec.deps)
    return (
        "Gem::Specification.new do |s|\n"
        f"  s.name = {spec.name!r}\n  s.version = {spec.version!r}\n"
        "  s.summary = 'cacheaddon e2e test gem'\n  s.authors = ['cacheaddon e2e']\n  s.license = 'MIT'\n"
        f"  s.files = ['lib/{spec.name}.rb']\n{deps}"
        "end\n"
    )


def build_gems(directory: Path, specs: tuple[GemSpec, ...] = DEFAULT_GEMS) -> dict[str, bytes]:
    """Builds the gems and their index in `directory`; returns server path -> bytes for all of it."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("GEM_", "BUNDLE_", "RUBY"))}
    env["SOURCE_DATE_EPOCH"] = str(packages.FIXED_MTIME)  # reproducible .gem bytes
    gems = directory / "gems"
    gems.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        src = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=directory))
        (src / "lib").mkdir()
        (src / "lib" / f"{spec.name}.rb").write_text(
            f"module E2E; VERSION_{spec.name.replace('-', '_').upper()} = {spec.version!r}; end\n"
        )
        (src / f"{spec.name}.gemspec").write_text(_gemspec(spec))
        subprocess.run(
            ["gem", "build", f"{spec.name}.gemspec", "--output", str(gems / f"{spec.full_name}.gem")],
            cwd=src,
            env=env,
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT,
        )
    subprocess.run(
        ["ruby", "-e", _INDEX_SCRIPT, str(directory)], env=env, check=True, capture_output=True, timeout=60
    )
    files: dict[str, bytes] = {}
    for sub in ("gems", "quick"):
        for path in (directory / sub).rglob("*"):
            if path.is_file():
                files["/" + path.relative_to(directory).as_posix()] = path.read_bytes()
    for name in ("specs", "latest_specs", "prerelease_specs"):
        files[f"/{name}.4.8.gz"] = (directory / f"{name}.4.8.gz").read_bytes()
    return files


class FakeGems:
    """Serves built gems and their full index on https://<ip>:<port>/ (the source URL ends in "/")."""

    def __init__(
        self,
        certs: CertPaths,
        workdir: Path,
        *,
        ip: str = "127.0.0.4",
        port: int = 0,
        specs: tuple[GemSpec, ...] = DEFAULT_GEMS,
    ) -> None:
        self.specs = specs
        self.files = build_gems(workdir, specs)
        self.host = FakeHost(ip, certs, self._route, port, name="gems")

    @property
    def url(self) -> str:
        return self.host.url

    @property
    def source_url(self) -> str:
        return self.host.url + "/"

    def gem(self, spec: GemSpec) -> bytes:
        return self.files[f"/gems/{spec.full_name}.gem"]

    @property
    def requests(self) -> list[Request]:
        return self.host.requests

    def paths(self, method: str | None = "GET") -> list[str]:
        return [r.path for r in self.host.requests if method is None or r.method == method]

    def clear_requests(self) -> None:
        self.host.clear_requests()

    def start(self) -> FakeGems:
        self.host.start()
        return self

    def stop(self) -> None:
        self.host.stop()

    def _route(self, request: Request) -> Reply:
        path = unquote(urlsplit(request.path).path)
        data = self.files.get(path)
        if data is None:  # /versions and /info/* too: no compact index, so gem uses the full one
            return Reply(404, b"Not Found\n", "text/plain")
        immutable = path.startswith(("/gems/", "/quick/"))
        return Reply(
            body=data,
            headers={"Cache-Control": FILE_CACHE_CONTROL if immutable else INDEX_CACHE_CONTROL},
        )
