"""Service fixtures: a real head trained here, apps with the real or a fake conv base."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from extractor.backbone import make_spec
from extractor.features import DEFAULT_POOLED_LAYERS, Features, shapes
from extractor.spec import FeatureSpec
from service.app import create_app
from service.config import Settings

ELPV_CLASSES = ["defective", "functional"]


class FakeBackbone:
    """Stands in for VGG16 where real features add nothing: same spec, cheap features.

    Features depend on the pixels (so different images differ), every forward pass is counted
    with its batch size, and `delay_s` makes a pass take time, as a real one does.
    """

    def __init__(self, spec: FeatureSpec, delay_s: float = 0.0) -> None:
        self.spec = spec
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, pixels: NDArray[np.uint8]) -> Features:
        self.batch_sizes.append(len(pixels))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return fake_features(pixels, self.spec)


def fake_features(pixels: NDArray[np.uint8], spec: FeatureSpec) -> Features:
    """Every named feature of `spec`, made from the images' mean colours (and, so that views
    of an image differ, the mean colour of their top-left quarter)."""
    n = len(pixels)
    means = pixels.reshape(n, -1, 3).mean(axis=1, dtype=np.float32) / 255.0
    corner = pixels[:, : pixels.shape[1] // 2, : pixels.shape[2] // 2]
    corner_means = corner.reshape(n, -1, 3).mean(axis=1, dtype=np.float32) / 255.0
    out: Features = {}
    for name, shape in shapes(spec).items():
        values = np.zeros((n, *shape), dtype=np.float32)
        values[..., :3] = (means if len(shape) == 1 else means[:, None, None, :])
        values[..., 3:6] = (corner_means if len(shape) == 1 else corner_means[:, None, None, :])
        out[name] = values
    return out


@pytest.fixture(scope="session")
def head_dir(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real logistic-regression head on the real small cache, reading the pooled vectors of
    block3, block4 and block5 (C chosen by cross-validation)."""
    from classifier.training import train

    return train(small_cache, tmp_path_factory.mktemp("heads") / "elpv-logreg", head="logreg",
                 params={"layers": list(DEFAULT_POOLED_LAYERS)}, cv=3)


@pytest.fixture(scope="session")
def second_head_dir(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from classifier.training import train

    return train(small_cache, tmp_path_factory.mktemp("heads") / "elpv-svm", head="svm")


@pytest.fixture(scope="session")
def base_spec(weights_path: Path) -> FeatureSpec:
    """The spec of the base `serve` builds by default: block5_pool maps, the pooled vectors
    of block3-5."""
    return make_spec(weights_path, "block5_pool", 150, pooled_layers=DEFAULT_POOLED_LAYERS)


def make_settings(heads: list[Path], weights: Path, **overrides: Any) -> Settings:
    # _env_file=None: a developer's .env must not change what the tests see.
    return Settings(_env_file=None, heads=heads, weights=str(weights), **overrides)  # type: ignore[call-arg]


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get("/ready")
        if r.status_code == 200:
            return
        if "failed" in r.text:
            pytest.fail(f"the app failed to load: {r.text}")
        time.sleep(0.02)
    pytest.fail("the app did not become ready")


AppFactory = Callable[..., contextlib.AbstractContextManager[TestClient]]


@pytest.fixture
def settings_for(weights_path: Path) -> Callable[..., Settings]:
    return lambda heads, **kw: make_settings(heads, weights_path, **kw)


@pytest.fixture
def fake_app(head_dir: Path, weights_path: Path, base_spec: FeatureSpec) -> AppFactory:
    """`with fake_app(**settings) as client`: the real head on a fake conv base, ready.
    `client=(host, port)`: the address requests come from (the admin routes check it)."""

    @contextlib.contextmanager
    def factory(backbone: FakeBackbone | None = None, headers: dict[str, str] | None = None,
                client: tuple[str, int] = ("testclient", 50000),
                **overrides: Any) -> Iterator[TestClient]:
        fake = backbone or FakeBackbone(base_spec)
        overrides.setdefault("heads", [head_dir])
        settings = make_settings(overrides.pop("heads"), weights_path, **overrides)
        app = create_app(settings, backbone_factory=lambda *_: fake)
        app.state.fake_backbone = fake
        with TestClient(app, headers=headers, client=client) as test_client:
            wait_ready(test_client)
            yield test_client

    return factory


@pytest.fixture(scope="session")
def real_client(
    head_dir: Path, second_head_dir: Path, weights_path: Path, conv_base: Any
) -> Iterator[TestClient]:
    """The app with the real conv base (the session's, loaded once) and two real heads."""
    settings = make_settings([head_dir, second_head_dir], weights_path,
                             max_batch_size=4, max_wait_ms=5)
    app = create_app(settings, backbone_factory=lambda *_: conv_base)
    with TestClient(app) as client:
        wait_ready(client, timeout_s=120)
        yield client


@pytest.fixture
def make_fake(base_spec: FeatureSpec) -> Callable[..., FakeBackbone]:
    """`make_fake(delay_s=...)`: a fake conv base with the real base's spec."""
    return lambda **kw: FakeBackbone(base_spec, **kw)


@pytest.fixture
def loading_client(head_dir: Path, settings_for: Callable[..., Settings],
                   make_fake: Callable[..., FakeBackbone]) -> Iterator[TestClient]:
    """A client of a server whose conv base is still loading (released when the test ends)."""
    release = threading.Event()
    fake = make_fake()

    def slow_factory(*_: Any) -> FakeBackbone:
        release.wait(30)
        return fake

    app = create_app(settings_for([head_dir]), backbone_factory=slow_factory)
    with TestClient(app) as client:
        try:
            yield client
        finally:
            release.set()


@pytest.fixture(scope="session")
def elpv_images(small_image_dir: Path) -> list[Path]:
    """The 24 real images of the small cache, sorted by their path relative to the folder."""
    return sorted(small_image_dir.rglob("*.png"))
