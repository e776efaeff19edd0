"""A fleet of mitmdump processes, each with its own cache_dir, sharing one bucket on a real S3 server
(SeaweedFS): what one fetched the others serve, with the registry down too; real pip and npm installs through
a second proxy ask the registry nothing; concurrent misses across proxies make one registry request; a lease
holder killed mid-download is replaced; the store stopped and started mid-run; a corrupted object; private
answers kept out of the bucket."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .clients import (
    Proxy,
    ProxyFactory,
    client_env,
    fetch,
    installed_version,
    npm_install,
    pip_install,
    report,
)
from .fakeregistry import FakeRegistry
from .seaweed import Seaweed, s3_env

pytestmark = [pytest.mark.e2e, pytest.mark.s3]

PIP_PACKAGES = ["alpha", "foxtrot"]
PIP_INSTALLED = {"alpha": "1.1.0", "foxtrot": "1.0.0", "echo": "3.1.0"}
NPM_PACKAGES = ["papa", "kilo"]
SETTLE = 30.0  # seconds the bucket may take to receive what a proxy stored (uploads run in the background)

Fleet = Callable[..., Proxy]


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each mitmdump finds the S3 credentials where any AWS client would: in its environment."""
    for name, value in s3_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def fleet(proxy_factory: ProxyFactory, seaweed: Seaweed, shared_prefix: str) -> Iterator[Fleet]:
    """start(server=None, **options) -> a proxy of the fleet: its own cache_dir, the test's prefix of the
    bucket as cache_shared on `server` (default: the session's SeaweedFS)."""

    def start(server: Seaweed | None = None, **options: object) -> Proxy:
        server = server or seaweed
        shared = {
            "cache_shared": f"s3://{server.bucket}/{shared_prefix}",
            "cache_shared_endpoint": server.endpoint,
            "cache_shared_region": "us-east-1",
        }
        return proxy_factory(**shared, **options)

    yield start


def settled(server: Seaweed, prefix: str, at_least: int = 1) -> list[str]:
    """The keys under prefix once at least `at_least` are there and none came for a second."""
    deadline = time.monotonic() + SETTLE
    last: list[str] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        keys = sorted(k for k in server.keys(prefix) if "/leases/" not in k and "/check/" not in k)
        if keys != last:
            last, stable_since = keys, time.monotonic()
        elif len(keys) >= at_least and time.monotonic() - stable_since >= 1.0:
            return keys
        time.sleep(0.2)
    raise AssertionError(f"the bucket did not settle within {SETTLE}s: {last}")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_the_proxy_checks_the_store_at_start(fleet: Fleet) -> None:
    proxy = fleet()
    wait_for(lambda: "conditional writes enforced" in proxy.log_text(), "the start-up check's log line")


def test_a_missing_bucket_is_one_log_line_and_the_proxy_works_on(
    proxy_factory: ProxyFactory, registry: FakeRegistry, seaweed: Seaweed
) -> None:
    proxy = proxy_factory(
        cache_shared="s3://no-such-bucket-anywhere/x",
        cache_shared_endpoint=seaweed.endpoint,
        cache_shared_region="us-east-1",
    )
    url = registry.file_url(registry.wheel("alpha").filename)
    for _ in range(3):
        status, _, body = fetch(proxy, url)
        assert status == 200 and hashlib.sha256(body).hexdigest() == registry.wheel("alpha").sha256
    wait_for(lambda: "the bucket does not exist" in proxy.log_text(), "the missing bucket's log line")
    assert proxy.log_text().count("the bucket does not exist") == 1, proxy.log_tail()


