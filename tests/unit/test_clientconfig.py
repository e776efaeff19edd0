from __future__ import annotations

import configparser
import io
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cacheaddon.clientconfig import (
    CA_VARIABLES,
    CLIENTS,
    NO_PROXY,
    bundle_text,
    client_url,
    env_lines,
    pem_certificates,
    snippet,
)

MAVEN_NS = {"m": "http://maven.apache.org/SETTINGS/1.2.0"}


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return parser


def _yaml(text: str) -> Any:
    return YAML(typ="safe").load(text)


def _npmrc(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", ";"))]
    return dict(line.split("=", 1) for line in lines)


def test_every_client_has_a_comment_first_line_naming_its_file() -> None:
    files = {
        "pip": "pip.conf",
        "uv": "uv.toml",
        "npm": ".npmrc",
        "pnpm": ".npmrc",
        "yarn": ".yarnrc.yml",
        "setuptools": ".pydistutils.cfg",
        "buildout": "buildout",
        "maven": "settings.xml",
        "gem": ".gemrc",
        "nuget": "NuGet.Config",
        "cargo": "config.toml",
        "go": "go env",
    }
    assert set(files) == set(CLIENTS)
    for client, name in files.items():
        first = snippet(client).splitlines()[0]
        assert first.startswith(("# ", "<!-- ")), client
        assert name in first, client


def test_pip() -> None:
    conf = _ini(snippet("pip"))
    assert conf["global"]["index-url"] == "http://127.0.0.1:8081/simple/"
    # 127.0.0.1 is one of pip's secure origins: no trusted-host needed.
    assert "trusted-host" not in conf["global"]


def test_pip_trusts_a_plain_http_endpoint_elsewhere() -> None:
    conf = _ini(snippet("pip", "http://cache.internal:9000"))
    assert conf["global"]["index-url"] == "http://cache.internal:9000/simple/"
    assert conf["global"]["trusted-host"] == "cache.internal"
    assert "trusted-host" not in _ini(snippet("pip", "https://cache.internal"))["global"]


def test_uv() -> None:
    conf = tomllib.loads(snippet("uv"))
    assert conf == {"index": [{"url": "http://127.0.0.1:8081/simple/", "default": True}]}


def test_npmrc_keeps_the_endpoint_out_of_package_lock() -> None:
    expected = {"registry": "http://127.0.0.1:8082/", "omit-lockfile-registry-resolved": "true"}
    assert _npmrc(snippet("npm")) == expected


def test_pnpmrc_needs_only_the_registry() -> None:
    # pnpm-lock.yaml names no tarball URL for a package at its registry's usual path
    assert _npmrc(snippet("pnpm")) == {"registry": "http://127.0.0.1:8082/"}


def test_go_proxy_has_no_direct_fallback() -> None:
    assert snippet("go").splitlines()[1:] == ["go env -w GOPROXY=http://127.0.0.1:8088"]


def test_yarn_berry() -> None:
    conf = _yaml(snippet("yarn"))
    assert conf == {"npmRegistryServer": "http://127.0.0.1:8083", "unsafeHttpWhitelist": ["127.0.0.1"]}
    assert _yaml(snippet("yarn", "https://cache.internal")) == {"npmRegistryServer": "https://cache.internal"}


def test_setuptools() -> None:
    assert _ini(snippet("setuptools"))["easy_install"]["index_url"] == "http://127.0.0.1:8081/simple/"


def test_buildout() -> None:
    assert _ini(snippet("buildout"))["buildout"]["index"] == "http://127.0.0.1:8081/simple/"


def test_maven() -> None:
    root = ET.fromstring(snippet("maven"))
    assert root.tag == "{http://maven.apache.org/SETTINGS/1.2.0}settings"
    mirrors = root.findall("m:mirrors/m:mirror", MAVEN_NS)
    assert len(mirrors) == 1
    assert mirrors[0].findtext("m:url", namespaces=MAVEN_NS) == "http://127.0.0.1:8084/maven2/"
    assert mirrors[0].findtext("m:mirrorOf", namespaces=MAVEN_NS) == "central"
    assert mirrors[0].findtext("m:id", namespaces=MAVEN_NS)


def test_gem() -> None:
    assert _yaml(snippet("gem")) == {":sources": ["http://127.0.0.1:8085/"]}


def test_cargo() -> None:
    conf = tomllib.loads(snippet("cargo"))
    assert conf == {
        "source": {
            "crates-io": {"replace-with": "cacheaddon"},
            "cacheaddon": {"registry": "sparse+http://127.0.0.1:8087/"},
        }
    }
    other = tomllib.loads(snippet("cargo", "https://cache.internal/crates/"))
    assert other["source"]["cacheaddon"]["registry"] == "sparse+https://cache.internal/crates/"


def test_nuget() -> None:
    root = ET.fromstring(snippet("nuget"))
    sources = root.find("packageSources")
    assert sources is not None
    assert sources[0].tag == "clear"
    adds = sources.findall("add")
    assert len(adds) == 1
    assert adds[0].get("value") == "http://127.0.0.1:8086/v3/index.json"
    assert adds[0].get("allowInsecureConnections") == "true"
    https = ET.fromstring(snippet("nuget", "https://cache.internal")).find("packageSources/add")
    assert https is not None and https.get("allowInsecureConnections") is None


@pytest.mark.parametrize(
    ("client", "endpoint", "expected"),
    [
        ("pip", None, "http://127.0.0.1:8081/simple/"),
        ("pip", "http://cache.internal:9000", "http://cache.internal:9000/simple/"),
        ("pip", "http://cache.internal:9000/", "http://cache.internal:9000/simple/"),
        ("pip", "https://cache.internal/pypi/simple/", "https://cache.internal/pypi/simple/"),
        ("maven", "http://127.0.0.1:9084", "http://127.0.0.1:9084/maven2/"),
        ("nuget", None, "http://127.0.0.1:8086/v3/index.json"),
        ("npm", "http://[::1]:9082", "http://[::1]:9082/"),
        ("gem", None, "http://127.0.0.1:8085/"),
    ],
)
def test_client_url(client: str, endpoint: str | None, expected: str) -> None:
    assert client_url(client, endpoint) == expected


@pytest.mark.parametrize(
    "endpoint", ["ftp://cache.internal", "cache.internal:8081", "http://", "http://x:port", "http://x/?q=1"]
)
def test_bad_endpoint(endpoint: str) -> None:
    with pytest.raises(ValueError, match="^--endpoint: "):
        client_url("pip", endpoint)


def _eval_env(lines: list[str], names: list[str], cwd: Path) -> list[str]:
    script = "\n".join(lines) + "\n" + "".join(f'printf "%s\\n" "${name}"\n' for name in names)
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, timeout=30, cwd=cwd
    )
    return out.stdout.splitlines()


