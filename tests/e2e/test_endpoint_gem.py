"""RubyGems through a registry endpoint: `gem install --clear-sources --source http://127.0.0.1:PORT/`
installs a gem and its dependency through the cache (full index: specs.4.8.gz, quick gemspecs, .gem files),
then again from a fresh home with the gem server stopped."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import ClientResult, ProxyFactory, report, run_client
from .fakegems import DEFAULT_GEMS, FakeGems, ruby_available
from .fakeregistry import CertPaths

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not ruby_available(), reason="ruby/gem are not installed")]

LAMBDA, KAPPA = DEFAULT_GEMS  # kappa-e2e depends on lambda-e2e


@pytest.fixture
def gems(certs: CertPaths, tmp_path: Path) -> Iterator[FakeGems]:
    server = FakeGems(certs, tmp_path / "gem-build").start()
    yield server
    server.stop()


def gem_install(tmp_path: Path, names: list[str], source: str, timeout: float = 120) -> ClientResult:
    """`gem install` with only `source`, into a new GEM_HOME, from a new HOME (so no ~/.gemrc and an empty
    spec cache), with no proxy variables. result.dir is the install directory."""
    home = Path(tempfile.mkdtemp(prefix="gem-home-", dir=tmp_path))
    gemrc = home / "gemrc"
    gemrc.write_text("--- {}\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if "PROXY" not in k.upper() and not k.upper().startswith(("GEM_", "GEMRC", "BUNDLE_", "RUBY"))
    }
    env |= {"HOME": str(home), "GEM_HOME": str(home / "gems"), "GEM_PATH": str(home / "gems")}
    env["GEM_SPEC_CACHE"] = str(home / "spec-cache")
    cmd = ["gem", "install", "--config-file", str(gemrc), "--clear-sources", "--source", source]
    cmd += ["--install-dir", str(home / "gems"), "--no-document", *names]
    result = run_client(cmd, env, home, timeout)
    result.dir = home / "gems"
    return result


def assert_installed(result: ClientResult, gems: FakeGems) -> None:
    assert result.dir is not None
    for spec in (LAMBDA, KAPPA):
        assert (result.dir / "gems" / spec.full_name / "lib" / f"{spec.name}.rb").is_file(), result.output
        assert (result.dir / "cache" / f"{spec.full_name}.gem").read_bytes() == gems.gem(spec)


def test_gem_installs_through_the_endpoint_then_from_the_cache_with_the_server_stopped(
    tmp_path: Path, gems: FakeGems, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[gems.url], cache_hosts=[gems.host.ip])
    source = proxy.endpoint() + "/"

    first = gem_install(tmp_path, [KAPPA.name], source)
    assert first.returncode == 0, report(first, proxy)
    assert_installed(first, gems)
    files = {"/specs.4.8.gz", *(f"/gems/{s.full_name}.gem" for s in (LAMBDA, KAPPA))}
    files |= {f"/quick/Marshal.4.8/{s.full_name}.gemspec.rz" for s in (LAMBDA, KAPPA)}
    assert files <= set(gems.paths()), gems.paths(None)
    urls = {gems.url + path for path in files}
    assert urls <= {url for outcome, url in proxy.cache_log() if outcome == "MISS"}, proxy.log_tail()

    gems.stop()
    gems.clear_requests()
    mark = proxy.log_size()
    second = gem_install(tmp_path, [KAPPA.name], source, timeout=60)
    assert second.returncode == 0, report(second, proxy)
    assert_installed(second, gems)
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in urls} == dict.fromkeys(urls, "HIT"), proxy.log_text(mark)
    assert gems.requests == []