def test_a_file_fetched_through_one_proxy_is_served_by_another_with_the_registry_down(
    fleet: Fleet, registry: FakeRegistry, seaweed: Seaweed, shared_prefix: str
) -> None:
    a, b = fleet(), fleet()
    wheel = registry.wheel("alpha")
    url, page = registry.file_url(wheel.filename), f"{registry.pypi_url}alpha/"
    status, headers, _ = fetch(a, url)
    assert (status, headers["x-cache"]) == (200, "MISS")
    status, headers, page_body = fetch(a, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"]) == (200, "MISS")
    keys = settled(seaweed, shared_prefix, at_least=4)  # two bodies, two records
    assert f"{shared_prefix}sha256/{wheel.sha256}" in keys

    registry.stop()
    status, headers, body = fetch(b, url)
    assert (status, headers["x-cache"]) == (200, "HIT"), b.log_tail()
    assert "shared tier" in headers["x-cache-detail"]
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    status, headers, body = fetch(b, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"], body) == (200, "HIT", page_body)
    assert "shared tier" in headers["x-cache-detail"]
    # Now in B's own tier: answered without the shared one.
    status, headers, _ = fetch(b, url)
    assert (status, headers["x-cache"]) == (200, "HIT") and "shared tier" not in headers["x-cache-detail"]


def test_pip_and_npm_installs_through_a_second_proxy_ask_the_registry_nothing(
    tmp_path: Path, fleet: Fleet, npm_registry: FakeRegistry, seaweed: Seaweed, shared_prefix: str
) -> None:
    registry = npm_registry
    a, b = fleet(), fleet()
    warm = pip_install(tmp_path, PIP_PACKAGES, registry.pypi_url, client_env(a))
    assert warm.returncode == 0, report(warm, a)
    warm = npm_install(tmp_path, NPM_PACKAGES, registry.npm_url, client_env(a))
    assert warm.returncode == 0, report(warm, a)
    settled(seaweed, shared_prefix, at_least=10)

    registry.clear_requests()
    pip = pip_install(tmp_path, PIP_PACKAGES, registry.pypi_url, client_env(b))
    assert pip.returncode == 0, report(pip, b)
    assert pip.dir is not None
    assert {name: installed_version(pip.dir, name) for name in PIP_INSTALLED} == PIP_INSTALLED
    npm = npm_install(tmp_path, NPM_PACKAGES, registry.npm_url, client_env(b))
    assert npm.returncode == 0, report(npm, b)
    assert registry.requests == [], f"the registry was asked through B: {registry.paths(None)}"
    outcomes = {outcome for outcome, _ in b.cache_log()}
    assert outcomes == {"HIT"}, b.log_tail()


def test_eight_clients_over_two_proxies_make_one_registry_request(
    fleet: Fleet, registry: FakeRegistry
) -> None:
    a, b = fleet(), fleet()
    blob = registry.add_blob("/packages/cold-1.0.tar.gz", 512 * 1024, delay=0.15)  # ~1.2 s to download
    url, digest = registry.blob_url(blob.path), registry.blob_sha256(blob.path)
    start = threading.Barrier(8)
    bodies: list[bytes] = []
    errors: list[BaseException] = []

    def client(proxy: Proxy) -> None:
        try:
            start.wait(10)
            status, _, body = fetch(proxy, url, timeout=60)
            assert status == 200
            bodies.append(body)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(p,)) for p in (a, b) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert len(bodies) == 8 and {hashlib.sha256(body).hexdigest() for body in bodies} == {digest}
    asked = [path for path in registry.paths() if path == blob.path]
    assert len(asked) == 1, f"{len(asked)} requests\nA:\n{a.log_tail()}\nB:\n{b.log_tail()}"


def test_a_lease_holder_killed_mid_download_is_replaced(
    fleet: Fleet, registry: FakeRegistry, seaweed: Seaweed, shared_prefix: str
) -> None:
    a, b = fleet(), fleet()
    blob = registry.add_blob("/packages/big-2.0.tar.gz", 3 * 1024 * 1024, delay=0.08)  # ~4 s
    url, digest = registry.blob_url(blob.path), registry.blob_sha256(blob.path)
    first: list[object] = []

    def through_a() -> None:
        try:
            first.append(fetch(a, url, timeout=60))
        except httpx.HTTPError as exc:
            first.append(exc)

    holder = threading.Thread(target=through_a)
    holder.start()
    wait_for(lambda: blob.path in registry.paths(), "A's download to start")
    second: list[object] = []

    def through_b() -> None:
        second.append(fetch(b, url, timeout=90))

    waiter = threading.Thread(target=through_b)
    waiter.start()
    wait_for(lambda: "/leases/" in "".join(seaweed.keys(shared_prefix)), "A's lease")
    time.sleep(1)
    assert a.proc is not None
    a.proc.kill()  # SIGKILL mid-download: no release, no renewal
    holder.join(30)
    waiter.join(90)
    if first and not isinstance(first[0], BaseException):  # whatever A's client got, never a whole wrong body
        status, _, body = first[0]  # type: ignore[misc]
        assert len(body) < blob.size or hashlib.sha256(body).hexdigest() == digest
    assert second, "B's client got no answer"
    status, headers, body = second[0]  # type: ignore[misc]
    assert status == 200 and hashlib.sha256(body).hexdigest() == digest, b.log_tail()
    assert registry.paths().count(blob.path) == 2  # A's cut one, and B's
    keys = settled(seaweed, shared_prefix, at_least=2)
    assert f"{shared_prefix}sha256/{digest}" in keys
    assert seaweed.get(f"{shared_prefix}sha256/{digest}") == body


@pytest.mark.slow
def test_installs_go_on_while_the_store_is_down_and_sharing_resumes(
    tmp_path: Path,
    fleet: Fleet,
    registry: FakeRegistry,
    seaweed_factory: Callable[[], Seaweed],
    shared_prefix: str,
) -> None:
    server = seaweed_factory()
    a, b = fleet(server, cache_upstream_backoff=2), fleet(server, cache_upstream_backoff=2)
    warm = pip_install(tmp_path, ["alpha"], registry.pypi_url, client_env(a))
    assert warm.returncode == 0, report(warm, a)
    settled(server, shared_prefix, at_least=4)

    server.stop()
    for proxy, packages in ((a, ["bravo"]), (b, ["alpha", "charlie"])):
        result = pip_install(tmp_path, packages, registry.pypi_url, client_env(proxy), timeout=60)
        assert result.returncode == 0, report(result, proxy)
    for proxy in (a, b):
        assert proxy.log_text().count("skipping it for") == 1, proxy.log_tail()  # logged once per outage

    server.start()
    time.sleep(3)  # the back-off runs out
    wheel = registry.wheel("delta")
    url = registry.file_url(wheel.filename)
    assert fetch(a, url)[0] == 200
    body_name = f"{shared_prefix}sha256/{wheel.sha256}"
    wait_for(lambda: body_name in server.keys(shared_prefix), "A to share again")
    settled(server, shared_prefix, at_least=6)
    registry.stop()
    status, headers, body = fetch(b, url)
    assert (status, headers["x-cache"]) == (200, "HIT") and "shared tier" in headers["x-cache-detail"]
    assert hashlib.sha256(body).hexdigest() == wheel.sha256


def test_a_corrupted_object_is_detected_not_served_and_fetched_again(
    fleet: Fleet, registry: FakeRegistry, seaweed: Seaweed, shared_prefix: str
) -> None:
    a, b = fleet(), fleet()
    wheel = registry.wheel("bravo")
    url = registry.file_url(wheel.filename)
    assert fetch(a, url)[0] == 200
    settled(seaweed, shared_prefix, at_least=2)
    name = f"{shared_prefix}sha256/{wheel.sha256}"
    good = seaweed.get(name)
    seaweed.put(name, good[:-1] + bytes([good[-1] ^ 0xFF]))
    registry.clear_requests()

    status, headers, body = fetch(b, url)
    assert (status, headers["x-cache"]) == (200, "MISS"), b.log_tail()
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert registry.paths() == [f"/packages/{wheel.filename}"]
    assert "does not match its sha256" in b.log_text()
    wait_for(lambda: name in seaweed.keys(shared_prefix) and seaweed.get(name) == good, "the repaired object")


def test_answers_to_credentialed_requests_stay_out_of_the_bucket(
    fleet: Fleet, registry: FakeRegistry, seaweed: Seaweed, shared_prefix: str
) -> None:
    a = fleet()
    page = f"{registry.pypi_url}charlie/"
    fetch(a, page, {"Accept": "text/html", "Authorization": "Bearer s3cret"})
    public = registry.file_url(registry.wheel("golf").filename)
    fetch(a, public)
    keys = settled(seaweed, shared_prefix, at_least=2)
    golf = registry.wheel("golf").sha256
    assert [k for k in keys if "/sha256/" in k] == [f"{shared_prefix}sha256/{golf}"], keys
    assert len([k for k in keys if "/records/" in k]) == 1, keys  # the public file's record only
    assert all(b"s3cret" not in seaweed.get(k) for k in keys)


def test_a_stale_shared_copy_rescues_an_outage_and_offline_proxies_read_the_tier_if_told_to(
    fleet: Fleet, registry: FakeRegistry, seaweed: Seaweed, shared_prefix: str
) -> None:
    a = fleet(cache_ttl=1)
    page = f"{registry.pypi_url}delta/"
    status, headers, body = fetch(a, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"]) == (200, "MISS")
    settled(seaweed, shared_prefix, at_least=2)
    time.sleep(1.5)  # stale for a proxy with cache_ttl=1
    registry.stop()

    b = fleet(cache_ttl=1)  # an empty local tier: the shared copy is its entry, stale, and the registry down
    status, headers, got = fetch(b, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"], got) == (200, "STALE", body), b.log_tail()
    hermetic = fleet(cache_offline=True)  # contacts nothing, the bucket included
    status, headers, _ = fetch(hermetic, page, {"Accept": "text/html"})
    assert (status, headers["x-cache-detail"]) == (504, "offline: not in cache"), hermetic.log_tail()
    assert "shared tier" not in hermetic.log_text()  # not even the start-up check
    offline = fleet(cache_offline=True, cache_shared_offline=True)  # a bucket on the fleet's own network
    status, headers, got = fetch(offline, page, {"Accept": "text/html"})
    assert (status, headers["x-cache"], got) == (200, "HIT", body), offline.log_tail()
    assert "shared tier" in headers["x-cache-detail"]
    status, _, _ = fetch(offline, f"{registry.pypi_url}echo/", {"Accept": "text/html"})
    assert status == 504  # in neither tier
