"""featcache from Python: extract, train a head, classify image files, evaluate.

    python examples/python_api.py TRAIN_DIR VALIDATION_DIR WORK_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import featcache


def main(train_dir: Path, val_dir: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    summary = featcache.extract(train_dir, work / "train.h5")  # re-run: only new files
    print(f"{summary.total} images cached, {len(summary.skipped)} skipped")
    featcache.extract(val_dir, work / "val.h5")

    head = featcache.train_head(work / "train.h5", work / "heads" / "first",
                                val_cache=work / "val.h5", overwrite=True)
    print(head.metadata["selection"]["chosen"])  # the cross-validation's choice

    # Image files, encoded bytes, PIL images or uint8 arrays; the conv base the head needs
    # (layer, size, precision, views) is built on the first call.
    files = sorted(val_dir.rglob("*.png"))[:4]
    predictions = head.predict(files)
    for path, label, probabilities in zip(files, predictions.labels, predictions.as_dicts(),
                                          strict=True):
        print(path.name, label, probabilities)

    metrics = featcache.evaluate(head, work / "val.h5")  # from the cache: no conv base runs
    print(f"validation accuracy {metrics['accuracy']:.3f}")

    same = featcache.load_head(work / "heads" / "first")  # later, in another process
    assert same.predict(files).labels == predictions.labels


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
