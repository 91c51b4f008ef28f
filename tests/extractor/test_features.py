"""With the real ImageNet weights: features equal what plain Keras gives on the same pixels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from extractor import open_cache
from extractor.images import decode_image

pytestmark = pytest.mark.slow


def test_features_equal_plain_keras(small_cache: Path, small_image_dir: Path,
                                    weights_path: Path) -> None:
    import keras
    from keras.applications.vgg16 import preprocess_input

    with open_cache(small_cache) as cache:
        paths = cache.paths[:6] + cache.paths[-6:]
        index = [cache.paths.index(p) for p in paths]
        ours = cache.read(index)[0]
        assert cache.spec.weights_sha256 == (
            "6fe129e06c6c156e34f33b31ada2599e4e1758422614e824875a3c67180bd16b"
        )
    pixels = np.stack([decode_image((small_image_dir / p).read_bytes(), 150) for p in paths])

    model = keras.applications.VGG16(weights=str(weights_path), include_top=False,
                                     input_shape=(150, 150, 3))
    reference = model.predict(preprocess_input(pixels.astype(np.float32)), verbose=0)
    assert ours.shape == reference.shape == (12, 4, 4, 512)
    assert float(reference.max()) > 10  # real activations, not zeros
    assert float(np.abs(ours - reference).max()) <= 1e-3


def test_block4_pool_tap(conv_base, weights_path: Path, small_image_dir: Path) -> None:
    from extractor.backbone import ConvBase

    tap = ConvBase(weights_path, layer="block4_pool")
    first = sorted(small_image_dir.glob("*/*.png"))[0]
    pixels = decode_image(first.read_bytes(), 150)[None]
    assert tap(pixels)["block4_pool"].shape == (1, 9, 9, 512)
    assert tap.spec.feature_shape == (9, 9, 512)
    assert tap.spec.differences(conv_base.spec) == {
        "layer": ("block4_pool", "block5_pool")
    }


def test_from_spec_makes_the_specs_features(conv_base, weights_path: Path,
                                            small_image_dir: Path) -> None:
    """`ConvBase.from_spec` builds the base whose spec is the one asked for (layer, size,
    pooled layers, precision), running the spec's runtime unless told otherwise."""
    from extractor.backbone import ConvBase

    spec = conv_base.spec
    again = ConvBase.from_spec(spec, weights_path)
    assert again.spec == spec
    other = dataclasses.replace(spec, layer="block4_pool", feature_shape=(4, 4, 512),
                                input_size=64, pooled_layers=("block3_pool",))
    small = ConvBase.from_spec(other, weights_path, runtime="keras")
    assert small.spec.runtime == "keras"
    assert (small.layer, small.image_size, small.spec.pooled_layers) == (
        "block4_pool", 64, ("block3_pool",))
    first = sorted(small_image_dir.glob("*/*.png"))[0]
    pixels = decode_image(first.read_bytes(), 150)[None]
    np.testing.assert_array_equal(again(pixels)["block5_pool"], conv_base(pixels)["block5_pool"])


def test_several_layers_in_one_pass_equal_per_layer_keras(weights_path: Path,
                                                          small_image_dir: Path) -> None:
    """One forward pass gives block3/4/5_pool pooled vectors equal to separate Keras models'
    outputs, pooled by hand (global average and max over positions)."""
    import keras
    from keras.applications.vgg16 import preprocess_input

    from extractor.backbone import ConvBase

    layers = ("block3_pool", "block4_pool", "block5_pool")
    base = ConvBase(weights_path, runtime="keras", pooled_layers=layers)
    files = sorted(small_image_dir.glob("*/*.png"))[::6]
    pixels = np.stack([decode_image(f.read_bytes(), 150) for f in files])
    ours = base(pixels)
    assert sorted(ours) == sorted(["block5_pool", *(f"{la}/{p}" for la in layers
                                                    for p in ("avg", "max"))])
    vgg = keras.applications.VGG16(weights=str(weights_path), include_top=False,
                                   input_shape=(150, 150, 3))
    x = preprocess_input(pixels.astype(np.float32))
    for layer, channels in zip(layers, (256, 512, 512), strict=True):
        alone = keras.Model(vgg.input, vgg.get_layer(layer).output)
        maps = np.asarray(alone.predict(x, verbose=0))
        for pool, ref in (("avg", maps.mean(axis=(1, 2))), ("max", maps.max(axis=(1, 2)))):
            got = ours[f"{layer}/{pool}"]
            assert got.shape == (len(files), channels)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3, err_msg=f"{layer}/{pool}")
    np.testing.assert_allclose(ours["block5_pool"], np.asarray(vgg.predict(x, verbose=0)),
                               atol=1e-3)


def test_cache_stores_the_conv_base_named_features(small_cache: Path, small_image_dir: Path,
                                                   conv_base) -> None:
    """Every stored feature (block5_pool maps and the pooled vectors of block3/4/5_pool)
    equals the conv base's output on the same images, and the stored block5_pool poolings
    equal the maps pooled."""
    from extractor.features import DEFAULT_POOLED_LAYERS, pool

    with open_cache(small_cache) as cache:
        assert cache.spec.pooled_layers == DEFAULT_POOLED_LAYERS
        names = cache.spec.stored_names()
        paths = cache.paths[:3] + cache.paths[-3:]
        index = [cache.paths.index(p) for p in paths]
        stored = cache.read_named(names, index)
    pixels = np.stack([decode_image((small_image_dir / p).read_bytes(), 150) for p in paths])
    direct = conv_base(pixels)
    assert sorted(direct) == sorted(names) and len(names) == 7
    for name in names:
        assert stored[name].shape == direct[name].shape
        assert float(direct[name].max()) > 1  # real activations
        np.testing.assert_allclose(stored[name], direct[name], rtol=1e-5, atol=1e-3,
                                   err_msg=name)
    for how in ("avg", "max"):
        np.testing.assert_allclose(stored[f"block5_pool/{how}"],
                                   pool(stored["block5_pool"], how), rtol=1e-6, atol=1e-6)
