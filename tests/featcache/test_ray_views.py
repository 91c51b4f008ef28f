"""The Ray engine makes no augmented views yet: asking it for views is refused everywhere,
never answered with a cache or predictions that silently lack them (issue 20, item 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import make_folder
from synthetic import views_cache

import featcache
from classifier.artifact import load_head
from classifier.predict import extract_for_head
from classifier.predict_cli import main as predict_main
from classifier.training import train
from extractor.runner import ExtractError


def test_the_python_api_refuses_views_on_ray(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=1)
    out = tmp_path / "views.h5"
    with pytest.raises(ExtractError, match="augment=3: the Ray engine does not make augmented"):
        featcache.extract(folder, out, engine="ray", augment=3)
    assert not out.exists()


def test_predict_with_a_head_trained_on_views_refuses_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head_dir = train(views_cache(tmp_path / "train.h5"), tmp_path / "head", cv=0)
    head = load_head(head_dir)
    assert head.views.count == 3
    folder = make_folder(tmp_path / "imgs", per_class=1)
    cache = tmp_path / "new.h5"
    with pytest.raises(ValueError, match=r"3 augmented views .* --engine local, or --no-tta"):
        extract_for_head(head, folder, cache, engine="ray")
    assert not cache.exists()

    rc = predict_main(["--head", str(head_dir), "--dir", str(folder), "--engine", "ray",
                       "--out", str(tmp_path / "p.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Ray engine does not make" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()
