"""lockfiles.py: what npm, PEP 751 and uv lockfiles pin, with digests."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from cacheaddon import lockfiles

DATA = b"some package"
SHA512 = hashlib.sha512(DATA)
SRI = "sha512-" + base64.b64encode(SHA512.digest()).decode()


def test_npm_v3_and_v1(tmp_path: Path) -> None:
    v3 = {
        "lockfileVersion": 3,
        "packages": {
            "": {"name": "app"},
            "node_modules/a": {"resolved": "https://r.example/a/-/a-1.tgz", "integrity": SRI},
            "node_modules/b": {
                "resolved": "https://r.example/b/-/b-1.tgz",
                "integrity": "sha1-" + base64.b64encode(hashlib.sha1(DATA).digest()).decode(),
            },
            "node_modules/linked": {"link": True, "resolved": "../linked"},
            "node_modules/git": {"resolved": "git+ssh://git@x/y.git", "integrity": SRI},
        },
    }
    path = tmp_path / "package-lock.json"
    path.write_text(json.dumps(v3))
    assert lockfiles.parse(path) == [
        lockfiles.Download("https://r.example/a/-/a-1.tgz", f"sha512={SHA512.hexdigest()}"),
        lockfiles.Download("https://r.example/b/-/b-1.tgz", f"sha1={hashlib.sha1(DATA).hexdigest()}"),
    ]
    v1 = {
        "dependencies": {
            "a": {
                "resolved": "https://r.example/a/-/a-1.tgz",
                "integrity": SRI,
                "dependencies": {"c": {"resolved": "https://r.example/c/-/c-1.tgz", "integrity": SRI}},
            }
        }
    }
    shrinkwrap = tmp_path / "npm-shrinkwrap.json"
    shrinkwrap.write_text(json.dumps(v1))
    assert [d.url for d in lockfiles.parse(shrinkwrap)] == [
        "https://r.example/a/-/a-1.tgz",
        "https://r.example/c/-/c-1.tgz",
    ]


def test_pylock_and_uv_lock(tmp_path: Path) -> None:
    sha = hashlib.sha256(DATA).hexdigest()
    (tmp_path / "pylock.toml").write_text(
        f'''lock-version = "1.0"
[[packages]]
name = "a"
version = "1.0"
sdist = {{ url = "https://f.example/a-1.0.tar.gz", hashes = {{ sha256 = "{sha}" }} }}
wheels = [{{ url = "https://f.example/a-1.0-py3-none-any.whl", hashes = {{ sha256 = "{sha.upper()}" }} }}]
[[packages]]
name = "local"
directory = {{ path = "./local" }}
'''
    )
    assert lockfiles.parse(tmp_path / "pylock.toml") == [
        lockfiles.Download("https://f.example/a-1.0-py3-none-any.whl", f"sha256={sha}"),
        lockfiles.Download("https://f.example/a-1.0.tar.gz", f"sha256={sha}"),
    ]
    (tmp_path / "uv.lock").write_text(
        f"""version = 1
[[package]]
name = "a"
version = "1.0"
source = {{ registry = "https://pypi.org/simple" }}
sdist = {{ url = "https://f.example/a-1.0.tar.gz", hash = "sha256:{sha}", size = 12 }}
wheels = [{{ url = "https://f.example/a-1.0-py3-none-any.whl", hash = "sha256:{sha}", size = 12 }}]
[[package]]
name = "app"
version = "0.1"
source = {{ editable = "." }}
"""
    )
    assert {d.url for d in lockfiles.parse(tmp_path / "uv.lock")} == {
        "https://f.example/a-1.0.tar.gz",
        "https://f.example/a-1.0-py3-none-any.whl",
    }


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("requirements.txt", "x"),
        ("package-lock.json", "{nope"),
        ("uv.lock", "[[["),
        ("package-lock.json", "[" * 100_000 + "]" * 100_000),
        ("pylock.toml", "x = " + "[" * 100_000 + "]" * 100_000),
    ],
)
def test_bad_lockfiles_name_the_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=name):
        lockfiles.parse(path)


def test_sri_picks_the_strongest() -> None:
    sha1 = "sha1-" + base64.b64encode(hashlib.sha1(DATA).digest()).decode()
    assert lockfiles.sri(f"{sha1} {SRI}") == f"sha512={SHA512.hexdigest()}"
    assert lockfiles.sri("md5-xxxx") is None


def test_a_v1_lockfile_nested_deeper_than_any_recursion_is_read() -> None:
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(b"x").digest()).decode()
    depth = 5000  # past Python's recursion limit
    deps: dict[str, object] = {}
    for i in range(depth):
        meta = {"resolved": f"https://r.example/p{i}.tgz", "integrity": integrity, "dependencies": deps}
        deps = {f"p{i}": meta}
    found = lockfiles.npm_lock({"lockfileVersion": 1, "dependencies": deps})
    assert len({d.url for d in found}) == depth
