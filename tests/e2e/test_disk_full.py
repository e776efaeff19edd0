"""A full disk under the cache never costs the client its download: the body arrives whole, a warning is
logged, and the cache stays consistent (what it held is still served, new small entries are still stored)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import Proxy, ProxyFactory, fetch
from .fakeorigin import sha256, wait_for
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

DISK_SIZE = "8m"
HUGE = 20 * 1024 * 1024
NO_SPACE = re.compile(r"(?i)no space left|disk full|cannot write to the cache")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: the cache directory and its tmp/ (where downloads are spooled) fill up together."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        # proxy_factory's finalizers (registered later) have stopped mitmdump by now.
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def expect(proxy: Proxy, url: str, outcome: str, digest: str) -> None:
    status, headers, body = fetch(proxy, url)
    assert (status, headers.get("x-cache"), sha256(body)) == (200, outcome, digest), (url, len(body))


def temporary_files(proxy: Proxy) -> list[Path]:
    return [p for p in (proxy.cache_dir / "tmp").glob("*") if p.is_file()]


def test_download_larger_than_the_free_space_arrives_whole(
    small_disk: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(cache_dir=small_disk / "cache", cache_max_object_size="100m")
    small = {
        f"{registry.pypi_url}alpha/": "",
        registry.file_url(registry.wheel("alpha").filename): sha256(registry.wheel("alpha").data),
    }
    for path, size in (("/blobs/before-1.bin", 100 * 1024), ("/blobs/before-2.bin", 300 * 1024)):
        registry.add_blob(path, size)
        small[registry.blob_url(path)] = registry.blob_sha256(path)
    for url in small:
        status, headers, body = fetch(proxy, url)
        assert (status, headers.get("x-cache")) == (200, "MISS"), url
        small[url] = small[url] or sha256(body)
        expect(proxy, url, "HIT", small[url])

    registry.add_blob("/blobs/huge.tar.gz", HUGE)
    huge_url = registry.blob_url("/blobs/huge.tar.gz")
    mark = proxy.log_size()
    status, headers, body = fetch(proxy, huge_url, timeout=60)
    assert status == 200 and headers.get("x-cache") == "MISS"
    assert len(body) == HUGE and sha256(body) == registry.blob_sha256("/blobs/huge.tar.gz")
    assert wait_for(lambda: bool(NO_SPACE.search(proxy.log_text(mark))), 10), proxy.log_text(mark)
    # The partial copy is removed, so the space it took is free again.
    assert wait_for(lambda: not temporary_files(proxy), 10), temporary_files(proxy)

    for url, digest in small.items():
        expect(proxy, url, "HIT", digest)
    registry.add_blob("/blobs/after.bin", 200 * 1024)
    after_url = registry.blob_url("/blobs/after.bin")
    expect(proxy, after_url, "MISS", registry.blob_sha256("/blobs/after.bin"))
    expect(proxy, after_url, "HIT", registry.blob_sha256("/blobs/after.bin"))
    # The huge file was not stored: asked again, it comes whole from the registry again.
    expect(proxy, huge_url, "MISS", registry.blob_sha256("/blobs/huge.tar.gz"))


@pytest.mark.parametrize(
    "stale_on_error",
    [
        pytest.param(True, id="stale-on-error"),
        pytest.param(False, id="no-stale-on-error"),
    ],
)
def test_new_large_version_of_a_stale_entry_arrives_whole(
    small_disk: Path, registry: FakeRegistry, proxy_factory: ProxyFactory, stale_on_error: bool
) -> None:
    proxy = proxy_factory(
        cache_dir=small_disk / "cache",
        cache_max_object_size="100m",
        cache_ttl=1,
        cache_stale_on_error=stale_on_error,
    )
    path = "/blobs/grows.bin"  # not immutable: it goes stale after cache_ttl
    url = registry.blob_url(path)
    registry.add_blob(path, 200 * 1024)
    old = registry.blob_sha256(path)
    expect(proxy, url, "MISS", old)
    expect(proxy, url, "HIT", old)

    registry.add_blob(path, HUGE)  # a new version (new ETag) larger than the disk
    new = registry.blob_sha256(path)
    time.sleep(1.5)  # the entry is now stale: the next request revalidates it and gets the new body
    status, headers, body = fetch(proxy, url, timeout=60)
    assert (status, len(body), sha256(body) == new) == (200, HUGE, True), (
        status,
        headers.get("x-cache"),
        headers.get("x-cache-detail"),
        len(body),
    )
    assert headers.get("x-cache") in ("MISS", "REVALIDATED")
