"""Issue 22, item 2: `evaluate --report`: curves and intervals, and the report itself, made
for a real head and cache and opened in a real browser."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import accessibility_problems, broken_images, chromium

from classifier.cli import evaluate_main
from classifier.curves import reliability, risk_coverage, wilson_interval


def test_wilson_interval_matches_the_formula_and_stays_in_0_1() -> None:
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook example
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert 0 < wilson_interval(0, 20)[1] < 0.2
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_risk_coverage_answers_the_most_confident_first() -> None:
    y = np.array([0, 0, 1, 1, 0])
    proba = np.array([[0.9, 0.1],    # right, most confident
                      [0.2, 0.8],    # wrong
                      [0.3, 0.7],    # right
                      [0.6, 0.4],    # wrong: 0.6 ties with the next
                      [0.6, 0.4]])   # right
    rc = risk_coverage(y, proba)
    assert rc.coverage.tolist() == pytest.approx([0.2, 0.4, 0.6, 1.0])
    assert rc.risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.4])  # ties answered together
    assert rc.threshold.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert rc.aurc == pytest.approx(0.2 * 0 + 0.2 * 0.5 + 0.2 / 3 + 0.4 * 0.4)
    assert math.isnan(risk_coverage(np.zeros(0), np.zeros((0, 2))).aurc)


def test_reliability_bins_by_confidence() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.45, 0.55]])
    rel = reliability(y, proba, bins=10)
    assert rel.count.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert rel.accuracy[9] == 1.0 and rel.accuracy[6] == 0.0 and rel.accuracy[5] == 1.0
    # |1 - .95| * 2 + |0 - .65| + |1 - .55|, over 4 images
    assert rel.ece == pytest.approx((0.1 + 0.65 + 0.45) / 4)
    with pytest.raises(ValueError, match="bins"):
        reliability(y, proba, bins=0)


@pytest.fixture(scope="module")
def report_inputs(small_cache: Path, conv_base: Any, elpv_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real head (cross-validated logistic regression on the small ELPV cache) and a real
    cache of ELPV validation images, four of each class filed under the other class: the
    head gets those wrong with confidence, so the gallery has mistakes to show."""
    from classifier.training import train
    from extractor.features import DEFAULT_POOLED_LAYERS
    from extractor.runner import Options, run

    root = tmp_path_factory.mktemp("report")
    images = root / "validation"
    classes = ("defective", "functional")
    for cls in classes:
        (images / cls).mkdir(parents=True)
    for cls, other in zip(classes, reversed(classes), strict=True):
        for i, src in enumerate(sorted((elpv_dir / "validation" / cls).iterdir())[:16]):
            shutil.copy(src, images / (other if i < 4 else cls) / src.name)
    cache = root / "val.h5"
    run(Options(directory=images, out=cache, weights=str(conv_base.weights_path),
                progress=False), features_fn=conv_base)
    head = train(small_cache, root / "heads" / "elpv", head="logreg",
                 params={"layers": list(DEFAULT_POOLED_LAYERS)}, cv=3)
    return head, cache


def _evaluate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = evaluate_main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_html_report_shows_what_evaluate_json_says_with_every_image_loaded(
    report_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from selenium.webdriver.common.by import By

    head, cache = report_inputs
    code, out, _ = _evaluate(["--head", str(head), "--cache", str(cache), "--json"], capsys)
    assert code == 0
    expected = json.loads(out)
    report = tmp_path / "report.html"
    code, out, err = _evaluate(["--head", str(head), "--cache", str(cache), "--json",
                                "--report", str(report)], capsys)
    assert code == 0, err
    assert json.loads(out) == expected  # --report changes nothing else
    text = report.read_text()
    assert not re.search(r"""(src|href)=["'](https?:|//)""", text)  # self-contained

    with chromium() as driver:
        driver.get(report.as_uri())
        embedded = json.loads(driver.find_element(By.ID, "evaluate-json")
                              .get_attribute("textContent"))
        assert embedded == expected
        assert float(driver.find_element(By.ID, "accuracy").get_attribute("data-value")) \
            == expected["accuracy"]
        assert driver.find_element(By.ID, "accuracy").text == f"{expected['accuracy']:.4f}"
        assert float(driver.find_element(By.ID, "roc-auc").get_attribute("data-value")) \
            == expected["roc_auc"]
        assert driver.find_element(By.ID, "n").text == str(expected["n"])
        lo, hi = wilson_interval(round(expected["accuracy"] * expected["n"]), expected["n"])
        assert driver.find_element(By.ID, "accuracy-ci").text == f"{lo:.4f} – {hi:.4f}"
        for name, values in expected["per_class"].items():
            row = driver.find_element(By.CSS_SELECTOR, f"#per-class tr[data-class={name}]")
            for key in ("precision", "recall", "f1", "support"):
                cell = row.find_element(By.CSS_SELECTOR, f"td[data-key={key}]")
                assert float(cell.get_attribute("data-value")) == values[key], (name, key)
        cells = [[int(td.text) for td in tr.find_elements(By.TAG_NAME, "td")]
                 for tr in driver.find_elements(By.CSS_SELECTOR, "#confusion tbody tr")]
        assert cells == expected["confusion_matrix"]
        assert "CV selection" in driver.find_element(By.TAG_NAME, "body").text
        assert "3-fold" in driver.find_element(By.TAG_NAME, "body").text

        assert broken_images(driver) == []
        figures = driver.find_elements(By.CSS_SELECTOR, ".figures img")
        assert [f.get_attribute("alt") for f in figures] == [
            "confusion matrix plot", "ROC plot", "reliability plot", "risk-coverage plot"]
        assert all(f.get_property("naturalWidth") > 200 for f in figures)
        wrong = expected["n"] - sum(np.diag(expected["confusion_matrix"]))
        assert wrong > 0, "the test needs a head that makes mistakes"
        gallery = driver.find_elements(By.CSS_SELECTOR, "#mistakes li")
        assert len(gallery) == min(12, wrong)
        for item in gallery:
            assert item.find_element(By.TAG_NAME, "img").get_property("naturalWidth") > 0
            href = item.find_element(By.TAG_NAME, "a").get_attribute("href")
            assert href.startswith("file://") and Path(href[len("file://"):]).is_file()
        confidences = [float(re.search(r"\(([\d.]+)%\)", i.text).group(1))  # type: ignore[union-attr]
                       for i in gallery]
        assert confidences == sorted(confidences, reverse=True)  # most confident first
        assert accessibility_problems(driver) == []
        driver.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 0


@pytest.mark.slow
def test_pdf_report_and_bad_report_paths(
    report_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    head, cache = report_inputs
    pdf = tmp_path / "report.pdf"
    code, _, err = _evaluate(["--head", str(head), "--cache", str(cache), "-q",
                              "--report", str(pdf)], capsys)
    assert code == 0, err
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 6  # summary, 4 figures, mistakes

    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--head", str(head), "--cache", str(cache),
                       "--report", str(tmp_path / "report.txt")])
    assert exit_.value.code == 2
    assert "--report must name a .html or .pdf file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["--head", str(head), "--cache", str(cache),
                       "--report", str(tmp_path / "missing" / "r.html")])
    assert "does not exist" in capsys.readouterr().err
