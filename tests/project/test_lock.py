"""Installs are locked: the lock covers every dependency pyproject names, with hashes, and the environment
the tests run in is exactly the lock (a fresh machine once got an untested OpenCV and segfaulted)."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = [ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "nodeps.txt"]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for lock in LOCKS:
        text = lock.read_text()
        for block in re.split(r"\n(?=\S)", text):
            m = _PIN.match(block)
            if m:
                assert "--hash=sha256:" in block, f"{m.group(1)} has no hash in {lock.name}"
                pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_every_dependency_pyproject_names_is_pinned_with_a_hash() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    wanted = list(project["dependencies"]) + [d for ds in extras for d in ds]
    pins = _pins()
    for line in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in the lock: run `make lock`"
        version = pins[name].split("+", 1)[0]
        assert req.specifier.contains(version, prereleases=True), (
            f"the lock's {req.name}=={pins[name]} is outside pyproject's {req.specifier}: run `make lock`"
        )


def test_the_environment_is_exactly_the_lock() -> None:
    if not (Path(sys.prefix) / ".installed").is_file():
        pytest.skip("not an environment `make install` built from the lock")
    pins = _pins()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("imgaudit", None)
    drift = {n: (v, pins.get(n)) for n, v in installed.items() if pins.get(n) != v}
    assert not drift, f"installed (version, locked): {drift}"
    missing = sorted(set(pins) - set(installed))
    assert not missing, f"locked but not installed: {missing}"
