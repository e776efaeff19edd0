"""Maven through a registry endpoint: with a settings.xml mirror on http://127.0.0.1:PORT/maven2/ and an empty
local repository, `mvn validate` resolves a parent pom and a build extension with its dependency (poms, jars,
.sha1 files; no plugin, so nothing from Maven Central) through the cache, then again with the repository
stopped."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import ClientResult, Proxy, ProxyFactory, report, run_client
from .fakemaven import EXTENSION, LIBRARY, PARENT, PLEXUS_UTILS, Coordinates, FakeMaven
from .fakeregistry import CertPaths

MVN = shutil.which("mvn")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(MVN is None, reason="mvn is not installed"),
]

POMS = (PARENT, EXTENSION, LIBRARY)
JARS = (EXTENSION, LIBRARY, PLEXUS_UTILS)  # Maven adds plexus-utils to an extension's realm by its jar alone


@pytest.fixture
def maven(certs: CertPaths) -> Iterator[FakeMaven]:
    repo = FakeMaven(certs).start()
    yield repo
    repo.stop()


def gav(c: Coordinates) -> str:
    return f"<groupId>{c.group}</groupId><artifactId>{c.artifact}</artifactId><version>{c.version}</version>"


def mvn_validate(tmp_path: Path, mirror: str, timeout: float = 180) -> ClientResult:
    """`mvn -B validate` of a project whose parent and build extension come from `mirror` (the only
    repository: mirrorOf *), with empty settings otherwise and a new, empty local repository."""
    work = Path(tempfile.mkdtemp(prefix="mvn-", dir=tmp_path))
    settings = work / "settings.xml"
    settings.write_text(
        '<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0">\n  <mirrors>\n    <mirror>\n'
        f"      <id>cacheaddon</id>\n      <url>{mirror}</url>\n      <mirrorOf>*</mirrorOf>\n"
        "    </mirror>\n  </mirrors>\n</settings>\n"
    )
    global_settings = work / "global-settings.xml"
    global_settings.write_text('<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0"/>\n')
    project = work / "project"
    project.mkdir()
    (project / "pom.xml").write_text(
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n  <modelVersion>4.0.0</modelVersion>\n'
        f"  <parent>{gav(PARENT)}<relativePath/></parent>\n  <artifactId>e2e-project</artifactId>\n"
        f"  <build><extensions><extension>{gav(EXTENSION)}</extension></extensions></build>\n</project>\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if "PROXY" not in k.upper() and k.upper() not in ("MAVEN_OPTS", "MAVEN_ARGS", "MAVEN_CONFIG")
    }
    assert MVN is not None
    cmd = [MVN, "-B", "-e", "-C", "-s", str(settings), "-gs", str(global_settings)]
    cmd += [f"-Dmaven.repo.local={work / 'repository'}", "validate"]
    result = run_client(cmd, env, project, timeout)
    result.dir = work / "repository"
    return result


def assert_resolved(result: ClientResult, maven: FakeMaven, proxy: Proxy) -> None:
    assert result.returncode == 0, report(result, proxy)
    assert result.dir is not None
    for c in POMS:
        local = result.dir / c.directory
        assert (local / c.filename("pom")).read_bytes() == maven.artifact(c).pom, report(result, proxy)
    for c in JARS:
        assert (result.dir / c.directory / c.filename("jar")).read_bytes() == maven.artifact(c).jar


def test_mvn_resolves_through_the_endpoint_then_from_the_cache_with_the_repository_stopped(
    tmp_path: Path, maven: FakeMaven, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(endpoints=[maven.url], cache_hosts=[maven.host.ip])
    mirror = proxy.endpoint() + "/maven2/"

    first = mvn_validate(tmp_path, mirror)
    assert_resolved(first, maven, proxy)
    assert f"Downloaded from cacheaddon: {mirror}" in first.stdout
    files = {c.path(ext) for c in POMS for ext in ("pom", "pom.sha1")}
    files |= {c.path(ext) for c in JARS for ext in ("jar", "jar.sha1")}
    assert files <= set(maven.paths()), "mvn did not fetch (and check) every file through the endpoint"
    urls = {maven.url + path for path in files}
    assert urls <= {url for outcome, url in proxy.cache_log() if outcome == "MISS"}, proxy.log_tail()

    maven.stop()
    maven.clear_requests()
    mark = proxy.log_size()
    second = mvn_validate(tmp_path, mirror)  # a new, empty local repository
    assert_resolved(second, maven, proxy)
    outcomes = dict((url, outcome) for outcome, url in proxy.cache_log(mark))
    assert {url: outcomes.get(url) for url in urls} == dict.fromkeys(urls, "HIT"), proxy.log_text(mark)
    assert maven.requests == []
