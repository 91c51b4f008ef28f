"""The images build featcache with the locked build backend, never one that pip's build
isolation fetches unpinned and unhashed (issue 20, item 12). Static: reads the Dockerfile and
the locks."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins(lock: str) -> dict[str, str]:
    """{canonical name: version} of the hashed pins of a lock file."""
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(n): v for n, v in re.findall(
        r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n\s+--hash=", text, re.M)}


def backend() -> list[Requirement]:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    return [Requirement(r) for r in build["requires"]]


def stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its text, and the stage it starts from (`FROM parent AS name`)."""
    parts = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", p).group(1): p for p in parts}  # type: ignore[union-attr]


def installed_locks(text: str, stage: str) -> list[str]:
    """Every lock file installed in `stage` and the stages it is built on."""
    by_name = stages(text)
    locks: list[str] = []
    while stage in by_name:
        body = by_name[stage]
        if "--require-hashes" in body:
            locks += re.findall(r"-r requirements/(\S+\.txt)", body)
        stage = body.split()[0]
    return locks


def test_every_build_of_featcache_uses_the_locked_backend() -> None:
    text = (ROOT / "docker/Dockerfile").read_text()
    builds = {name: body for name, body in stages(text).items()
              if re.search(r"pip install [^\n]*\s\.(\s|$)", body)}
    assert set(builds) == {"serve", "full"}
    for name, body in builds.items():
        line = re.search(r"pip install [^\n]*\s\.(\s|$)", body).group(0)  # type: ignore[union-attr]
        assert "--no-build-isolation" in line and "--no-deps" in line, (name, line)
        # The backend comes from a hashed lock installed before, in this stage or below it.
        locks = installed_locks(text, name)
        for req in backend():
            name_ = canonicalize_name(req.name)
            pinned = [pins(lock)[name_] for lock in locks if name_ in pins(lock)]
            assert pinned, f"stage {name}: {req.name} is installed from none of {locks}"
            assert all(req.specifier.contains(v) for v in pinned), (req, pinned)


def test_the_build_lock_is_the_tests_pin_and_is_sent_to_the_build() -> None:
    build = pins("build.txt")
    dev = pins("dev.txt")
    assert set(build) == {canonicalize_name(r.name) for r in backend()}
    assert all(dev[n] == v for n, v in build.items()), (build, dev)
    assert "compile requirements/build.in -c requirements/dev.txt -o requirements/build.txt" \
        in (ROOT / "scripts/lock").read_text()
    assert "!requirements/build.txt" in (ROOT / ".dockerignore").read_text().splitlines()
