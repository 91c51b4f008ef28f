from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import MakeCache, make_spec

from classifier.cli import evaluate_main, train_main


def test_train_then_evaluate(make_cache: MakeCache, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    train_cache = make_cache()
    val_cache = make_cache("val.h5", seed=1)
    out = tmp_path / "heads" / "h"
    assert train_main(["--cache", str(train_cache), "--val-cache", str(val_cache),
                       "--out", str(out), "-q"]) == 0
    assert (out / "model.skops").exists()
    assert evaluate_main(["--head", str(out), "--cache", str(val_cache), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] > 0.8
    assert set(result["per_class"]) == {"c0", "c1"}
    assert result["roc_auc"] > 0.8
    assert evaluate_main(["--head", str(out), "--cache", str(val_cache)]) == 0
    table = capsys.readouterr().out
    assert "precision" in table and "confusion matrix" in table


def test_bad_input_is_one_line(make_cache: MakeCache, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert train_main(["--cache", str(tmp_path / "missing.h5"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("train-head: error: no such cache file") and err.count("\n") == 1

    out = tmp_path / "h"
    assert train_main(["--cache", str(make_cache()), "--out", str(out), "-q"]) == 0
    other = make_cache("other.h5", spec=make_spec(weights_sha256="y" * 64))
    assert evaluate_main(["--head", str(out), "--cache", str(other)]) == 1
    err = capsys.readouterr().err
    assert "weights_sha256" in err and err.count("\n") == 1


def test_force_refuses_a_folder_that_is_not_a_head(  # type: ignore[no-untyped-def]
    make_cache: MakeCache, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "images.txt").write_text("keep me")
    assert train_main(["--cache", str(make_cache()), "--out", str(out), "--force", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("train-head: error:") and "not a head artifact" in err
    assert err.count("\n") == 1
    assert (out / "images.txt").read_text() == "keep me"


def test_bad_arguments_exit_2(make_cache: MakeCache) -> None:
    with pytest.raises(SystemExit) as info:
        train_main(["--cache", str(make_cache()), "--val-split", "1.5"])
    assert info.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train-head", "evaluate"])
def test_help_is_instant_and_imports_no_tensorflow(command: str) -> None:
    code = (
        "import sys; from classifier.cli import build_train_parser, build_evaluate_parser; "
        "assert 'tensorflow' not in sys.modules and 'sklearn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    script = Path(sys.executable).parent / command
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--cache" in out.stdout and "Exit status" in out.stdout
