"""The lock (requirements/*.txt) covers pyproject.toml, and what CI installs is what ships.

Static checks of the files scripts/lock writes: fast, no network. They catch a dependency added
to pyproject.toml without re-locking, a floor raised past the locked version, and an image lock
that drifted from the one the tests run on.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
# The platform the lock is for (scripts/lock): CPython 3.11 on Linux x86_64.
TARGET = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "python_version": "3.11", "python_full_version": "3.11.2",
          "implementation_name": "cpython", "os_name": "posix"}


def pins(name: str) -> dict[str, str]:
    """{canonical name: version} of a lock file; every pin carries at least one hash."""
    text = (LOCKS / name).read_text()
    entries = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=\S+)+)",
                         text, re.M)
    found = {canonicalize_name(n): v for n, v, _ in entries}
    listed = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", text, re.M)
    assert len(found) == len(listed), f"{name}: every pin needs --hash lines"
    return found


def requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


def _check_covers(lock: str, reqs: list[Requirement]) -> None:
    locked = pins(lock)
    problems = []
    for req in reqs:
        version = locked.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not in {lock}")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{lock} pins {req.name}=={version}, outside {req}")
    assert not problems, "; ".join(problems) + ": run scripts/lock"


def test_dev_lock_covers_every_dependency_and_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    _check_covers("dev.txt", requirements(*extras))


def test_runtime_and_demo_locks_cover_theirs() -> None:
    _check_covers("runtime.txt", requirements())
    _check_covers("demo.txt", requirements("demo"))


@pytest.mark.parametrize("lock", ["runtime.txt", "demo.txt"])
def test_image_locks_pin_what_the_tests_run(lock: str) -> None:
    dev = pins("dev.txt")
    differ = {n: (v, dev.get(n)) for n, v in pins(lock).items() if dev.get(n) != v}
    assert not differ, f"{lock} differs from dev.txt (image vs tests): {differ}"


def test_the_lock_is_what_gets_installed() -> None:
    env = (ROOT / "scripts/_env.sh").read_text()
    assert "LOCK=requirements/dev.txt" in env
    assert '--require-hashes --no-deps -r "$LOCK"' in env
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements/runtime.txt" in dockerfile
    ci = (ROOT / ".ci/run").read_text()
    assert "scripts/test" in ci
