"""The compose file and Dockerfile, read statically: they name what the service needs.

(`test_docker.py` runs them for real; this catches a broken edit in a second.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_TARGET = "/weights/vgg16_notop.h5"


def _target(volume: str) -> str:
    """'${SRC:-./x}:/x:ro' -> '/x'."""
    path = volume.removesuffix(":ro").removesuffix(":rw")
    return path.rsplit(":", 1)[1]


def _compose(name: str = "compose.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())  # type: ignore[no-any-return]


def test_api_service() -> None:
    api = _compose()["services"]["api"]
    assert api["command"][0] == "serve"
    assert api["command"][api["command"].index("--head") + 1].startswith("/heads/")
    assert api["command"][1:3] == ["--host", "0.0.0.0"]
    assert any(p.endswith(":8000") for p in api["ports"]), api["ports"]
    assert any(_target(v) == "/heads" and v.endswith(":ro") for v in api["volumes"])
    test = api["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "/ready" in test[1]
    assert api["build"]["dockerfile"] == "docker/Dockerfile" and api["build"]["context"] == "."
    assert "FETCH_WEIGHTS" in api["build"]["args"]
    assert "user" not in api  # the image's own unprivileged user
    limits = api["deploy"]["resources"]["limits"]
    assert limits["memory"] and limits["cpus"]


def test_up_trains_a_first_head_before_serving() -> None:
    services = _compose()["services"]
    assert services["api"]["depends_on"] == {
        "first-head": {"condition": "service_completed_successfully"}}
    job = services["first-head"]
    assert job["command"] == ["featcache-first-head"]
    assert "profiles" not in job  # `up` runs it
    assert job["environment"]["FEATCACHE_RUN_AS_OWNER_OF"] == "/heads"
    assert any(_target(v) == "/heads" and not v.endswith(":ro") for v in job["volumes"])
    assert any(_target(v) == "/data" and v.endswith(":ro") for v in job["volumes"])
    # The job trains (maybe a Keras head): the full image; api serves from the lean one.
    assert job["image"] == "${FEATCACHE_IMAGE:-featcache:latest}"
    assert job["build"]["target"] == "full"


def test_api_runs_the_lean_image_and_the_jobs_the_full_one() -> None:
    compose = _compose()
    services = compose["services"]
    api = services["api"]
    assert api["image"] == "${FEATCACHE_SERVE_IMAGE:-featcache:serve}"
    assert api["build"]["target"] == "${FEATCACHE_SERVE_TARGET:-serve}"
    assert api["build"]["args"] == services["first-head"]["build"]["args"]  # same weights rule
    for name in ("first-head", "extract", "train-head"):
        assert services[name]["build"]["target"] == "full", name
        assert services[name]["image"] == "${FEATCACHE_IMAGE:-featcache:latest}", name
    # The lean image's FEATCACHE_HOME (its ONNX export) is a named volume.
    assert "featcache-home:/var/cache/featcache" in api["volumes"]
    assert "featcache-home" in compose["volumes"]
    assert "ENV FEATCACHE_HOME=/var/cache/featcache" in (ROOT / "docker/Dockerfile").read_text()


def test_one_off_jobs() -> None:
    services = _compose()["services"]
    for name, writes in (("extract", "/data"), ("train-head", "/heads")):
        job = services[name]
        assert job["entrypoint"] == ["featcache-entrypoint", name]
        assert job["profiles"] == ["jobs"]  # not started by `up`
        assert job["user"] == "root"  # only to become the folder's owner: docker/entrypoint.sh
        assert job["environment"]["FEATCACHE_RUN_AS_OWNER_OF"] == writes
        assert any(_target(v) == "/data" for v in job["volumes"])
    assert any(_target(v) == "/heads" and not v.endswith(":ro")
               for v in services["train-head"]["volumes"])


def test_every_service_can_get_the_weights_from_a_mounted_file() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        mounts = [v for v in service["volumes"] if _target(v) == WEIGHTS_TARGET]
        assert mounts == [
            "${FEATCACHE_WEIGHTS_FILE:-./docker/no-weights-file}:/weights/vgg16_notop.h5:ro"
        ], name
    assert (ROOT / "docker/no-weights-file").read_bytes() == b""  # the placeholder: ignored
    entrypoint = (ROOT / "docker/entrypoint.sh").read_text()
    assert f"[ -s {WEIGHTS_TARGET} ]" in entrypoint
    assert f"FEATCACHE_WEIGHTS={WEIGHTS_TARGET}" in entrypoint
    args = compose["x-featcache"]["build"]["args"]
    assert args["FETCH_WEIGHTS"] == "${FEATCACHE_FETCH_WEIGHTS:-${FEATCACHE_WEIGHTS_FILE:+0}}"


def test_api_key_secret_example() -> None:
    override = _compose("docker/compose.api-key.yml")
    api = override["services"]["api"]
    assert api["secrets"] == ["api_key"]
    assert api["environment"]["FEATCACHE_API_KEY_FILE"] == "/run/secrets/api_key"
    assert "FEATCACHE_API_KEY_SECRET" in override["secrets"]["api_key"]["file"]


def test_dockerfile() -> None:
    text = (ROOT / "docker/Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    # The lean stages first (the classic builder stops at the target: `--target serve` never
    # installs TensorFlow); full last, the default target.
    assert [s for _, s in stages] == ["base", "weights", "serve-deps", "serve", "deps",
                                      "demo-data", "full"]
    assert dict((s, f) for f, s in stages)["serve"] == "serve-deps"
    assert len(re.findall(r'^ENTRYPOINT \["featcache-entrypoint"\]$', text, re.M)) == 2
    assert len(re.findall(r'^CMD \["serve"\]$', text, re.M)) == 2
    assert len(re.findall(r"^USER app$", text, re.M)) == 2
    lean = text[text.index("AS serve-deps"):text.index("AS deps")]
    assert "requirements/serve.txt" in lean and "runtime.txt" not in lean
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/ready" in text
    assert "ARG FETCH_WEIGHTS=1" in text
    assert "python3 -m pip install" in text
    # Dependencies from the lock before the code: editing the code keeps TensorFlow's layer.
    assert text.index("requirements/runtime.txt") < text.index("COPY extractor extractor")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'serve = "service.cli:main"' in pyproject


def test_build_context_is_small() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert kept == {"requirements/runtime.txt", "requirements/demo.txt",
                    "requirements/serve.txt", "requirements/build.txt", "pyproject.toml",
                    "README.md", "extractor", "classifier", "service", "featcache",
                    "scripts/make_demo_data.py", "docker/entrypoint.sh", "docker/first-head.sh"}


def test_api_key_file_is_readable_by_the_server_alone() -> None:
    """Issue 20, item 13: the key file's recipe gives it to the server's user, mode 0400; no
    step leaves it readable by group or others."""
    text = (ROOT / "docker/compose.api-key.yml").read_text()
    steps = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")]
    modes = [int(m, 8) for m in re.findall(r"\bchmod (0?[0-7]{3,4}) api-key\.txt", text)]
    assert modes and all(mode & 0o077 == 0 for mode in modes), modes
    assert any(s.startswith("(umask 077;") and "> api-key.txt" in s for s in steps), steps
    uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "docker/Dockerfile").read_text())
    assert uid is not None
    assert f"sudo chown {uid[1]}:{uid[1]} api-key.txt" in text
    assert f"podman unshare chown {uid[1]}:{uid[1]} api-key.txt" in text
    assert "0644" not in text
