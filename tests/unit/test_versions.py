"""Names, versions and files of PyPI and npm: normalising, ordering, and which package a file is."""

from __future__ import annotations

import pytest

from cacheaddon import versions
from cacheaddon.versions import NPM, PYPI


@pytest.mark.parametrize(
    ("ecosystem", "name", "normal"),
    [(PYPI, "Foo_Bar.baz", "foo-bar-baz"), (PYPI, "foo--bar", "foo-bar"), (NPM, "@Scope/Pkg", "@Scope/Pkg")],
)
def test_names_normalise_per_ecosystem(ecosystem: str, name: str, normal: str) -> None:
    assert versions.normalize_name(ecosystem, name) == normal


@pytest.mark.parametrize(
    ("ecosystem", "low", "high"),
    [
        (PYPI, "1.0", "1.0.1"),
        (PYPI, "1.0rc1", "1.0"),
        (PYPI, "1.9", "1.10"),
        (PYPI, "1.0", "1.0.post1"),
        (PYPI, "1!0.1", "1!0.2"),
        (NPM, "1.0.0-beta.2", "1.0.0-beta.10"),
        (NPM, "1.0.0-rc.1", "1.0.0"),
        (NPM, "1.9.0", "1.10.0"),
    ],
)
def test_versions_order_by_their_ecosystems_rules(ecosystem: str, low: str, high: str) -> None:
    assert versions.order_key(ecosystem, low) < versions.order_key(ecosystem, high)


@pytest.mark.parametrize(("ecosystem", "text"), [(PYPI, "not a version"), (NPM, "1.0"), (NPM, "latest")])
def test_unparseable_versions_have_no_order(ecosystem: str, text: str) -> None:
    assert versions.order_key(ecosystem, text) is None


@pytest.mark.parametrize(
    ("ecosystem", "a", "b", "same"),
    [
        (PYPI, "1.0", "1.0.0", True),
        (PYPI, "1.0", "1.0.1", False),
        (NPM, "1.0.0+build.1", "1.0.0", True),
        (NPM, "1.0.0", "1.0.1", False),
        (NPM, "weird", "weird", True),
    ],
)
def test_same_version(ecosystem: str, a: str, b: str, same: bool) -> None:
    assert versions.same_version(ecosystem, a, b) is same


@pytest.mark.parametrize(
    ("candidates", "ceiling", "expected"),
    [
        (["1.0.0", "1.1.0", "2.0.0-beta.1"], "2.0.0", "1.1.0"),  # no prerelease for a stable tag
        (["1.0.0", "2.0.0-beta.1"], "2.0.0-beta.2", "2.0.0-beta.1"),  # a prerelease tag may keep one
        (["1.0.0", "3.0.0"], "2.0.0", "1.0.0"),  # never above the version it pointed at
        (["0.9.0-rc.1"], "1.0.0", None),
        ([], "1.0.0", None),
        (["1.1.0", "1.0.0", "junk"], "9.9.9", "1.1.0"),
    ],
)
def test_newest_at_most(candidates: list[str], ceiling: str, expected: str | None) -> None:
    assert versions.newest_at_most(NPM, candidates, ceiling) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/packages/ab/cd/foo_bar-1.2.0-py3-none-any.whl", ("foo-bar", "1.2.0")),
        ("/packages/foo_bar-1.2.0-py3-none-any.whl.metadata", ("foo-bar", "1.2.0")),
        ("/packages/Foo-Bar-1.2.0.tar.gz", ("foo-bar", "1.2.0")),
        ("/packages/foo-1.0rc1.zip", ("foo", "1.0rc1")),
        ("/packages/foo%2Dbar-1.0.tar.gz", ("foo-bar", "1.0")),
        ("/@v/v1.2.3.zip", None),  # Go module proxy
        ("/dist/apache-maven-3.9.0-bin.zip", None),
        ("/foo-1.0.jar", None),
        ("/simple/foo/", None),
        ("/packages/not-a-wheel.whl", None),
    ],
)
def test_pypi_files(path: str, expected: tuple[str, str] | None) -> None:
    assert versions.pypi_file(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/kilo/-/kilo-1.1.0.tgz", ("kilo", "1.1.0")),
        ("/@fake/quebec/-/quebec-1.0.0-beta.1.tgz", ("@fake/quebec", "1.0.0-beta.1")),
        ("/%40fake%2Fquebec/-/quebec-1.0.0.tgz", ("@fake/quebec", "1.0.0")),
        ("/api/npm/remote/kilo/-/kilo-2.0.0.tgz?x=1", ("kilo", "2.0.0")),
        ("/kilo/-/other-1.0.0.tgz", None),
        ("/kilo/-/kilo-.tgz", None),
        ("/kilo", None),
        ("/kilo-1.0.0.tgz", None),
    ],
)
def test_npm_tarballs(path: str, expected: tuple[str, str] | None) -> None:
    assert versions.npm_tarball(path) == expected
