"""One compatibility rule (`FeatureSpec.can_feed`): evaluate, predict and serve accept and refuse
the same caches for a head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import make_spec, synthetic

from classifier.artifact import load_head
from classifier.evaluation import evaluate
from classifier.predict import check_features
from classifier.training import train
from extractor import SpecMismatchError, open_cache, write_cache
from extractor.spec import FeatureSpec
from service.errors import HeadSpecMismatchError
from service.heads import check_head


def pooled_cache(path: Path, spec: FeatureSpec, seed: int) -> Path:
    """A separable cache whose block4_pool pooled vectors carry the classes."""
    X, y = synthetic(20, 2, seed)
    rng = np.random.default_rng(seed)
    vectors = rng.gamma(1.0, 0.5, size=(len(y), 512)).astype(np.float32)
    for c in (0, 1):  # class c lights up every other channel from c: plain to see after scaling
        vectors[y == c, c::2] += 3.0
    features = {spec.layer: X, "block4_pool/avg": vectors, "block4_pool/max": 2 * vectors}
    return write_cache(path, features, y, [f"c{c}/{i:03d}.png" for i, c in enumerate(y)], spec,
                       class_names=["c0", "c1"])


@pytest.fixture
def head(tmp_path: Path) -> Path:
    """A head of block4_pool's pooled vectors, trained on a cache whose maps are block5_pool's."""
    spec = make_spec(pooled_layers=("block4_pool",))
    cache = pooled_cache(tmp_path / "train.h5", spec, seed=0)
    return train(cache, tmp_path / "pooled", head="logreg", cv=0,
                 params={"layers": ["block4_pool"]})


def test_a_cache_of_other_maps_with_the_vectors_a_head_reads_is_accepted_everywhere(
    head: Path, tmp_path: Path
) -> None:
    # Same weights, size, preprocessing and precision; only the stored maps' layer differs.
    spec = make_spec(layer="block3_pool", pooled_layers=("block4_pool",))
    cache = pooled_cache(tmp_path / "val.h5", spec, seed=1)
    loaded = load_head(head)
    assert loaded.feature_names == ["block4_pool/avg", "block4_pool/max"]
    assert spec.can_feed(loaded.spec, loaded.feature_names)

    check_features(loaded, spec, "cache val.h5")  # predict
    from service.heads import ServedHead

    check_head(ServedHead(loaded.name, None, loaded), spec)  # serve
    metrics = evaluate(head, cache)  # evaluate: refused the layer before
    assert metrics["images"] == 40 and metrics["accuracy"] > 0.9
    with open_cache(cache) as c:
        assert c.spec.layer == "block3_pool"


@pytest.mark.parametrize("change", [{"input_size": 224}, {"weights_sha256": "y" * 64},
                                    {"precision": "int8", "quantized_sha256": "q" * 64}])
def test_features_made_otherwise_are_refused_everywhere(
    change: dict[str, object], head: Path, tmp_path: Path
) -> None:
    spec = make_spec(layer="block3_pool", pooled_layers=("block4_pool",), **change)
    loaded = load_head(head)
    assert not spec.can_feed(loaded.spec, loaded.feature_names)
    field = next(iter(change))
    with pytest.raises(SpecMismatchError, match=field):
        check_features(loaded, spec, "cache other.h5")
    from service.heads import ServedHead

    with pytest.raises(HeadSpecMismatchError, match=field):
        check_head(ServedHead(loaded.name, None, loaded), spec)
    if field == "input_size":  # a 224 px cache of block4_pool vectors: written as any other
        cache = pooled_cache(tmp_path / "other.h5", spec, seed=1)
        with pytest.raises(SpecMismatchError, match="input_size: 224 vs 150"):
            evaluate(head, cache)


def test_what_may_share_a_file() -> None:
    spec = make_spec(pooled_layers=("block4_pool",))
    assert spec.can_share_file(spec)
    assert spec.file_differences(make_spec()) == {"pooled_layers": (("block4_pool",), ())}
    assert list(spec.file_differences(make_spec(layer="block4_pool", pooled_layers=(
        "block4_pool",)))) == ["layer"]
    # Another layer's maps never share a file, though they may feed the same head.
    other = make_spec(layer="block4_pool", pooled_layers=("block4_pool",))
    assert not spec.can_share_file(other) and spec.can_feed(other, ["block4_pool/avg"])
    assert not spec.can_feed(other, ["block3_pool/avg"])
