"""train-head and evaluate never mix int8 and fp32 features, or two int8 models."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import MakeCache, make_spec

from classifier.cli import evaluate_main, train_main


@pytest.mark.parametrize("val_spec, field", [
    (make_spec(precision="int8", quantized_sha256="a" * 64), "precision"),
    (make_spec(precision="int8", quantized_sha256="b" * 64), "quantized_sha256"),
])
def test_val_cache_of_other_precision_or_int8_model_is_refused(
    make_cache: MakeCache, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    val_spec: object, field: str,
) -> None:
    train_spec = (make_spec() if field == "precision"
                  else make_spec(precision="int8", quantized_sha256="a" * 64))
    train = make_cache("train.h5", spec=train_spec)
    val = make_cache("val.h5", seed=1, spec=val_spec)
    assert train_main(["--cache", str(train), "--val-cache", str(val),
                       "--out", str(tmp_path / "h"), "-q"]) == 1
    err = capsys.readouterr().err
    assert field in err and err.count("\n") == 1


def test_int8_head_refuses_an_fp32_cache(make_cache: MakeCache, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    int8 = make_cache("train.h5", spec=make_spec(precision="int8", quantized_sha256="a" * 64))
    out = tmp_path / "h"
    assert train_main(["--cache", str(int8), "--out", str(out), "-q"]) == 0
    fp32 = make_cache("fp32.h5", seed=1)
    assert evaluate_main(["--head", str(out), "--cache", str(fp32)]) == 1
    # The cache's value first, then the head's.
    assert "precision: 'fp32' vs 'int8'" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_with_an_int8_head_uses_its_model(
    small_image_dir: Path, tmp_path: Path, weights_path: Path
) -> None:
    from classifier.artifact import load_head
    from extractor import open_cache
    from extractor.runner import Options, run
    from featcache.predict_cli import main as predict_main
    from featcache.predict_folder import default_cache

    cache = tmp_path / "int8.h5"
    run(Options(directory=small_image_dir, out=cache, weights=str(weights_path),
                progress=False, precision="int8"))
    head = tmp_path / "head"
    assert train_main(["--cache", str(cache), "--out", str(head), "--val-split", "0.25",
                       "-q"]) == 0
    images = tmp_path / "images"
    images.symlink_to(small_image_dir, target_is_directory=True)
    out = tmp_path / "p.csv"
    assert predict_main(["--head", str(head), "--dir", str(images), "--out", str(out),
                         "-q"]) == 0
    used = default_cache(images, load_head(head))
    assert "-int8-" in used.name
    with open_cache(used) as made, open_cache(cache) as trained_on:
        assert made.spec == trained_on.spec  # the very int8 model the head was trained with
    assert len(out.read_text().splitlines()) == 25
    assert predict_main(["--head", str(head), "--dir", str(images), "--precision", "fp32",
                         "--out", str(tmp_path / "no.csv"), "-q"]) == 1
    assert not (tmp_path / "no.csv").exists()
