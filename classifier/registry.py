"""Head kinds by name: the one place that lists them."""

from __future__ import annotations

from typing import Any

from classifier.dense import DenseHead
from classifier.finetune import FineTuneHead
from classifier.heads import Head, LogRegHead, SVMHead

HEADS: dict[str, type[Head]] = {
    "dense": DenseHead,
    "logreg": LogRegHead,
    "svm": SVMHead,
    "finetune": FineTuneHead,
}


def make_head(kind: str, **params: Any) -> Head:
    """A fresh head of `kind`; unknown params raise a TypeError naming them."""
    if kind not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got head={kind!r}")
    return HEADS[kind](**params)
