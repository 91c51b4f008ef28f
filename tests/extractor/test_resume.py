"""Kill -9 in the middle of a real extraction; the resumed cache equals an uninterrupted one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from extractor import open_cache
from extractor.cache import parts_dir

pytestmark = pytest.mark.slow


def _extract(folder: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "extractor.cli", "--dir", str(folder), "--out", str(out),
           "--quiet", "--batch-size", "4", "--checkpoint-every", "8", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_sigkill_then_resume_equals_uninterrupted(elpv_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    for cls in ("defective", "functional"):
        (folder / cls).mkdir(parents=True)
        for src in sorted((elpv_dir / "train" / cls).iterdir())[:40]:
            shutil.copy(src, folder / cls / src.name)

    out = tmp_path / "resumed.h5"
    proc = _extract(folder, out)
    deadline = time.monotonic() + 120
    while not list(parts_dir(out).glob("part-*.h5")):
        if proc.poll() is not None:
            pytest.fail(f"extract exited early: {proc.communicate()[1].decode()[-2000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not out.exists(), "the run finished before it could be killed; use more images"
    checkpoints = len(list(parts_dir(out).glob("part-*.h5")))
    assert checkpoints >= 1

    _finish(_extract(folder, out))
    _finish(_extract(folder, tmp_path / "reference.h5"))

    with open_cache(out) as got, open_cache(tmp_path / "reference.h5") as ref:
        assert len(got) == len(ref) == 80
        assert got.paths == ref.paths
        assert got.sha256 == ref.sha256
        np.testing.assert_array_equal(got.labels, ref.labels)
        # Batches differ between the two runs; oneDNN may round differently per batch shape.
        assert float(np.abs(got.read()[0] - ref.read()[0]).max()) <= 1e-3
    assert not parts_dir(out).exists()
