"""Fixtures of the end-to-end tests: the test CA, a fake registry, mitmdump processes running the addon."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from .clients import MitmConf, Proxy, ProxyFactory
from .fakeregistry import NPM_INDEX_HOSTNAME, NPM_INDEX_IP, CertPaths, FakeRegistry, make_ca
from .seaweed import Seaweed

# Loopback addresses (covered by the test certificate) for hosts on a default port: see registry_443.
DEFAULT_PORT_IPS = tuple(f"127.0.0.{i}" for i in range(6, 10))


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


@pytest.fixture
def registry_factory(request: pytest.FixtureRequest, certs: CertPaths) -> Callable[..., FakeRegistry]:
    """start(**kwargs) -> a started FakeRegistry(certs, **kwargs) (e.g. core_metadata=True,
    pypi_formats=("html",)), stopped at teardown."""

    def start(**kwargs: Any) -> FakeRegistry:
        reg = FakeRegistry(certs, **kwargs)
        request.addfinalizer(reg.stop)
        return reg.start()

    return start


@pytest.fixture
def registry_443(registry_factory: Callable[..., FakeRegistry]) -> Callable[..., FakeRegistry]:
    """start(**kwargs) -> like registry_factory, but the files host listens on port 443 of the first free
    address among DEFAULT_PORT_IPS, so its URLs carry no port, as files.pythonhosted.org's do (give the proxy
    cache_hosts=registry.cache_hosts). Skips the test where no such port can be bound."""

    def start(**kwargs: Any) -> FakeRegistry:
        errors = []
        for ip in DEFAULT_PORT_IPS:
            try:
                return registry_factory(files_ip=ip, files_port=443, **kwargs)
            except OSError as e:
                errors.append(f"{ip}:443: {e}")
        pytest.skip(f"cannot listen on port 443 of any of {DEFAULT_PORT_IPS}: {'; '.join(errors)}")

    return start


@pytest.fixture(scope="session")
def mitm_conf(tmp_path_factory: pytest.TempPathFactory) -> MitmConf:
    """One mitmproxy confdir for the session, so mitmproxy's CA is generated once."""
    return MitmConf(tmp_path_factory.mktemp("mitm-confdir"))


@pytest.fixture
def proxy_factory(
    request: pytest.FixtureRequest, tmp_path: Path, mitm_conf: MitmConf, certs: CertPaths
) -> ProxyFactory:
    """start(**options) -> a running Proxy; each start gets a new cache_dir unless `cache_dir=` is given.
    Options become `--set name=value` (lists repeat it, bools are true/false), except these, which go to
    Proxy (see its __init__): `endpoints=[upstream URL, ...]` (registry endpoints, proxy.endpoint(URL)),
    `modes=[mitmproxy mode spec, ...]`, `extra_args=[...]`, `runner="mitmdump"|"cli"` (`cacheaddon run`),
    `env={...}` (added to the process's environment)."""
    counter = itertools.count(1)

    def start(**options: object) -> Proxy:
        n = next(counter)
        cache_dir = Path(str(options.pop("cache_dir", tmp_path / f"cache-{n}")))
        endpoints = cast("Iterable[str]", options.pop("endpoints", ()))
        modes = cast("Sequence[str] | None", options.pop("modes", None))
        extra_args = cast("Sequence[str]", options.pop("extra_args", ()))
        runner = str(options.pop("runner", "mitmdump"))
        env = cast("dict[str, str] | None", options.pop("env", None))
        proxy = Proxy(
            mitm_conf,
            certs.ca_cert,
            cache_dir,
            tmp_path / f"mitmdump-{n}.log",
            options,
            endpoints=endpoints,
            modes=modes,
            extra_args=extra_args,
            runner=runner,
            env=env,
        )
        request.addfinalizer(proxy.stop)
        return proxy.start()

    return start


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS S3 server for the session (tests keep apart by prefix, see shared_location); tests that
    stop or pause a server use seaweed_factory."""
    server = Seaweed(tmp_path_factory.mktemp("seaweed") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seaweed_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Seaweed]:
    """start() -> a SeaweedFS S3 server of this test's own, stopped at teardown."""
    counter = itertools.count(1)

    def start() -> Seaweed:
        server = Seaweed(tmp_path / f"seaweed-{next(counter)}")
        request.addfinalizer(server.stop)
        return server.start()

    return start


@pytest.fixture
def shared_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own in the bucket."""
    return f"t{next(_PREFIXES)}-{request.node.name[:40]}/".replace("[", "-").replace("]", "")


_PREFIXES = itertools.count(1)
