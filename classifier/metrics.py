"""Classification metrics of a head on labelled features, as a dict and as a table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def classification_metrics(
    y_true: NDArray[np.integer], proba: NDArray[np.floating], class_names: Sequence[str]
) -> dict[str, Any]:
    """y_true indexes `class_names`, whose order is also the columns of `proba`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    k = len(class_names)
    labels = list(range(k))
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.argmax(proba, axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    out: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if k == 2:
        both = len(np.unique(y_true)) == 2
        out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1])) if both else None
    return out


def format_table(m: dict[str, Any], class_names: Sequence[str]) -> str:
    width = max(12, *(len(n) for n in class_names)) + 2
    lines = [f"accuracy   {m['accuracy']:.4f}  ({m['n']} samples)"]
    if m.get("roc_auc") is not None:
        lines.append(f"ROC AUC    {m['roc_auc']:.4f}")
    lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name in class_names:
        c = m["per_class"][name]
        lines.append(
            f"{name:<{width}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}"
            f"{c['support']:>10d}"
        )
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * width + "".join(f"{n[:10]:>11}" for n in class_names))
    for name, row in zip(class_names, m["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>11d}" for v in row))
    return "\n".join(lines)
