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


@pytest.mark.parametrize("lock", ["runtime.txt", "demo.txt", "serve.txt"])
def test_image_locks_pin_what_the_tests_run(lock: str) -> None:
    dev = pins("dev.txt")
    differ = {n: (v, dev.get(n)) for n, v in pins(lock).items() if dev.get(n) != v}
    assert not differ, f"{lock} differs from dev.txt (image vs tests): {differ}"


#: pyproject.toml's dependencies the lean serving image leaves out on purpose: serving
#: scikit-learn heads on ONNX Runtime imports none of them (tests/service/test_lean_serving.py;
#: argcomplete only answers a shell's tab-completion request, extractor/console.py).
NOT_SERVED = {"tensorflow-cpu", "tensorflow", "keras", "matplotlib", "tqdm", "argcomplete"}


def test_the_serving_lock_has_what_serving_needs_and_no_tensorflow() -> None:
    serve_in = [Requirement(line.split("#")[0].strip())
                for line in (LOCKS / "serve.in").read_text().splitlines()
                if line.split("#")[0].strip()]
    named = {canonicalize_name(r.name) for r in serve_in}
    # Every dependency is either served or left out on purpose: a new one must be decided on.
    wanted = {canonicalize_name(r.name) for r in requirements()} - NOT_SERVED
    assert named == wanted, "requirements/serve.in vs pyproject.toml: add the new dependency " \
        "to serve.in (then scripts/lock) or to NOT_SERVED"
    _check_covers("serve.txt", [r for r in requirements()
                                if canonicalize_name(r.name) in named])
    locked = pins("serve.txt")
    assert not NOT_SERVED & set(locked), NOT_SERVED & set(locked)
    assert not {"tensorboard", "jax", "torch"} & set(locked)


def test_the_lock_is_what_gets_installed() -> None:
    env = (ROOT / "scripts/_env.sh").read_text()
    assert "LOCK=requirements/dev.txt" in env
    assert '--require-hashes --no-deps -r "$LOCK"' in env
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements/runtime.txt" in dockerfile
    assert "--require-hashes --no-deps -r requirements/serve.txt" in dockerfile
    ci = (ROOT / ".ci/run").read_text()
    assert "scripts/test" in ci
