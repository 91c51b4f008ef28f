"""The compose file and Dockerfile, read statically: they name what the service needs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _target(volume: str) -> str:
    """'${SRC:-../x}:/x:ro' -> '/x'."""
    path = volume.removesuffix(":ro").removesuffix(":rw")
    return path.rsplit(":", 1)[1]


def _compose(name: str = "compose.yml") -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCKER / name).read_text())


def test_api_service() -> None:
    api = _compose()["services"]["api"]
    assert api["command"][0] == "serve"
    assert "--head" in api["command"] and api["command"][api["command"].index("--head") + 1] \
        .startswith("/heads/")
    assert api["command"][1:3] == ["--host", "0.0.0.0"]
    assert any(p.endswith(":8000") for p in api["ports"]), api["ports"]
    assert any(_target(v) == "/heads" for v in api["volumes"]), api["volumes"]
    test = api["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "/ready" in test[1]
    assert api["build"]["dockerfile"] == "docker/Dockerfile" and api["build"]["context"] == ".."
    assert "FETCH_WEIGHTS" in api["build"]["args"]


def test_one_off_jobs() -> None:
    services = _compose()["services"]
    for name, entry in (("extract", "extract"), ("train-head", "train-head")):
        job = services[name]
        assert job["entrypoint"] == [entry]
        assert job["profiles"] == ["jobs"]  # not started by `up`
        assert any(_target(v) == "/data" for v in job["volumes"])
    assert any(_target(v) == "/heads" and not v.endswith(":ro")
               for v in services["train-head"]["volumes"])


def test_offline_override_mounts_the_weights() -> None:
    api = _compose("compose.offline.yml")["services"]["api"]
    assert api["build"]["args"]["FETCH_WEIGHTS"] == "0"
    target = api["environment"]["FEATCACHE_WEIGHTS"]
    assert any(_target(v) == target for v in api["volumes"])


def test_dockerfile_runs_the_same_serve_entry_point() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r'^CMD \["serve"', text, re.M)
    assert re.search(r"^USER app$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/ready" in text
    assert "ARG FETCH_WEIGHTS=1" in text
    assert "python3 -m pip install" in text
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    assert 'serve = "service.cli:main"' in pyproject


def test_build_context_is_small() -> None:
    ignore = (DOCKER.parent / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert kept == {"pyproject.toml", "README.md", "extractor", "classifier", "service"}
