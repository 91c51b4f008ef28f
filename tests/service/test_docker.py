"""The real image and the real compose file: built, started with `docker compose up`, asked.

Needs a Docker engine (on our machines: ../shared/containers/setup.sh, which serves the Docker
API from podman). This machine is offline, so every run takes the offline path the README
gives (FEATCACHE_WEIGHTS_FILE: no download at build time, the shared file mounted instead).

Compose builds two images from docker/Dockerfile: the full one (target `full`, FEATCACHE_IMAGE)
for the one-off jobs, and the lean serving one (target `serve`, FEATCACHE_SERVE_IMAGE: no
TensorFlow) for `api`; they share their base layers. Both tests build the same two tags, so the
second build is all layer cache; each runs under a compose project of its own and takes it down
again (with its volumes). Besides FEATCACHE_WEIGHTS_FILE they set only what keeps a test run
apart from anything else on the machine: the project name, the image tags and a free port.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from liveserver import free_port
from PIL import Image

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PODMAN_SOCKET = Path("/run/podman/podman.sock")
IMAGE = "featcache:test"
SERVE_IMAGE = "featcache:test-serve"
BUILD_TIMEOUT_S = 1800  # a first build installs TensorFlow: minutes


def _docker_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATCACHE_", "COMPOSE_"))}
    env.update({"DOCKER_BUILDKIT": "0", "FEATCACHE_IMAGE": IMAGE,
                "FEATCACHE_SERVE_IMAGE": SERVE_IMAGE, **extra})
    if "DOCKER_HOST" not in env and PODMAN_SOCKET.exists():
        env["DOCKER_HOST"] = f"unix://{PODMAN_SOCKET}"
    return env


class Compose:
    """`docker compose` in `cwd` under a project name of its own; `down` removes it all."""

    def __init__(self, cwd: Path, env: dict[str, str], files: tuple[str, ...] = ()) -> None:
        if shutil.which("docker") is None:
            pytest.fail("no docker client: run ../shared/containers/setup.sh (or install Docker)")
        self.cwd = cwd
        self.env = {**env, "COMPOSE_PROJECT_NAME": f"featcache-test-{uuid.uuid4().hex[:8]}"}
        self.files = [arg for f in files for arg in ("-f", f)]

    def __call__(self, *args: str, timeout: float = 300,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "compose", *self.files, *args], cwd=self.cwd,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    def up(self, *args: str) -> None:
        started = time.monotonic()
        up = self("up", *args, timeout=BUILD_TIMEOUT_S)
        print(f"docker compose up {' '.join(args)}: {time.monotonic() - started:.0f}s")
        if up.returncode != 0:
            logs = self("logs", "--no-color", timeout=60)
            pytest.fail(f"compose up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n"
                        f"logs:\n{logs.stdout}\n{logs.stderr}")

    def down(self) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "10")


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """The repository as a fresh clone of this working tree would be: tracked files and new
    ones git does not ignore, as they are now (uncommitted edits included), and nothing else:
    no heads, no data, no venv."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True, check=True)
    clone = tmp_path / "featcache"
    for name in files.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():  # a deleted, not yet committed file is listed but gone
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    clone.chmod(0o755)
    return clone


