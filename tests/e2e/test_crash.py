"""A SIGKILL in the middle of a download leaves a usable cache: entries completed before it are hits with the
right bytes, and the interrupted download is a miss, never a partial body."""

from __future__ import annotations

import os
import signal
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .clients import Proxy, ProxyFactory, fetch
from .fakeorigin import FakeOrigin, Stall, pattern_bytes, sha256, wait_for
from .fakeregistry import CertPaths, FakeRegistry

pytestmark = pytest.mark.e2e

ORIGIN_IP = "127.0.0.4"
SLOW_SIZE = 8 * 1024 * 1024
SENT_BEFORE_STALL = 2 * 1024 * 1024
WAIT = 20.0  # seconds any step of this test may take


@pytest.fixture
def slow_origin(certs: CertPaths) -> Iterator[tuple[FakeOrigin, Stall]]:
    origin = FakeOrigin(ORIGIN_IP, certs=certs)
    stall = Stall(pattern_bytes(SLOW_SIZE, 7), SENT_BEFORE_STALL, origin)
    origin.routes["/big/slow.tar.gz"] = stall.reply
    origin.start()
    try:
        yield origin, stall
    finally:
        stall.release()
        origin.stop()


class Download(threading.Thread):
    """Streams one URL through the proxy in the background, counting the bytes that arrive."""

    def __init__(self, proxy: Proxy, url: str) -> None:
        super().__init__(daemon=True)
        self.proxy, self.url = proxy, url
        self.received = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        verify = ssl.create_default_context(cafile=str(self.proxy.bundle))
        try:
            with httpx.Client(proxy=self.proxy.url, verify=verify, trust_env=False, timeout=WAIT) as client:
                with client.stream("GET", self.url) as response:
                    for chunk in response.iter_raw():
                        self.received += len(chunk)
        except BaseException as exc:  # noqa: BLE001 - the proxy is killed under it on purpose
            self.error = exc


def parts(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "tmp").glob("*") if p.is_file() and p.stat().st_size > 0]


def test_sigkill_mid_download_leaves_a_consistent_cache(
    registry: FakeRegistry, slow_origin: tuple[FakeOrigin, Stall], proxy_factory: ProxyFactory
) -> None:
    origin, stall = slow_origin
    proxy = proxy_factory(
        cache_hosts=[registry.index.ip, registry.files.ip, ORIGIN_IP], cache_max_object_size="100m"
    )
    # Entries completed before the crash: an index page, a wheel, a body held in the database, body files.
    done = {
        f"{registry.pypi_url}alpha/": None,
        registry.file_url(registry.wheel("alpha").filename): registry.wheel("alpha").data,
    }
    for path, size in (("/blobs/crash-small.bin", 20 * 1024), ("/blobs/crash-large.bin", 3 * 1024 * 1024)):
        blob = registry.add_blob(path, size)
        done[registry.blob_url(path)] = b"".join(blob.chunks())
    expected = {}
    for url, data in done.items():
        status, headers, body = fetch(proxy, url)
        assert (status, headers.get("x-cache")) == (200, "MISS"), url
        assert data is None or body == data
        expected[url] = sha256(body)
        status, headers, body = fetch(proxy, url)  # committed: the crash comes after this
        assert (status, headers.get("x-cache"), sha256(body)) == (200, "HIT", expected[url]), url

    slow_url = f"{origin.url}/big/slow.tar.gz"
    download = Download(proxy, slow_url)
    download.start()
    assert wait_for(lambda: download.received >= SENT_BEFORE_STALL // 2, WAIT), (
        f"only {download.received} bytes arrived before the stall\n{proxy.log_tail()}"
    )
    # The body is being written to the cache's temporary file at the moment of the kill.
    assert wait_for(lambda: bool(parts(proxy.cache_dir)), WAIT), "no temporary body file while downloading"
    assert download.received < SLOW_SIZE

    pid = proxy.pid
    assert pid is not None and proxy.proc is not None
    os.kill(pid, signal.SIGKILL)
    proxy.proc.wait(WAIT)
    download.join(WAIT)
    assert not download.is_alive()
    assert download.error is not None or download.received < SLOW_SIZE
    stall.stalling = False  # from now on the origin sends the whole body at once
    stall.release()

    registry.clear_requests()
    proxy.restart()
    mark = proxy.log_size()
    for url in done:
        status, headers, body = fetch(proxy, url)
        assert (status, headers.get("x-cache"), sha256(body)) == (200, "HIT", expected[url]), url
    assert registry.requests == [], "completed entries were fetched again after the restart"

    asked_before = origin.paths().count("/big/slow.tar.gz")
    status, headers, body = fetch(proxy, slow_url)
    assert status == 200 and headers.get("x-cache") == "MISS"
    assert len(body) == SLOW_SIZE and sha256(body) == sha256(stall.data)
    assert origin.paths().count("/big/slow.tar.gz") == asked_before + 1
    status, headers, body = fetch(proxy, slow_url)
    assert (status, headers.get("x-cache"), sha256(body)) == (200, "HIT", sha256(stall.data))
    log = proxy.log_text(mark)
    assert "Traceback" not in log and "Addon error" not in log, log
