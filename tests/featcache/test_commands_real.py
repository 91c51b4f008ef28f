"""`featcache extract`, `predict` and `info` on real weights and real images: --json summaries
that match what was written, and no progress bar when stderr is not a terminal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from featcache import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def extracted(small_image_dir: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, dict, str]:  # type: ignore[type-arg]
    """`featcache extract --json` in a subprocess (stderr a pipe, not a terminal) on the small
    real set plus one file that is not an image."""
    work = tmp_path_factory.mktemp("extract-json")
    images = work / "images"
    shutil.copytree(small_image_dir, images)
    (images / "functional" / "notes.png").write_text("not an image")
    out = subprocess.run([sys.executable, "-m", "featcache", "extract", "--dir", str(images),
                          "--out", str(work / "c.h5"), "--json"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return work / "c.h5", json.loads(out.stdout), out.stderr


def test_extract_json_and_no_progress_off_a_terminal(extracted: tuple[Path, dict, str]) -> None:  # type: ignore[type-arg]
    cache, summary, stderr = extracted
    assert summary["cache"] == str(cache)
    assert summary["images"] == summary["extracted"] == 24
    assert summary["classes"] == ["defective", "functional"]
    assert summary["skipped"] == [{"path": "functional/notes.png",
                                   "reason": "not an image (unrecognised format)"}]
    assert summary["precision"] == "fp32" and summary["runtime"] == "onnxruntime"
    assert summary["images_per_s"] > 0 and summary["elapsed_s"] >= summary["extract_s"] > 0
    assert "img/s" not in stderr and "%|" not in stderr, stderr  # no tqdm bar in a pipe


def test_info_describes_a_real_cache(extracted: tuple[Path, dict, str],  # type: ignore[type-arg]
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cache, _, _ = extracted
    assert cli.main(["info", str(cache), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["type"] == "cache" and d["format"] == "featcache/1"
    assert (d["rows"], d["images"], d["unlabelled_images"]) == (24, 24, 0)
    assert d["classes"] == [{"name": "defective", "images": 12},
                            {"name": "functional", "images": 12}]
    assert d["views"] == {"per_image": 0, "mode": "none", "seed": 0}
    assert d["pooled_layers"] == ["block3_pool", "block4_pool", "block5_pool"]
    assert d["precision"] == "fp32" and d["spec"]["layer"] == "block5_pool"
    assert d["skipped"] == [{"path": "functional/notes.png",
                             "reason": "not an image (unrecognised format)"}]
    by_name = {ds["name"]: ds for ds in d["datasets"]}
    with h5py.File(cache, "r") as f:
        for name, ds in by_name.items():
            assert tuple(ds["shape"]) == f[name].shape, name
    assert by_name["features"]["dims"] == ["row", "height", "width", "channel"]
    assert by_name["features"]["shape"] == [24, 4, 4, 512]
    assert by_name["features"]["dtype"] == "float32"
    assert by_name["pooled/block3_pool/avg"]["dims"] == ["row", "block3_pool_channel"]
    assert by_name["pooled/block3_pool/avg"]["shape"] == [24, 256]
    assert by_name["paths"]["dtype"] == "string"
    assert by_name["skipped/paths"]["dims"] == ["skipped_row"]
    assert d["dimensions"]["row"] == 24 and d["dimensions"]["block3_pool_channel"] == 256
    assert d["shards"] is None and d["engine"] == "local"

    assert cli.main(["info", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "defective (12), functional (12)" in text
    assert "(24, 4, 4, 512)" in text and "(row, height, width, channel)" in text
    assert "functional/notes.png: not an image" in text


def test_info_describes_a_real_head_and_predict_json(
    small_cache: Path, small_image_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["train-head", "--cache", str(small_cache), "--out", str(tmp_path / "h"),
                     "--cv", "3", "-q"]) == 0
    meta = json.loads((tmp_path / "h" / "metadata.json").read_text())
    assert cli.main(["info", str(tmp_path / "h"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["type"] == "head" and d["kind"] == "logreg"
    assert d["classes"] == ["defective", "functional"] and d["features"] == meta["features"]
    assert d["spec"] == meta["spec"] and d["views"] is None and d["tta"] is False
    assert d["metrics"]["validation"]["accuracy"] == meta["metrics"]["validation"]["accuracy"]
    assert "confusion_matrix" not in d["metrics"]["validation"]
    assert d["selection"]["folds"] == 3
    assert d["selection"]["chosen"]["params"] == meta["selection"]["chosen"]["params"]
    assert len(d["selection"]["candidates"]) == len(meta["selection"]["candidates"])
    assert cli.main(["info", str(tmp_path / "h")]) == 0
    text = capsys.readouterr().out
    assert "3-fold CV over" in text and "logreg" in text

    new = tmp_path / "new"
    new.mkdir()
    for src in sorted(small_image_dir.rglob("*.png"))[:3]:
        shutil.copy(src, new / src.name)
    (new / "broken.png").write_bytes(b"\x89PNG\r\n")
    assert cli.main(["predict", "--head", str(tmp_path / "h"), "--dir", str(new),
                     "--out", str(tmp_path / "p.jsonl"), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["files"] == 4 and counts["predicted"] == 3 and counts["errors"] == 1
    assert counts["out"] == str(tmp_path / "p.jsonl")
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 4
