"""No wrong body is served: a body corrupted on disk is dropped, logged and fetched again (or, offline, is a
504), and a download whose bytes differ from the digest its index published is not cached."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .clients import Proxy, ProxyFactory, fetch
from .fakeorigin import (
    FakeOrigin,
    OriginReply,
    OriginRequest,
    OriginRoute,
    files_under,
    pattern_bytes,
    sha256,
    wait_for,
)
from .fakeregistry import CertPaths, FakeRegistry

pytestmark = pytest.mark.e2e

# Bodies of 64 KiB and more are files of their own in diskcache's directory; up to 1 MiB they are answered
# from memory, larger ones are streamed through the addon's relay. One size of each kind.
SIZES = {"256k": 256 * 1024, "3m": 3 * 1024 * 1024}
CORRUPT_WARNING = "does not match its sha256"
DIGEST_WARNING = "does not match the digest its index published"


def stored_file(cache_dir: Path, data: bytes) -> Path:
    """The diskcache value file that holds exactly `data`."""
    digest = sha256(data)
    found = [
        p
        for p in cache_dir.rglob("*.val")
        if p.stat().st_size == len(data) and sha256(p.read_bytes()) == digest
    ]
    assert len(found) == 1, f"expected one stored copy of the body, found {found}"
    return found[0]


def corrupt(path: Path, how: str, keep_mtime: bool = False) -> bytes:
    """Flips bytes in the middle of the file, or cuts it in half; returns the corrupt contents."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    if how == "flip":
        middle = len(data) // 2
        for i in range(middle, middle + 16):
            data[i] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    with open(path, "r+b") as f:  # in place: same inode, as bit rot or a torn write would leave it
        f.write(bytes(data))
        f.truncate(len(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return bytes(data)


def warm(proxy: Proxy, url: str, data: bytes) -> None:
    status, headers, body = fetch(proxy, url)
    assert (status, headers.get("x-cache"), body == data) == (200, "MISS", True)
    status, headers, body = fetch(proxy, url)  # read back once: verified, and its file stamp remembered
    assert (status, headers.get("x-cache"), body == data) == (200, "HIT", True)


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("size", list(SIZES))
def test_corrupt_body_on_disk_is_refetched(
    registry: FakeRegistry, proxy_factory: ProxyFactory, size: str, how: str
) -> None:
    blob = registry.add_blob(f"/blobs/corrupt-{size}.bin", SIZES[size])
    url = registry.blob_url(blob.path)
    data = b"".join(blob.chunks())
    proxy = proxy_factory()
    warm(proxy, url, data)

    corrupt(stored_file(proxy.cache_dir, data), how)
    registry.clear_requests()
    mark = proxy.log_size()
    status, headers, body = fetch(proxy, url)
    assert status == 200
    assert sha256(body) == sha256(data), "the client got the corrupt body"
    assert headers.get("x-cache") == "MISS"
    assert registry.paths() == [blob.path], "the body was not fetched again"
    assert CORRUPT_WARNING in proxy.log_text(mark), proxy.log_text(mark)

    # Stored again, whole: the next request is a hit with the right bytes.
    status, headers, body = fetch(proxy, url)
    assert (status, headers.get("x-cache"), sha256(body) == sha256(data)) == (200, "HIT", True)


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("size", list(SIZES))
def test_corrupt_body_offline_is_504_never_the_corrupt_bytes(
    registry: FakeRegistry, proxy_factory: ProxyFactory, size: str, how: str
) -> None:
    blob = registry.add_blob(f"/blobs/offline-{size}.bin", SIZES[size])
    url = registry.blob_url(blob.path)
    data = b"".join(blob.chunks())
    proxy = proxy_factory()
    warm(proxy, url, data)
    proxy.stop()

    bad = corrupt(stored_file(proxy.cache_dir, data), how)
    proxy.restart(cache_offline=True)
    registry.clear_requests()
    mark = proxy.log_size()
    status, headers, body = fetch(proxy, url)
    assert status == 504, (status, headers)
    assert bad[:4096] not in body and body != bad
    assert url in body.decode("utf-8", "replace")
    assert registry.requests == [], "an offline proxy contacted the registry"
    assert CORRUPT_WARNING in proxy.log_text(mark), proxy.log_text(mark)


@pytest.mark.parametrize("size", ["256k", "3m"])
def test_body_rotting_on_disk_is_never_served_whole_and_wrong(
    registry: FakeRegistry, proxy_factory: ProxyFactory, size: str
) -> None:
    """Bit rot keeps a file's size and mtime: the proxy may cut the download short, never deliver it wrong."""
    blob = registry.add_blob(f"/blobs/rot-{size}.bin", SIZES[size])
    url = registry.blob_url(blob.path)
    data = b"".join(blob.chunks())
    proxy = proxy_factory()
    warm(proxy, url, data)

    bad = corrupt(stored_file(proxy.cache_dir, data), "flip", keep_mtime=True)
    try:
        status, _, body = fetch(proxy, url)
    except httpx.TransportError:  # cut short: the client knows its download failed
        status, body = 0, b""
    assert not (status == 200 and sha256(body) == sha256(bad)), "the corrupt body was served whole"
    assert status in (0, 200) and (status == 0 or sha256(body) == sha256(data))

    # Whatever happened, the corrupt copy is gone: the next request gets the right bytes.
    status, _, body = fetch(proxy, url)
    assert status == 200 and sha256(body) == sha256(data)


@pytest.mark.parametrize("size", list(SIZES))
def test_a_range_of_a_rotten_body_is_never_served(
    registry: FakeRegistry, proxy_factory: ProxyFactory, size: str
) -> None:
    """A range is cut from the file, not sent whole through a check: the file is hashed whole first."""
    blob = registry.add_blob(f"/blobs/rot-range-{size}.bin", SIZES[size])
    url = registry.blob_url(blob.path)
    data = b"".join(blob.chunks())
    proxy = proxy_factory()
    warm(proxy, url, data)
    bad = corrupt(stored_file(proxy.cache_dir, data), "flip", keep_mtime=True)
    middle = len(data) // 2
    ranged = {"Range": f"bytes={middle}-{middle + 31}"}

    status, headers, body = fetch(proxy, url, ranged)
    assert body != bad[middle : middle + 32], "bytes of the corrupt body were served"
    assert body in (data[middle : middle + 32], data), (status, headers)
    assert headers.get("x-cache") != "HIT"
    status, headers, body = fetch(proxy, url)  # the corrupt copy was dropped: fetched again
    assert (status, headers.get("x-cache"), sha256(body)) == (200, "MISS", sha256(data))
    status, headers, body = fetch(proxy, url, ranged)
    assert (status, headers.get("x-cache"), body) == (206, "HIT", data[middle : middle + 32])


# --- digests published by indexes --------------------------------------------------------------------------

INDEX_IP = "127.0.0.4"
PYPI_JSON = "application/vnd.pypi.simple.v1+json"


class DigestIndex:
    """An HTTPS registry on INDEX_IP with two files: "good" published with its own digest, "bad" with the
    digest of other bytes. kind: pypi-html (#sha256= links), pypi-json (PEP 691), npm (dist.integrity)."""

    def __init__(self, certs: CertPaths, kind: str, size: int) -> None:
        self.kind = kind
        self.origin = FakeOrigin(INDEX_IP, certs=certs)
        self.data = {"good": pattern_bytes(size, 1), "bad": pattern_bytes(size, 2)}
        self.published = {"good": self.data["good"], "bad": pattern_bytes(size, 3)}
        self.paths = {
            name: (
                f"/tango/-/tango-1.0.{i}.tgz"
                if kind == "npm"
                else f"/files/tango_{name}-1.0-py3-none-any.whl"
            )
            for i, name in enumerate(self.data)
        }
        self.index_path = "/tango" if kind == "npm" else "/simple/tango/"
        for name, path in self.paths.items():
            self.origin.routes[path] = self._file(name)
        self.origin.routes[self.index_path] = self._index

    @property
    def index_url(self) -> str:
        return self.origin.url + self.index_path

    def url(self, name: str) -> str:
        return self.origin.url + self.paths[name]

    def _file(self, name: str) -> OriginRoute:
        def route(request: OriginRequest) -> OriginReply:
            return OriginReply(body=self.data[name], headers={"Cache-Control": "max-age=31536000, immutable"})

        return route

    def _index(self, request: OriginRequest) -> OriginReply:
        if self.kind == "pypi-html":
            links = "".join(
                f'<a href="{self.url(n)}#sha256={sha256(self.published[n])}">{n}</a><br/>\n'
                for n in self.data
            )
            body, ctype = f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html"
        elif self.kind == "pypi-json":
            files = [
                {
                    "filename": self.paths[n].rsplit("/", 1)[1],
                    "url": self.url(n),
                    "hashes": {"sha256": sha256(self.published[n])},
                }
                for n in self.data
            ]
            body, ctype = (
                json.dumps({"meta": {"api-version": "1.0"}, "name": "tango", "files": files}).encode(),
                PYPI_JSON,
            )
        else:
            versions = {
                f"1.0.{i}": {
                    "name": "tango",
                    "version": f"1.0.{i}",
                    "dist": {
                        "tarball": self.url(n),
                        "integrity": "sha512-"
                        + base64.b64encode(hashlib.sha512(self.published[n]).digest()).decode(),
                    },
                }
                for i, n in enumerate(self.data)
            }
            body, ctype = json.dumps({"name": "tango", "versions": versions}).encode(), "application/json"
        return OriginReply(body=body, headers={"Content-Type": ctype, "Cache-Control": "max-age=300"})


@pytest.fixture
def digest_index(request: pytest.FixtureRequest, certs: CertPaths) -> Iterator[DigestIndex]:
    kind, size = request.param
    index = DigestIndex(certs, kind, size)
    index.origin.start()
    try:
        yield index
    finally:
        index.origin.stop()


@pytest.mark.parametrize(
    "digest_index",
    [(kind, size) for kind in ("pypi-html", "pypi-json", "npm") for size in (20 * 1024, 2 * 1024 * 1024)],
    ids=lambda p: f"{p[0]}-{p[1] // 1024}k",
    indirect=True,
)
def test_file_not_matching_its_published_digest_is_not_cached(
    digest_index: DigestIndex, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_hosts=[INDEX_IP])
    status, headers, _ = fetch(proxy, digest_index.index_url)
    assert (status, headers.get("x-cache")) == (200, "MISS")

    outcomes = {}
    mark = proxy.log_size()
    for name in ("good", "bad"):
        url = digest_index.url(name)
        for attempt in (1, 2):
            status, headers, body = fetch(proxy, url)
            assert status == 200 and body == digest_index.data[name]
            outcomes[(name, attempt)] = headers.get("x-cache")
    assert outcomes == {("good", 1): "MISS", ("good", 2): "HIT", ("bad", 1): "MISS", ("bad", 2): "MISS"}
    asked = digest_index.origin.paths()
    assert asked.count(digest_index.paths["bad"]) == 2 and asked.count(digest_index.paths["good"]) == 1

    def warnings() -> list[str]:
        return [line for line in proxy.log_text(mark).splitlines() if DIGEST_WARNING in line]

    # A streamed download is checked once the client has it all: give the last check a moment to log.
    wait_for(lambda: len(warnings()) >= 2, timeout=10)
    assert len(warnings()) == 2, proxy.log_text(mark)
    assert all(digest_index.url("bad") in line for line in warnings()), warnings()
    # Nothing of the refused file was kept: no stored copy of its bytes.
    bad = sha256(digest_index.data["bad"])
    assert not [
        p for p in files_under(proxy.cache_dir) if p.suffix == ".val" and sha256(p.read_bytes()) == bad
    ]
