"""The fake registry on its own, without the proxy: real pip and npm install from it, and its modes behave."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import ssl
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from . import packages
from .clients import client_env, installed_version, npm_install, npm_installed_version, pip_install
from .fakeregistry import NPM_ABBREVIATED, PYPI_HTML, PYPI_JSON, CertPaths, FakeRegistry, negotiate

pytestmark = pytest.mark.e2e

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
NPM_CORGI_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@pytest.fixture
def client(certs: CertPaths) -> Iterator[httpx.Client]:
    verify = ssl.create_default_context(cafile=str(certs.ca_cert))
    with httpx.Client(verify=verify, trust_env=False, timeout=10) as c:
        yield c


def raw_get(certs: CertPaths, host: str, port: int, path: str, timeout: float = 10) -> tuple[bytes, bytes]:
    """One GET on a fresh TLS connection, read to EOF: (head, body) exactly as the server sent them."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, OSError):
                    break  # EOF without close_notify
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


# --- packages -----------------------------------------------------------------------------------------------


def test_wheel_has_a_correct_record_and_is_byte_stable() -> None:
    filename, data = packages.make_wheel("foxtrot", "1.0.0", ["echo>=3"])
    assert filename == "foxtrot-1.0.0-py3-none-any.whl"
    assert packages.make_wheel("foxtrot", "1.0.0", ["echo>=3"])[1] == data
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        record = zf.read("foxtrot-1.0.0.dist-info/RECORD").decode().splitlines()
        assert "Requires-Dist: echo>=3" in zf.read("foxtrot-1.0.0.dist-info/METADATA").decode()
        assert zf.read("foxtrot/__init__.py") == b'VERSION = "1.0.0"\n'
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            if path.endswith("RECORD"):
                assert digest == size == ""
                continue
            content = zf.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={expected}", len(content))


def test_npm_tarball_is_byte_stable_and_holds_the_manifest() -> None:
    data = packages.make_npm_tarball("papa", "1.0.0", {"oscar": "^3.0.0"})
    assert packages.make_npm_tarball("papa", "1.0.0", {"oscar": "^3.0.0"}) == data
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["package/index.js", "package/package.json"]
        manifest = json.loads(tar.extractfile("package/package.json").read())  # type: ignore[union-attr]
    assert manifest["dependencies"] == {"oscar": "^3.0.0"}


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/html"),
        ("", "text/html"),
        ("*/*", "text/html"),
        ("text/html", "text/html"),
        (PIP_ACCEPT, PYPI_JSON),
        ("application/vnd.pypi.simple.v1+json;q=0.2, text/html", "text/html"),
        ("application/vnd.pypi.simple.v1+html", PYPI_HTML),
        ("application/*;q=0.5, text/html;q=0.4", PYPI_HTML),  # a tie goes to the earlier offer
    ],
)
def test_negotiate_follows_q_values(accept: str | None, expected: str) -> None:
    assert negotiate(accept, ("text/html", PYPI_HTML, PYPI_JSON), "text/html") == expected


# --- real clients against the fake --------------------------------------------------------------------------


def test_pip_installs_directly(tmp_path: Path, registry: FakeRegistry, certs: CertPaths) -> None:
    env = client_env(bundle=certs.ca_cert)
    result = pip_install(
        tmp_path, ["foxtrot", "alpha"], registry.pypi_url, env, extra_args=["--cert", str(certs.ca_cert)]
    )
    assert result.returncode == 0, result.output
    assert result.dir is not None
    assert installed_version(result.dir, "foxtrot") == "1.0.0"
    assert installed_version(result.dir, "echo") == "3.1.0"
    assert installed_version(result.dir, "alpha") == "1.1.0"
    paths = registry.paths()
    assert "/simple/foxtrot/" in paths
    assert "/packages/echo-3.1.0-py3-none-any.whl" in paths
    index_accepts = {r.headers.get("accept") for h, r in registry.requests if h == "index"}
    assert all(a and "application/vnd.pypi.simple.v1+json" in a for a in index_accepts)


def test_npm_installs_directly(tmp_path: Path, registry: FakeRegistry, certs: CertPaths) -> None:
    env = client_env(bundle=certs.ca_cert)
    result = npm_install(tmp_path, ["papa", "kilo", "@fake/quebec"], registry.npm_url, env)
    assert result.returncode == 0, result.output
    assert result.dir is not None
    assert npm_installed_version(result.dir, "papa") == "1.0.0"
    assert npm_installed_version(result.dir, "oscar") == "3.1.0"
    assert npm_installed_version(result.dir, "kilo") == "1.1.0"
    assert npm_installed_version(result.dir, "@fake/quebec") == "1.0.0"
    paths = registry.paths()
    assert "/papa" in paths
    assert "/oscar/-/oscar-3.1.0.tgz" in paths


# --- content negotiation and validators ---------------------------------------------------------------------


