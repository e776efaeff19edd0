"""Fixtures of the end-to-end tests: the test CA, a fake registry, mitmdump processes running the addon."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import MitmConf, Proxy, ProxyFactory
from .fakeregistry import NPM_INDEX_HOSTNAME, NPM_INDEX_IP, CertPaths, FakeRegistry, make_ca


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """The fake registry's CA (certs.ca_cert) and server certificate."""
    return make_ca(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def registry(certs: CertPaths) -> Iterator[FakeRegistry]:
    """A started FakeRegistry with the default packages on 127.0.0.2 (index) and 127.0.0.3 (files)."""
    reg = FakeRegistry(certs).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def npm_registry(certs: CertPaths) -> Iterator[FakeRegistry]:
    """Like `registry`, but the index is https://localhost:PORT on 127.0.0.1, which npm can reach through an
    HTTPS proxy (it cannot reach an IP-addressed registry that way: see fakeregistry.NPM_INDEX_HOSTNAME)."""
    reg = FakeRegistry(certs, index_ip=NPM_INDEX_IP, index_hostname=NPM_INDEX_HOSTNAME).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def mitm_conf(tmp_path_factory: pytest.TempPathFactory) -> MitmConf:
    """One mitmproxy confdir for the session, so mitmproxy's CA is generated once."""
    return MitmConf(tmp_path_factory.mktemp("mitm-confdir"))


@pytest.fixture
def proxy_factory(
    request: pytest.FixtureRequest, tmp_path: Path, mitm_conf: MitmConf, certs: CertPaths
) -> ProxyFactory:
    """start(**options) -> a running Proxy; each start gets a new cache_dir unless `cache_dir=` is given.
    Options become `--set name=value` (lists repeat it, bools are true/false)."""
    counter = itertools.count(1)

    def start(**options: object) -> Proxy:
        n = next(counter)
        cache_dir = Path(str(options.pop("cache_dir", tmp_path / f"cache-{n}")))
        proxy = Proxy(mitm_conf, certs.ca_cert, cache_dir, tmp_path / f"mitmdump-{n}.log", options)
        request.addfinalizer(proxy.stop)
        return proxy.start()

    return start
