"""Packages for the supply-chain guard's end-to-end tests: versions published months, days and minutes ago
on the fake registry, and OSV advisories written the way osv.dev publishes them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .fakeregistry import FakeRegistry

DAY = 86400.0
MIN_AGE = "3d"
EXEMPT = ["pypi:mycorp-*", "npm:@mycorp/*"]
# (name, version, seconds since publication): the newest of each is minutes old.
PYPI = (
    ("sierra", "1.0.0", 200 * DAY),
    ("sierra", "1.1.0", 10 * DAY),
    ("sierra", "1.2.0", 300.0),
    ("mycorp-tool", "1.0.0", 200 * DAY),
    ("mycorp-tool", "2.0.0", 300.0),
)
NPM = (
    ("tango", "1.0.0", 200 * DAY),
    ("tango", "1.1.0", 10 * DAY),
    ("tango", "2.0.0", 300.0),
    ("@mycorp/lib", "1.0.0", 200 * DAY),
    ("@mycorp/lib", "2.0.0", 300.0),
)
# What a client resolves to with MIN_AGE and EXEMPT.
OLD_ENOUGH = {"sierra": "1.1.0", "mycorp-tool": "2.0.0", "tango": "1.1.0", "@mycorp/lib": "2.0.0"}


def add_packages(registry: FakeRegistry, now: float | None = None) -> dict[tuple[str, str], float]:
    """Adds PYPI and NPM, published relative to `now`; returns (name, version) -> publish time."""
    now = time.time() if now is None else now
    published = {}
    for name, version, age in PYPI:
        registry.add_wheel(name, version, published=int(now - age))
        published[(name, version)] = int(now - age)
    for name, version, age in NPM:
        registry.add_npm(name, version, published=int(now - age))
        published[(name, version)] = int(now - age)
    return published


def write_advisory(directory: Path, ident: str, ecosystem: str, name: str, *versions: str) -> Path:
    """One OSV record per file, in the layout of OSV's malicious-packages repository."""
    path = directory / ecosystem.lower() / name.replace("/", "_") / f"{ident}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "schema_version": "1.6.0",
        "id": ident,
        "summary": f"Malicious code in {name} ({ecosystem})",
        "affected": [{"package": {"ecosystem": ecosystem, "name": name}, "versions": list(versions)}],
    }
    path.write_text(json.dumps(record, indent=2))
    return path