def test_simple_api_answers_json_or_html_by_accept(client: httpx.Client, registry: FakeRegistry) -> None:
    as_json = client.get(registry.pypi_url + "alpha/", headers={"Accept": PIP_ACCEPT})
    as_html = client.get(registry.pypi_url + "alpha/", headers={"Accept": "text/html"})
    assert as_json.status_code == as_html.status_code == 200
    assert as_json.headers["content-type"] == PYPI_JSON
    assert as_html.headers["content-type"].startswith("text/html")
    for r in (as_json, as_html):
        assert r.headers["vary"] == "Accept, Accept-Encoding"
        assert r.headers["cache-control"] == "max-age=600, public"
    files = as_json.json()["files"]
    assert [f["filename"] for f in files] == ["alpha-1.0.0-py3-none-any.whl", "alpha-1.1.0-py3-none-any.whl"]
    assert files[0]["url"].startswith(registry.files.url + "/packages/")
    wheel = registry.wheel("alpha", "1.0.0")
    assert f'href="{registry.file_url(wheel.filename)}#sha256={wheel.sha256}"' in as_html.text
    assert "data-requires-python" not in as_html.text
    assert as_json.headers["etag"] != as_html.headers["etag"]
    assert client.get(registry.pypi_url + "nosuch/").status_code == 404
    assert "alpha" in client.get(registry.pypi_url, headers={"Accept": PIP_ACCEPT}).text


def test_npm_packument_is_abbreviated_or_full_by_accept(client: httpx.Client, registry: FakeRegistry) -> None:
    corgi = client.get(registry.npm_url + "papa", headers={"Accept": NPM_CORGI_ACCEPT})
    full = client.get(registry.npm_url + "papa", headers={"Accept": "application/json"})
    assert corgi.headers["content-type"] == NPM_ABBREVIATED
    assert full.headers["content-type"] == "application/json"
    assert "vary" not in corgi.headers and "vary" not in full.headers
    assert set(corgi.json()) == {"name", "modified", "dist-tags", "versions"}
    assert {"description", "readme", "time"} <= set(full.json())
    dist = corgi.json()["versions"]["1.0.0"]["dist"]
    tarball = client.get(dist["tarball"])
    assert tarball.status_code == 200
    assert dist["integrity"] == packages.npm_integrity(tarball.content)
    assert dist["shasum"] == hashlib.sha1(tarball.content).hexdigest()
    scoped = client.get(registry.npm_url + "@fake%2fquebec")
    assert scoped.json()["name"] == "@fake/quebec"
    assert client.get(scoped.json()["versions"]["1.0.0"]["dist"]["tarball"]).status_code == 200
    assert client.get(registry.npm_url + "nosuch").status_code == 404


def test_validators_give_304(client: httpx.Client, registry: FakeRegistry) -> None:
    url = registry.file_url(registry.wheel("bravo").filename)
    first = client.get(url)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/octet-stream"
    assert int(first.headers["content-length"]) == len(first.content)
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    assert etag == f'"{hashlib.sha256(first.content).hexdigest()[:32]}"'
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


# --- failure modes ------------------------------------------------------------------------------------------


def test_503_mode(client: httpx.Client, registry: FakeRegistry) -> None:
    registry.mode = "503"
    r = client.get(registry.pypi_url + "alpha/")
    assert r.status_code == 503
    assert r.content
    registry.mode = "ok"
    assert client.get(registry.pypi_url + "alpha/").status_code == 200


def test_truncate_mode_sends_half_the_body_then_closes(
    client: httpx.Client, registry: FakeRegistry, certs: CertPaths
) -> None:
    wheel = registry.wheel("charlie")
    registry.mode = "truncate"
    head, body = raw_get(certs, registry.files.ip, registry.files.port, f"/packages/{wheel.filename}")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(wheel.data)}".encode() in head
    assert body == wheel.data[: len(wheel.data) // 2]
    with pytest.raises(httpx.HTTPError):
        client.get(registry.file_url(wheel.filename))


def test_hang_mode_holds_the_request_until_stop(
    client: httpx.Client, registry: FakeRegistry, certs: CertPaths
) -> None:
    registry.mode = "hang"
    with pytest.raises(httpx.ReadTimeout):
        client.get(registry.pypi_url + "alpha/", timeout=1)
    assert "/simple/alpha/" in registry.paths()

    outcome: list[object] = []

    def slow_get() -> None:
        try:
            outcome.append(client.get(registry.pypi_url + "bravo/", timeout=30))
        except httpx.HTTPError as e:
            outcome.append(e)

    waiter = threading.Thread(target=slow_get, daemon=True)
    waiter.start()
    time.sleep(0.5)
    started = time.monotonic()
    registry.stop()
    waiter.join(10)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], httpx.HTTPError)


def test_stop_refuses_connections_and_restart_reuses_the_port(
    client: httpx.Client, registry: FakeRegistry
) -> None:
    port = registry.index.port
    assert client.get(registry.pypi_url + "alpha/").status_code == 200
    registry.stop()
    with pytest.raises(httpx.ConnectError):
        client.get(registry.pypi_url + "alpha/")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((registry.index.ip, port), timeout=2).close()
    registry.start()
    assert registry.index.port == port
    assert client.get(registry.pypi_url + "alpha/").status_code == 200


def test_blob_is_streamed_deterministically(client: httpx.Client, registry: FakeRegistry) -> None:
    size = 3 * 1024 * 1024 + 17
    registry.add_blob("/blobs/big.bin", size)
    digest = hashlib.sha256()
    with client.stream("GET", registry.blob_url("/blobs/big.bin")) as r:
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == size
        received = 0
        for chunk in r.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == registry.blob_sha256("/blobs/big.bin")
    assert r.headers["etag"] == f'"{digest.hexdigest()[:32]}"'
