"""`cacheaddon ls | verify | purge | refresh` on a cache filled by real pip traffic through a real proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clients import ProxyFactory, client_env, fetch, installed_version, pip_install, report
from .fakeregistry import FakeRegistry
from .ops import cli, cli_json

pytestmark = pytest.mark.e2e

BLOB = "/files/big.bin"


def _largest_body(cache_dir: Path) -> Path:
    return max(cache_dir.glob("*/*/*.val"), key=lambda p: p.stat().st_size)


@pytest.mark.slow
def test_ls_verify_purge_on_real_traffic(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()
    env = client_env(proxy)
    result = pip_install(tmp_path, ["foxtrot", "alpha"], registry.pypi_url, env)
    assert result.returncode == 0, report(result, proxy)
    registry.add_blob(BLOB, 300_000)  # large enough to be a file of its own in the cache
    assert fetch(proxy, registry.blob_url(BLOB))[0] == 200
    cache = proxy.cache_dir

    listed = cli_json("ls", cache_dir=cache)
    by_url = {item["url"]: item for item in listed}
    for name in ("foxtrot", "echo", "alpha"):
        wheel = registry.wheel(name)
        item = by_url[registry.file_url(wheel.filename)]
        assert (item["status"], item["size"], item["sha256"], item["state"]) == (
            200,
            len(wheel.data),
            wheel.sha256,
            "immutable",
        )
    pages = [item for item in listed if "/simple/" in item["url"]]
    assert pages and all(item["state"] == "fresh" for item in pages)
    assert cli_json("stats", cache_dir=cache)["entries"] == len(listed)
    assert [i["url"] for i in cli_json("ls", "*.whl", cache_dir=cache)] == sorted(
        registry.file_url(registry.wheel(n).filename) for n in ("alpha", "echo", "foxtrot")
    )
    assert [i["url"] for i in cli_json("ls", "foxtrot", "--sort", "size", cache_dir=cache)][0].endswith(
        ".whl"
    )
    plain = cli("ls", "alpha", cache_dir=cache)  # not a terminal: plain columns, one line per entry
    assert plain.returncode == 0 and registry.wheel("alpha").filename in plain.stdout
    assert cli("ls", "--sort", "colour", cache_dir=cache).returncode == 2

    assert cli("verify", cache_dir=cache).returncode == 0
    body = _largest_body(cache)
    data = bytearray(body.read_bytes())
    data[1000] ^= 0xFF
    body.write_bytes(bytes(data))
    broken = cli_json_status("verify", cache_dir=cache)
    assert broken[0] == 1
    assert [(p["kind"], p["what"]) for p in broken[1]["problems"]] == [
        ("corrupt-body", registry.blob_url(BLOB))
    ]
    fixed = cli("verify", "--fix", cache_dir=cache)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert cli_json("verify", cache_dir=cache)["problems"] == []
    after = {item["url"] for item in cli_json("ls", cache_dir=cache)}
    assert after == set(by_url) - {registry.blob_url(BLOB)}, "verify --fix must keep every healthy entry"

    removed = cli_json("purge", "*foxtrot*", cache_dir=cache)
    assert removed["removed"] == len([u for u in after if "foxtrot" in u]) >= 2
    assert removed["freed_bytes"] >= len(registry.wheel("foxtrot").data)
    assert not [i for i in cli_json("ls", cache_dir=cache) if "foxtrot" in i["url"]]
    assert fetch(proxy, registry.file_url(registry.wheel("foxtrot").filename))[1]["x-cache"] == "MISS"

    refused = cli("purge", "--all", cache_dir=cache)  # stdin is not a terminal: nothing without --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert cli_json("stats", cache_dir=cache)["entries"] > 0
    assert cli("purge", cache_dir=cache).returncode == 2
    assert cli_json("purge", "--all", "--yes", cache_dir=cache)["removed"] > 0
    assert cli_json("stats", cache_dir=cache)["entries"] == 0
    missing = cli("ls", cache_dir=tmp_path / "no-such-dir")
    assert missing.returncode == 1 and "no-such-dir" in missing.stderr


def cli_json_status(*args: str, cache_dir: Path) -> tuple[int, dict[str, object]]:
    import json

    result = cli(*args, "--json", cache_dir=cache_dir)
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
def test_refresh_makes_a_new_release_installable_before_the_ttl(
    tmp_path: Path, registry: FakeRegistry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory()  # cache_ttl: one day
    env = client_env(proxy)
    first = pip_install(tmp_path, ["alpha"], registry.pypi_url, env)
    assert first.returncode == 0, report(first, proxy)
    assert first.dir is not None and installed_version(first.dir, "alpha") == "1.1.0"

    registry.add_wheel("alpha", "1.2.0")
    cached = pip_install(tmp_path, ["alpha==1.2.0"], registry.pypi_url, env)
    assert cached.returncode != 0, "the cached index should not know 1.2.0 yet"

    refreshed = cli_json("refresh", "alpha", cache_dir=proxy.cache_dir)
    assert refreshed["marked_stale"] == [f"{registry.pypi_url}alpha/"]
    files = cli("refresh", "*.whl", cache_dir=proxy.cache_dir)  # package files never go stale
    assert files.returncode == 1 and "skipped" in files.stdout
    assert [i["state"] for i in cli_json("ls", "/simple/alpha/", cache_dir=proxy.cache_dir)] == ["stale"]

    new = pip_install(tmp_path, ["alpha==1.2.0"], registry.pypi_url, env)
    assert new.returncode == 0, report(new, proxy)
    assert new.dir is not None and installed_version(new.dir, "alpha") == "1.2.0"

    # Marked stale, an entry still rescues an outage.
    assert cli("refresh", "alpha", cache_dir=proxy.cache_dir).returncode == 0
    registry.stop()
    rescued = pip_install(tmp_path, ["alpha==1.2.0"], registry.pypi_url, env)
    assert rescued.returncode == 0, report(rescued, proxy)
    assert cli("refresh", "no-such-package", cache_dir=proxy.cache_dir).returncode == 1