def test_env_lines_survive_eval_with_awkward_paths(tmp_path: Path) -> None:
    bundle = "/tmp/a dir/it's $(touch pwned) `touch pwned`.pem"
    lines = env_lines("http://127.0.0.1:8080", bundle)
    assert all(line.startswith("export ") for line in lines)
    names = ["HTTPS_PROXY", "http_proxy", "NO_PROXY", "no_proxy", *CA_VARIABLES]
    values = _eval_env(lines, names, tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert values[:2] == ["http://127.0.0.1:8080"] * 2
    assert values[2:4] == [NO_PROXY] * 2
    assert values[4:] == [bundle] * len(CA_VARIABLES)


def test_no_proxy_keeps_only_loopback() -> None:
    assert set(NO_PROXY.split(",")) == {"localhost", "127.0.0.1", "::1"}


def _fake_cert(body: str) -> str:
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----"


def test_pem_certificates_skips_everything_but_certificates() -> None:
    text = io.StringIO()
    text.write("# Issuer: somebody\n")
    text.write(_fake_cert("QUJD\nREVG") + "\n\n")
    text.write("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    text.write(_fake_cert("R0hJ").replace("\n", "\r\n") + "\r\n")
    assert pem_certificates(text.getvalue()) == [_fake_cert("QUJD\nREVG"), _fake_cert("R0hJ")]


def test_bundle_text_keeps_order_and_drops_duplicates() -> None:
    a, b, c = _fake_cert("QQ=="), _fake_cert("Qg=="), _fake_cert("Qw==")
    text = bundle_text([a, b], [c, a])
    assert pem_certificates(text) == [a, b, c]
    assert text.endswith("-----END CERTIFICATE-----\n")
