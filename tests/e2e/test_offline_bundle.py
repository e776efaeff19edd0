"""Offline reproduction: record a real pip and npm install, bundle exactly that, import it into an empty cache
elsewhere, and replay both installs with cache_offline=true and no registry; and bundles that are cut short,
damaged or foreign are refused without touching the target cache."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from .clients import (
    ProxyFactory,
    client_env,
    fetch,
    installed_version,
    npm_install,
    npm_installed_version,
    pip_install,
    report,
)
from .fakeregistry import FakeRegistry
from .ops import cli, cli_json

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_a_recorded_build_replays_offline_from_a_bundle(
    tmp_path: Path, registry: FakeRegistry, npm_registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    record = tmp_path / "build.record"
    proxy = proxy_factory(cache_record=str(record))
    env = client_env(proxy)
    pip = pip_install(tmp_path, ["foxtrot"], registry.pypi_url, env)
    assert pip.returncode == 0, report(pip, proxy)
    npm = npm_install(tmp_path, ["papa"], npm_registry.npm_url, env)
    assert npm.returncode == 0, report(npm, proxy)
    # Cached, but not part of the recorded build: not in the bundle.
    proxy.restart(cache_record="")
    unrecorded = f"{registry.pypi_url}delta/"
    assert fetch(proxy, unrecorded)[0] == 200
    proxy.stop()

    bundle = tmp_path / "build.tar"
    created = cli_json("bundle", "create", record, bundle, cache_dir=proxy.cache_dir)
    assert created["entries"] >= 6  # 2 pip pages + 2 wheels, 2 packuments + 2 tarballs at least
    assert not bundle.with_name("build.tar.partial").exists()

    elsewhere = tmp_path / "elsewhere" / "cache"
    imported = cli_json("bundle", "import", bundle, cache_dir=elsewhere)
    assert (imported["imported"], imported["kept"]) == (created["entries"], 0)
    again = cli_json("bundle", "import", bundle, cache_dir=elsewhere)
    assert (again["imported"], again["kept"]) == (0, created["entries"])
    assert cli_json("verify", cache_dir=elsewhere)["problems"] == []

    registry.stop()
    npm_registry.stop()
    offline = proxy_factory(cache_dir=elsewhere, cache_offline=True)
    env = client_env(offline)
    pip = pip_install(tmp_path, ["foxtrot"], registry.pypi_url, env)
    assert pip.returncode == 0, report(pip, offline)
    assert pip.dir is not None and installed_version(pip.dir, "echo") == "3.1.0"
    npm = npm_install(tmp_path, ["papa"], npm_registry.npm_url, env)
    assert npm.returncode == 0, report(npm, offline)
    assert npm.dir is not None and npm_installed_version(npm.dir, "oscar") == "3.1.0"
    assert {outcome for outcome, _ in offline.cache_log()} <= {"HIT", "STALE"}

    status, _, body = fetch(offline, unrecorded)
    assert status == 504 and unrecorded in body.decode()


def _bundle_and_target(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> tuple[Path, Path]:
    """A bundle of a real install (--since), and a target cache holding another entry of its own."""
    proxy = proxy_factory()
    result = pip_install(tmp_path, ["bravo"], registry.pypi_url, client_env(proxy))
    assert result.returncode == 0, report(result, proxy)
    registry.add_blob("/files/blob.bin", 200_000)
    assert fetch(proxy, registry.blob_url("/files/blob.bin"))[0] == 200
    proxy.stop()
    bundle = tmp_path / "good.tar"
    cli_json("bundle", "create", "--since", "1h", bundle, cache_dir=proxy.cache_dir)
    target = proxy_factory()
    assert fetch(target, registry.file_url(registry.wheel("golf").filename))[0] == 200
    target.stop()
    return bundle, target.cache_dir


def _listing(cache_dir: Path) -> list[dict[str, object]]:
    return [{k: v for k, v in item.items() if k != "age"} for item in cli_json("ls", cache_dir=cache_dir)]


def _flip(data: bytes, at: int) -> bytes:
    flipped = bytearray(data)
    flipped[at] ^= 0x01
    return bytes(flipped)


@pytest.mark.slow
def test_damaged_or_foreign_bundles_are_refused_and_the_cache_is_intact(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    bundle, target = _bundle_and_target(tmp_path, registry, proxy_factory)
    before = _listing(target)
    data = bundle.read_bytes()
    blob_at = data.index(b"cacheaddon-bundle/bodies/" + registry.blob_sha256("/files/blob.bin").encode())
    foreign = io.BytesIO()
    with tarfile.open(fileobj=foreign, mode="w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    manifest_at = data.index(b'"format": "cacheaddon-bundle"')
    cases = {
        "truncated": data[: len(data) // 2],
        # Cut inside the last member (the tar's own end is padding: cutting that loses nothing).
        "truncated-at-the-end": data[: data.index(b"cacheaddon-bundle/manifest.sha256") + 512 + 10],
        "flipped-body": _flip(data, blob_at + 512 + 100_000),  # inside the blob's bytes (after its header)
        "flipped-manifest": _flip(data, manifest_at + 40),
        "foreign-tar": foreign.getvalue(),
        "not-a-tar": b"%PDF-1.7 not a bundle at all\n" * 100,
        "empty": b"",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.tar"
        path.write_bytes(content)
        result = cli("bundle", "import", path, cache_dir=target)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr, (
            name,
            result.stderr,
        )
        assert _listing(target) == before, f"{name}: the target cache changed"
    assert not list((target / "tmp").iterdir()), "a refused import left temporary files"
    assert cli_json("verify", cache_dir=target)["problems"] == []

    good = cli_json("bundle", "import", bundle, cache_dir=target)
    assert good["imported"] > 0
    urls = {item["url"] for item in cli_json("ls", cache_dir=target)}
    assert {item["url"] for item in before} < urls
    assert registry.blob_url("/files/blob.bin") in urls
