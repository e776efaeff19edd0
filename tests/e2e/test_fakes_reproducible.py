"""The fakes build their packages reproducibly: the bytes served are the bytes hashed into the index, whatever
the clock says between the two (a gzip header with the current time made a cargo test fail now and then)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from . import fakemaven, packages
from .fakecrates import SMALL, Crate
from .fakegoproxy import HOTEL, GoModule

BUILDERS: dict[str, Callable[[], bytes]] = {
    "crate": lambda: Crate(SMALL.name, SMALL.version, SMALL.deps).data,
    "npm tarball": lambda: packages.make_npm_tarball("kilo", "1.0.0", {"lima": "^2"}),
    "wheel": lambda: packages.make_wheel("alpha", "1.0.0", ("echo>=3",))[1],
    "jar": lambda: fakemaven.make_jar(fakemaven.LIBRARY),
    "go module zip": lambda: GoModule(HOTEL.path, HOTEL.version, HOTEL.requires).zip,
}


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_a_package_has_the_same_bytes_at_any_time(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[], bytes]
) -> None:
    built = []
    for now in (1_700_000_000.0, 1_800_000_000.0):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        built.append(build())
    assert built[0] == built[1]
