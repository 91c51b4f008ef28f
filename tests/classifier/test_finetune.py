"""Fine-tuning block5 from cached block4_pool maps, with the real weights and real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifier.artifact import load_head
from classifier.errors import DataError
from classifier.training import train
from extractor.images import decode_image
from extractor.runner import Options, run
from extractor.vgg16 import preprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def block4_cache(small_image_dir: Path, weights_path: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    from extractor.backbone import ConvBase

    out = tmp_path_factory.mktemp("b4") / "b4.h5"
    base = ConvBase(weights_path, layer="block4_pool", runtime="keras")
    run(Options(directory=small_image_dir, out=out, layer="block4_pool", progress=False,
                runtime="keras", weights=str(weights_path), pooled_layers=()), features_fn=base)
    return out


@pytest.fixture(scope="module")
def finetuned(block4_cache: Path, weights_path: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("heads") / "ft"
    return train(block4_cache, out, head="finetune", val_split=0.25,
                 params={"epochs": 2, "fine_tune_epochs": 2, "patience": 5,
                         "weights": str(weights_path)})


def test_block5_is_trained_and_starts_from_imagenet(finetuned: Path, weights_path: Path) -> None:
    import keras

    loaded = load_head(finetuned)
    assert loaded.spec.layer == "block4_pool" and loaded.metadata["kind"] == "finetune"
    vgg = keras.applications.VGG16(include_top=False, weights=str(weights_path),
                                   input_shape=(144, 144, 3))
    model = loaded.head.model_  # type: ignore[attr-defined]
    tuned = model.get_layer("block5_conv1").get_weights()[0]
    original = vgg.get_layer("block5_conv1").get_weights()[0]
    diff = np.abs(tuned - original)
    # Fine-tuned, not replaced: close to the ImageNet filters, yet moved by training.
    assert 0 < float(diff.max()) < 0.1 * float(np.abs(original).max())
    history = loaded.metadata["history"]
    assert len(history["loss"]) >= 2  # both phases ran


def test_cached_equals_end_to_end_on_images(finetuned: Path, small_image_dir: Path,
                                            weights_path: Path) -> None:
    """Blocks 1-4 frozen: the head on cached block4 maps == the whole network on the images."""
    import keras

    loaded = load_head(finetuned)
    files = sorted(small_image_dir.glob("*/*.png"))[::4]
    pixels = np.stack([decode_image(f.read_bytes(), 150) for f in files])

    vgg = keras.applications.VGG16(include_top=False, weights=str(weights_path),
                                   input_shape=(150, 150, 3))
    lower = keras.Model(vgg.input, vgg.get_layer("block4_pool").output)
    tuned = loaded.head.model_  # type: ignore[attr-defined]
    end_to_end = keras.Model(vgg.input, tuned(lower.output))
    p_images = np.asarray(end_to_end.predict(preprocess(pixels), verbose=0), np.float64)
    p_images = np.concatenate([1 - p_images, p_images], axis=1)

    from extractor import open_cache

    with open_cache(loaded.metadata["data"]["train_cache"]) as cache:
        rel = [f.relative_to(small_image_dir).as_posix() for f in files]
        maps = cache.read([cache.paths.index(r) for r in rel])[0]
    p_cached = loaded.predict_proba(maps)
    assert float(np.abs(p_cached - p_images).max()) <= 1e-4


def test_finetune_refuses_block5_cache(small_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="extract --layer block4_pool"):
        train(small_cache, tmp_path / "h", head="finetune")