@pytest.fixture
def face_png() -> bytes:
    """A face the demo head never trained on (LFW subset image 0 is in the demo's validation
    split: scripts/make_demo_data.py)."""
    from skimage.data import lfw_subset

    face = (lfw_subset()[0] * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def compose_down() -> Iterator[list[Compose]]:
    projects: list[Compose] = []
    yield projects
    for project in projects:
        project.down()


def test_compose_up_on_a_fresh_clone_trains_a_head_then_serves_it(
    fresh_clone: Path, weights_path: Path, face_png: bytes, compose_down: list[Compose]
) -> None:
    """The README's first command, as written, on a fresh clone with no head: the one-off job
    trains one on the demo set built into the image, then `api` answers /predict."""
    heads = fresh_clone / "heads"
    assert not (heads / "head").exists()
    # What the job writes belongs to the owner of ./heads (docker/entrypoint.sh), never root,
    # and no host folder is ever chowned: root (CI) makes ./heads for the image's user, app
    # (10001), as the README says root must.
    owner = 10001 if os.geteuid() == 0 else os.geteuid()
    if os.geteuid() == 0:
        heads.mkdir(exist_ok=True)
        os.chown(heads, owner, owner)
    port = free_port()
    compose = Compose(fresh_clone, _docker_env({
        "FEATCACHE_WEIGHTS_FILE": str(weights_path), "FEATCACHE_HOST_PORT": str(port)}))
    compose_down.append(compose)
    # As on a fresh machine the images are missing, so `up` builds them (from the layer cache
    # when an earlier run left one: seconds), and never runs a stale image.
    subprocess.run(["docker", "image", "rm", "--force", IMAGE, SERVE_IMAGE], env=compose.env,
                   capture_output=True, timeout=120)
    compose.up("-d", "--wait", "api")
    # api runs the lean image: no TensorFlow, Keras or matplotlib in it at all; the jobs' has them.
    probe = ("import importlib.util as u; "
             "print([m for m in ('tensorflow', 'keras', 'matplotlib') if u.find_spec(m)])")
    lean = compose("exec", "-T", "api", "python3", "-c", probe, timeout=60)
    assert lean.returncode == 0 and lean.stdout.split() == ["[]"], (lean.stdout, lean.stderr)
    full = compose("run", "--rm", "--no-deps", "--entrypoint", "python3", "first-head", "-c",
                   probe, timeout=120)
    assert "'tensorflow', 'keras', 'matplotlib'" in full.stdout, (full.stdout, full.stderr)
    sizes = {}
    for tag in (IMAGE, SERVE_IMAGE):
        inspect = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag],
                                 env=compose.env, capture_output=True, text=True, timeout=60)
        sizes[tag] = int(inspect.stdout)
    print(f"image sizes: {sizes}")
    assert sizes[SERVE_IMAGE] < sizes[IMAGE] / 2

    head = heads / "head"
    assert (head / "metadata.json").is_file()
    assert {p.stat().st_uid for p in [head, *head.iterdir()]} == {owner}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["heads"] == ["head"]
        info = client.get("/heads").json()["heads"]
        assert [(h["name"], h["classes"]) for h in info] == [("head", ["face", "non_face"])]
        r = client.post("/predict", files={"file": ("face.png", face_png, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["head"] == "head" and body["label"] == "face", body
        assert body["probabilities"]["face"] > 0.5

    # Again: the head is there now, so the job leaves it and `api` keeps serving.
    compose.up("-d", "--wait", "api")
    logs = compose("logs", "--no-color", "first-head").stdout
    assert logs.count("training one on the demo set") == 1
    assert "holds a head already" in logs

    # A folder owned by an ordinary user: the job runs as that user, with a home it can write.
    if os.geteuid() == 0:
        mine = fresh_clone / "heads-of-4321"
        mine.mkdir()
        os.chown(mine, 4321, 4322)
        probe = compose("run", "--rm", "--no-deps", "first-head",
                        "sh", "-c", 'id -u; id -g; touch "$HOME/x" /heads/probe',
                        env={"FEATCACHE_HEADS_DIR": str(mine)}, timeout=120)
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split()[-2:] == ["4321", "4322"]
        assert ((mine / "probe").stat().st_uid, (mine / "probe").stat().st_gid) == (4321, 4322)

    # Offline, api made the ONNX export on its first start, into the volume: a new container
    # (as after `up --build`) loads it from there instead of exporting again.
    compose.up("-d", "--wait", "--no-deps", "--force-recreate", "api")
    logs = compose("logs", "--no-color", "api").stdout
    assert "exporting the VGG16 conv base" not in logs, logs
    assert "on onnxruntime fp32 from /var/cache/featcache/onnx/vgg16-" in logs, logs

    # kill -9 of the server's process (not `docker kill`, which counts as a manual stop): the
    # restart policy (unless-stopped) brings it back. The soak script's --compose mode, briefly.
    if os.geteuid() == 0:  # signalling the container's process from here needs root
        soak = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--compose",
             "--compose-file", str(fresh_clone / "compose.yaml"),
             "--url", f"http://127.0.0.1:{port}", "--clients", "2", "--seconds", "10",
             "--kill-at", "3", "--max-requests", "300", "--recovery-timeout", "120"],
            env=compose.env, capture_output=True, text=True, timeout=300)
        assert soak.returncode == 0, soak.stdout[-3000:] + soak.stderr[-3000:]
        kill = json.loads(soak.stdout.strip().splitlines()[-1])["kill"]
        assert kill.get("recovery_s", 0) > 0, kill
        container = compose("ps", "-q", "api").stdout.split()[0]
        restarts = subprocess.run(["docker", "inspect", "-f", "{{.RestartCount}}", container],
                                  env=compose.env, capture_output=True, text=True, timeout=60)
        assert int(restarts.stdout) >= 1, restarts


def _world_readable(folder: Path) -> None:
    """The server runs as an unprivileged user; pytest's tmp folders are 0700."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_served_head_predicts_as_in_process_with_the_api_key_from_a_secret(
    head_dir: Path, weights_path: Path, elpv_images: list[Path], tmp_path: Path,
    compose_down: list[Compose],
) -> None:
    """A head trained here, mounted into the image: the container answers what the same head
    and weights give in this process; the API key comes from a Compose secret file."""
    heads = tmp_path / "heads"
    shutil.copytree(head_dir, heads / "served")
    _world_readable(heads)
    if os.geteuid() == 0:  # the first-head job refuses a root-owned folder (entrypoint.sh)
        for path in [heads, *heads.rglob("*")]:
            os.chown(path, 10001, 10001)
    key_file = tmp_path / "api-key.txt"
    key_file.write_text("s3cret-from-a-file\n")
    key_file.chmod(0o644)
    _world_readable(tmp_path)
    port = free_port()
    compose = Compose(REPO, _docker_env({
        "FEATCACHE_HEADS_DIR": str(heads), "FEATCACHE_HEAD": "served",
        "FEATCACHE_HOST_PORT": str(port), "FEATCACHE_WEIGHTS_FILE": str(weights_path),
        "FEATCACHE_API_KEY_SECRET": str(key_file),
    }), files=("compose.yaml", "docker/compose.api-key.yml"))
    compose_down.append(compose)
    compose.up("-d", "--build", "--wait", "api")

    image = elpv_images[0]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        assert client.get("/ready").json()["heads"] == ["served"]
        files = {"file": (image.name, image.read_bytes())}
        assert client.post("/predict", files=files).status_code == 401
        r = client.post("/predict", files=files, headers={"X-API-Key": "s3cret-from-a-file"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["head"] == "served" and body["cached"] is False
        # Same answer as the head gives on the same image in this process.
        from classifier.artifact import load_head
        from extractor.backbone import ConvBase
        from extractor.images import decode_image

        head = load_head(head_dir)
        from extractor.features import DEFAULT_POOLED_LAYERS

        base = ConvBase(weights_path, pooled_layers=DEFAULT_POOLED_LAYERS)
        want = head.predict_proba(base(decode_image(image.read_bytes(), 150)[None]))[0]
        got = [body["probabilities"][c] for c in head.classes_]
        np.testing.assert_allclose(got, want, atol=1e-3)
        bad = client.post("/predict", files={"file": ("x.txt", b"not an image")},
                          headers={"X-API-Key": "s3cret-from-a-file"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_image"
    # The key never reached the container's environment.
    env = compose("exec", "-T", "api", "env").stdout
    assert "s3cret" not in env and "FEATCACHE_API_KEY_FILE=/run/secrets/api_key" in env


def test_compose_file_serves_online_and_offline(fresh_clone: Path, weights_path: Path) -> None:
    """One compose file, no -f: the weights are downloaded at build time unless
    FEATCACHE_WEIGHTS_FILE is set, in which case the download is skipped and the file mounted."""
    for offline in (False, True):
        extra = {"FEATCACHE_WEIGHTS_FILE": str(weights_path)} if offline else {}
        out = Compose(fresh_clone, _docker_env(extra))("--profile", "jobs", "config", "--format",
                                                       "json", timeout=60)
        assert out.returncode == 0, out.stderr
        config = json.loads(out.stdout)
        for name in ("first-head", "api"):
            service = config["services"][name]
            assert service["build"]["args"]["FETCH_WEIGHTS"] == ("0" if offline else "")
            mount = next(v for v in service["volumes"] if v["target"] == "/weights/vgg16_notop.h5")
            source = Path(mount["source"])
            assert source == (weights_path if offline else fresh_clone / "docker/no-weights-file")
            assert mount["read_only"] is True
        # api serves from the lean image, its ONNX export in a volume; the jobs use the full one.
        assert config["services"]["api"]["build"]["target"] == "serve"
        assert config["services"]["api"]["image"] == SERVE_IMAGE
        assert {"type": "volume", "source": "featcache-home", "target": "/var/cache/featcache",
                "volume": {}} in config["services"]["api"]["volumes"]
        for job in ("first-head", "extract", "train-head"):
            assert config["services"][job]["build"]["target"] == "full"
            assert config["services"][job]["image"] == IMAGE
