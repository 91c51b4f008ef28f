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
    assert "precision: 'int8' vs 'fp32'" in capsys.readouterr().err
