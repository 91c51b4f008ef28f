"""The methods comparison runs end to end on a tiny set of real images, under its protocol:
cross-validation on the training folder, then the validation folder once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_compare_runs_end_to_end(elpv_dir: Path, weights_path: Path, tmp_path: Path) -> None:
    for split, n in (("train", 6), ("validation", 3)):
        for cls in ("defective", "functional"):
            (tmp_path / split / cls).mkdir(parents=True)
            for src in sorted((elpv_dir / split / cls).iterdir())[:n]:
                shutil.copy(src, tmp_path / split / cls / src.name)
    cmd = [sys.executable, str(REPO / "benchmarks" / "recipe.py"),
           "--train", str(tmp_path / "train"), "--val", str(tmp_path / "validation"),
           "--weights", str(weights_path), "--views", "1", "--folds", "2",
           "--folds-expensive", "2", "--scratch-epochs", "1", "--dense-epochs", "2",
           "--fine-tune-epochs", "1", "--work", str(tmp_path / "w"), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["method"] for r in rows] == ["1", "2", "2d", "3", "3d", "4"]
    for r in rows:
        assert len(r["cv_accuracy_folds"]) == 2
        assert all(0.0 <= a <= 1.0 for a in r["cv_accuracy_folds"])
        assert r["cv_accuracy_mean"] == pytest.approx(sum(r["cv_accuracy_folds"]) / 2)
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["val_images"] == 6
        lo, hi = r["val_ci95"]
        assert lo <= r["val_accuracy"] <= hi
    through = {r["method"]: r["images_through_base"] for r in rows}
    # train + validation images, each with its one view where the cache has views
    assert through == {"1": 0, "2": 18, "2d": 18, "3": 36, "3d": 36, "4": 36}
    assert "| method | CV accuracy on train" in proc.stdout
