"""The four-method comparison runs end to end on a tiny set of real images."""

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
           "--weights", str(weights_path), "--augment", "1", "--scratch-epochs", "1",
           "--dense-epochs", "2", "--fine-tune-epochs", "1", "--work", str(tmp_path / "w"),
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["method"][0] for r in rows] == ["1", "2", "2", "3", "4"]
    for r in rows:
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["wall_s"] > 0
    through = [r["images_through_base"] for r in rows]
    assert through == [0, 18, 18, 12 * 2 + 6, 12 * 2 + 6]
    assert "| method | validation accuracy |" in proc.stdout
