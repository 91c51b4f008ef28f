"""Shared fixtures: the real VGG16 weights and images from ../shared, loaded once per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Every Ray node the tests start (in this process or a subprocess) uses 127.0.0.1, never this
# machine's other addresses: test traffic stays on the loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FEATCACHE_SHARED", REPO.parent / "shared"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        # Fail, never skip: these tests are the point, and CI always has ../shared.
        pytest.fail(f"{what} not found at {path}; set FEATCACHE_SHARED to the shared/ folder")
    return path


@pytest.fixture(scope="session")
def weights_path() -> Path:
    return _require(SHARED / "assets" / "vgg16_notop.h5", "the VGG16 no-top weights")


@pytest.fixture(scope="session")
def elpv_dir() -> Path:
    return _require(SHARED / "data" / "elpv", "the ELPV image set")


@pytest.fixture(scope="session")
def conv_base(weights_path: Path):
    """The real conv base, built once (TensorFlow start-up and weight loading take seconds),
    giving the pooled vectors `extract` stores by default besides the block5_pool maps."""
    from extractor.backbone import ConvBase
    from extractor.features import DEFAULT_POOLED_LAYERS

    return ConvBase(weights_path, pooled_layers=DEFAULT_POOLED_LAYERS)


@pytest.fixture(scope="session")
def small_image_dir(elpv_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real images per class from the ELPV training split, in the image-folder layout."""
    root = tmp_path_factory.mktemp("images")
    for cls in ("defective", "functional"):
        (root / cls).mkdir()
        for src in sorted((elpv_dir / "train" / cls).iterdir())[:12]:
            shutil.copy(src, root / cls / src.name)
    return root


@pytest.fixture(scope="session")
def small_cache(small_image_dir: Path, conv_base, tmp_path_factory: pytest.TempPathFactory):
    """A real feature cache of `small_image_dir`, made with the real weights."""
    from extractor.runner import Options, run

    out = tmp_path_factory.mktemp("cache") / "small.h5"
    run(Options(directory=small_image_dir, out=out, weights=str(conv_base.weights_path),
                progress=False), features_fn=conv_base)
    return out


@pytest.fixture(scope="session", autouse=True)
def _featcache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ONNX exports and other per-user files go to a temporary home, never the user's."""
    saved = os.environ.get("FEATCACHE_HOME")
    os.environ["FEATCACHE_HOME"] = str(tmp_path_factory.mktemp("featcache_home"))
    yield
    if saved is None:
        os.environ.pop("FEATCACHE_HOME", None)
    else:
        os.environ["FEATCACHE_HOME"] = saved


@pytest.fixture(autouse=True)
def _clean_environ(weights_path: Path) -> Iterator[None]:
    """Tests see the shared weights as the default and never the developer's own settings.

    A patcher of its own, not the test's `monkeypatch`: a test's `monkeypatch.undo()` undoes
    what the test patched, never this (it would bring back the shell's environment)."""
    with pytest.MonkeyPatch.context() as mp:
        keep = ("FEATCACHE_SHARED", "FEATCACHE_HOME")
        for key in list(os.environ):
            if key.startswith(("FEATCACHE_", "SERVE_")) and key not in keep:
                mp.delenv(key)
        mp.setenv("FEATCACHE_WEIGHTS", str(weights_path))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        yield
