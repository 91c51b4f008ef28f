from __future__ import annotations

import numpy as np
import pytest
from synthetic import SHAPE, synthetic

from classifier.heads import LogRegHead, SVMHead
from classifier.pooling import POOLINGS, pool
from classifier.registry import HEADS, make_head

FAST_DENSE = {"epochs": 30, "patience": 10, "learning_rate": 5e-3, "units": 16, "batch_size": 16}


#: Every head that trains on any maps; finetune needs real block4_pool maps (test_finetune.py).
SYNTHETIC_HEADS = sorted(k for k in HEADS if k != "finetune")


def params(kind: str) -> dict[str, object]:
    return dict(FAST_DENSE) if kind == "dense" else {}


@pytest.mark.parametrize("kind", SYNTHETIC_HEADS)
def test_every_head_beats_chance_on_separable_data(kind: str) -> None:
    X, y = synthetic(30, 2, seed=0)
    Xv, yv = synthetic(20, 2, seed=1)
    head = make_head(kind, **params(kind)).fit(X, y, validation_data=(Xv, yv))
    proba = head.predict_proba(Xv)
    assert proba.shape == (len(yv), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert head.classes_.tolist() == [0, 1]
    assert np.mean(head.predict(Xv) == yv) > 0.8


@pytest.mark.parametrize("kind", SYNTHETIC_HEADS)
def test_multiclass(kind: str) -> None:
    X, y = synthetic(20, 4, seed=0)
    Xv, yv = synthetic(10, 4, seed=1)
    head = make_head(kind, **params(kind)).fit(X, y, validation_data=(Xv, yv))
    assert head.predict_proba(Xv).shape == (40, 4)
    assert np.mean(head.predict(Xv) == yv) > 0.6


@pytest.mark.parametrize("kind", SYNTHETIC_HEADS)
def test_same_seed_same_model(kind: str) -> None:
    X, y = synthetic(20, 2, seed=0)
    Xv, yv = synthetic(10, 2, seed=1)
    a = make_head(kind, seed=3, **params(kind)).fit(X, y, validation_data=(Xv, yv))
    b = make_head(kind, seed=3, **params(kind)).fit(X, y, validation_data=(Xv, yv))
    np.testing.assert_allclose(a.predict_proba(Xv), b.predict_proba(Xv), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_shapes(pooling: str) -> None:
    X = np.random.default_rng(0).random((3, *SHAPE), dtype=np.float32)
    width = {"flatten": 32, "avg": 8, "max": 8, "avgmax": 16}[pooling]
    assert pool(X, pooling).shape == (3, width)
    head = LogRegHead(pooling=pooling)
    np.testing.assert_array_equal(head.reduce(head.reduce(X)), head.reduce(X))


def test_unbalanced_classes_are_weighted() -> None:
    X, y = synthetic(40, 2, seed=0)
    keep = np.r_[np.arange(40), np.arange(40, 46)]  # 40 vs 6
    head = LogRegHead(C=0.01).fit(X[keep], y[keep])
    plain = LogRegHead(C=0.01, class_weight="none").fit(X[keep], y[keep])
    Xv, yv = synthetic(20, 2, seed=1)
    minority = yv == 1
    assert np.mean(head.predict(Xv[minority]) == 1) >= np.mean(plain.predict(Xv[minority]) == 1)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: LogRegHead(C=-1), "C must be greater than 0; got C=-1"),
        (lambda: SVMHead(pooling="sum"), "pooling=.sum."),
        (lambda: LogRegHead(scaling="minmax"), "scaling=.minmax."),
        (lambda: make_head("dense", dropout=1.5), "dropout=1.5"),
    ],
)
def test_bad_params_name_the_parameter(factory, message: str) -> None:  # type: ignore[no-untyped-def]
    X, y = synthetic(5, 2, seed=0)
    with pytest.raises(ValueError, match=message):
        factory().fit(X, y)


def test_unknown_head_kind() -> None:
    with pytest.raises(ValueError, match=r"head=.tree."):
        make_head("tree")


def test_one_class_is_refused() -> None:
    X, _ = synthetic(5, 2, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogRegHead().fit(X, np.zeros(len(X)))
