"""The real image: built, started with `docker compose up --wait`, asked to predict.

Needs a Docker engine (on our machines: ../shared/containers/setup.sh, which serves the Docker
API from podman). The ImageNet weights cannot be downloaded here, so the build skips them
(FETCH_WEIGHTS=0, via docker/compose.offline.yml) and the shared file is mounted instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PODMAN_SOCKET = Path("/run/podman/podman.sock")


def _docker_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "0", **extra}
    if "DOCKER_HOST" not in env and PODMAN_SOCKET.exists():
        env["DOCKER_HOST"] = f"unix://{PODMAN_SOCKET}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _world_readable(folder: Path) -> None:
    """The container runs as an unprivileged user; pytest's tmp folders are 0700."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_compose_up_serves_a_mounted_head(
    head_dir: Path, weights_path: Path, elpv_images: list[Path], tmp_path: Path
) -> None:
    if shutil.which("docker") is None:
        pytest.fail("no docker client: run ../shared/containers/setup.sh (or install Docker)")
    heads = tmp_path / "heads"
    shutil.copytree(head_dir, heads / "served")
    _world_readable(heads)
    port = _free_port()
    project = f"featcache-test-{uuid.uuid4().hex[:8]}"
    env = _docker_env({
        "FEATCACHE_HEADS_DIR": str(heads),
        "FEATCACHE_HEAD": "served",
        "FEATCACHE_HOST_PORT": str(port),
        "FEATCACHE_WEIGHTS_FILE": str(weights_path),
        "FEATCACHE_API_KEY": "",
    })
    compose = ["docker", "compose", "-p", project, "-f", str(REPO / "docker/compose.yml"),
               "-f", str(REPO / "docker/compose.offline.yml")]

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    started = time.monotonic()
    try:
        up = run("up", "-d", "--build", "--wait", "--wait-timeout", "300", "api", timeout=1200)
        if up.returncode != 0:
            logs = run("logs", "--no-color", "api", timeout=60)
            pytest.fail(f"compose up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n"
                        f"logs:\n{logs.stdout}\n{logs.stderr}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            ready = client.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["heads"] == ["served"]
            image = elpv_images[0]
            r = client.post("/predict", files={"file": (image.name, image.read_bytes())})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["head"] == "served" and body["cached"] is False
            # Same answer as the head gives on the same image in this process.
            from classifier.artifact import load_head
            from extractor.backbone import ConvBase
            from extractor.images import decode_image

            head = load_head(head_dir)
            base = ConvBase(weights_path)
            maps = base(decode_image(image.read_bytes(), 150)[None])["block5_pool"]
            want = head.predict_proba(maps)[0]
            got = [body["probabilities"][c] for c in head.classes_]
            np.testing.assert_allclose(got, want, atol=1e-3)
            bad = client.post("/predict", files={"file": ("x.txt", b"not an image")})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_image"
    finally:
        run("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=300)
        print(f"docker test: {time.monotonic() - started:.0f}s")
