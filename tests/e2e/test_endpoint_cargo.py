"""cargo through a registry endpoint: a sparse index whose config.json names another host for downloads (as
crates.io does) is rewritten so that every .crate comes through the cache; then a fresh CARGO_HOME fetches
everything again with the registry's hosts stopped."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import ClientResult, ProxyFactory, report, run_client
from .fakecrates import DEFAULT_CRATES, DL_IP, SMALL, FakeCrates, cargo_available, index_path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not cargo_available(), reason="cargo 1.68+ (sparse indexes) is not installed"),
]


@pytest.fixture
def crates() -> Iterator[FakeCrates]:
    server = FakeCrates().start()
    yield server
    server.stop()


def cargo_fetch(tmp_path: Path, registry: str, timeout: float = 120) -> ClientResult:
    """`cargo fetch` of a project depending on small-e2e, in a new CARGO_HOME whose config.toml is the one
    `cacheaddon config cargo` prints (crates-io replaced by the endpoint), with no proxy variables."""
    work = Path(tempfile.mkdtemp(prefix="cargo-", dir=tmp_path))
    home, project = work / "cargo-home", work / "project"
    (project / "src").mkdir(parents=True)
    home.mkdir()
    (home / "config.toml").write_text(
        '[source.crates-io]\nreplace-with = "cacheaddon"\n\n'
        f'[source.cacheaddon]\nregistry = "sparse+{registry}"\n'
    )
    (project / "Cargo.toml").write_text(
        '[package]\nname = "e2e-project"\nversion = "0.1.0"\nedition = "2021"\n\n'
        f'[dependencies]\n{SMALL.name} = "0.2"\n'
    )
    (project / "src" / "lib.rs").write_text("pub fn demo() {}\n")
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("CARGO")}
    env |= {"CARGO_HOME": str(home), "CARGO_TERM_COLOR": "never", "CARGO_NET_RETRY": "0"}
    result = run_client(["cargo", "fetch"], env, project, timeout)
    result.dir = home
    return result


def downloaded(home: Path) -> set[str]:
    """The .crate files cargo keeps in CARGO_HOME/registry/cache/<registry>/."""
    return {p.name for p in (home / "registry" / "cache").rglob("*.crate")}


def test_cargo_fetches_through_the_endpoint_then_from_the_cache_with_the_registry_stopped(
    tmp_path: Path, crates: FakeCrates, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[crates.url], cache_hosts=[DL_IP])
    registry = proxy.endpoint() + "/"
    expected = {f"{c.name}-{c.version}.crate" for c in DEFAULT_CRATES}

    first = cargo_fetch(tmp_path, registry)
    assert first.returncode == 0, report(first, proxy)
    assert first.dir is not None and downloaded(first.dir) == expected
    # Every download came through the endpoint: the download host was asked by the proxy, never by cargo.
    files = {crates.dl.url + crates.download_path(c) for c in DEFAULT_CRATES}
    pages = {crates.url + p for p in ("/config.json", *(index_path(c.name) for c in DEFAULT_CRATES))}
    assert files | pages <= {url for outcome, url in proxy.cache_log() if outcome == "MISS"}, proxy.log_tail()

    crates.stop()
    mark = proxy.log_size()
    second = cargo_fetch(tmp_path, registry, timeout=60)
    assert second.returncode == 0, report(second, proxy)
    assert second.dir is not None and downloaded(second.dir) == expected
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in files | pages} == dict.fromkeys(files | pages, "HIT"), (
        proxy.log_text(mark)
    )
