"""cache_size_limit holds: through a real mitmdump, a 20 MiB cache fed 1, 5 and 30 MiB downloads never
grows past the limit by more than the object being written, is back under the limit once the downloads are
over, keeps the most recent objects (least recently used ones go first) and stores no object larger than a
quarter of the limit. The directory is sampled while the downloads run; the peak is printed (run with -s)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from .clients import ProxyFactory, fetch
from .fakeorigin import sha256
from .fakeregistry import FakeRegistry

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
LIMIT = 20 * MIB
FED = 60 * MIB  # three times the limit, in objects of each size


def directory_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:  # renamed or evicted while we looked
            pass
    return total


class Sampler:
    """The largest size of a directory seen, every 10 ms, until stopped."""

    def __init__(self, path: Path) -> None:
        self.path, self.peak = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, directory_size(self.path))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.peak = max(self.peak, directory_size(self.path))


@pytest.mark.slow
@pytest.mark.parametrize("object_mib", [1, 5, 30])
def test_the_cache_directory_stays_under_the_size_limit(
    registry: FakeRegistry, proxy_factory: ProxyFactory, tmp_path: Path, object_mib: int
) -> None:
    size = object_mib * MIB
    cache_dir = tmp_path / "cache"
    proxy = proxy_factory(cache_dir=cache_dir, cache_size_limit="20m")
    paths = [f"/blobs/{object_mib}m-{i}.bin" for i in range(FED // size)]
    for path in paths:
        registry.add_blob(path, size)
    with Sampler(cache_dir) as sampler:
        for path in paths:
            status, headers, body = fetch(proxy, registry.blob_url(path), timeout=120)
            assert (status, len(body), sha256(body)) == (200, size, registry.blob_sha256(path)), path
            assert headers.get("x-cache") == "MISS", headers.get("x-cache-detail")
            if size > LIMIT // 4:
                assert headers.get("x-cache-detail", "").startswith("not stored: larger than"), path
    final = directory_size(cache_dir)
    print(
        f"\nsize limit 20 MiB, {len(paths)} x {object_mib} MiB: peak {sampler.peak / MIB:.2f} MiB "
        f"({sampler.peak / LIMIT:.3f}x the limit, {(sampler.peak - LIMIT) / 1024:+.0f} KiB), "
        f"after the downloads {final / MIB:.2f} MiB"
    )
    assert sampler.peak <= LIMIT + size
    assert final <= LIMIT
    stored_again = [fetch(proxy, registry.blob_url(p))[1].get("x-cache") for p in (paths[-1], paths[0])]
    if size > LIMIT // 4:
        assert stored_again == ["MISS", "MISS"]  # never stored
    else:
        assert stored_again == ["HIT", "MISS"]  # the newest kept, the oldest evicted
