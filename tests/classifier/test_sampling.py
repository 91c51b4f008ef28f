"""Bounded memory for train-head (issue 19, item 3): cross-validation on a stratified sample of
stated size, the final fit on every row that fits the memory limit, else the largest
stratified sample that does; both stated in the metadata and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import K, MakeCache, make_spec, views_cache

from classifier.cli import train_main
from classifier.data import labelled_subset
from classifier.sampling import COPIES, floats_per_row, rows_within, stratified_sample
from classifier.training import train

#: Bytes of one row of the synthetic caches' avg+max vectors (8 channels each), with COPIES.
ROW_BYTES = COPIES * 4 * 16


def test_a_stratified_sample_keeps_whole_images_and_class_shares(tmp_path: Path) -> None:
    subset, _, _ = labelled_subset(views_cache(tmp_path / "v.h5", n_per_class=20),
                                   with_views=True)
    assert len(subset) == 40 * (K + 1)
    sample = stratified_sample(subset, 10 * (K + 1), seed=0)
    assert len(sample) == 10 * (K + 1)
    for group in np.unique(sample.groups):  # every view of a sampled image, none of others
        assert int(np.sum(sample.groups == group)) == K + 1
    plain = sample.views == 0
    assert np.bincount(sample.labels[plain]).tolist() == [5, 5]
    assert np.all(np.diff(sample.indices) > 0)  # cache order: reads stay sequential
    assert stratified_sample(subset, len(subset), seed=0) is subset
    again = stratified_sample(subset, 10 * (K + 1), seed=0)
    np.testing.assert_array_equal(again.indices, sample.indices)  # seeded


def test_floats_per_row_and_rows_within() -> None:
    spec = make_spec()
    assert floats_per_row(spec, ["block5_pool/avg", "block5_pool/max"]) == 16
    assert floats_per_row(spec, ["block5_pool"]) == 32
    assert floats_per_row(spec, ["block4_pool/avg"]) == 512  # another layer: its real width
    assert rows_within(ROW_BYTES * 60, 16) == 60


def test_train_head_fits_a_sample_when_the_rows_exceed_the_memory_limit(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    cache = make_cache(n_per_class=100)
    head = train(cache, tmp_path / "small", memory_bytes=ROW_BYTES * 60, cv_rows=50, cv=3)
    meta = json.loads((head / "metadata.json").read_text())
    data, sel = meta["data"], meta["selection"]
    assert data["train_size"] == 160
    assert data["fit_sampled"] and data["fit_rows"] == 60
    assert data["memory_limit_bytes"] == ROW_BYTES * 60
    assert sel["sampled"] and sel["rows"] == 50
    assert meta["metrics"]["validation"]["accuracy"] > 0.9  # separable: a sample suffices

    full = train(cache, tmp_path / "full", cv=3)
    meta = json.loads((full / "metadata.json").read_text())
    assert not meta["data"]["fit_sampled"] and meta["data"]["fit_rows"] == 160
    assert not meta["selection"]["sampled"] and meta["selection"]["rows"] == 160


def test_the_summary_states_the_sample(
    make_cache: MakeCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = make_cache(n_per_class=100)
    # 1e-5 GB = 10,000 bytes: 52 rows of 16 floats (x COPIES).
    assert train_main(["--cache", str(cache), "--out", str(tmp_path / "h"), "--cv", "3",
                       "--memory-gb", "0.00001", "--cv-rows", "40"]) == 0
    out = capsys.readouterr().out
    assert "(40 rows)" in out and "fitted on a stratified sample of 52 rows" in out
    assert train_main(["--cache", str(cache), "--out", str(tmp_path / "j"), "--json",
                       "--memory-gb", "0.00001"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["fit_rows"] == 52 and summary["train"]["rows"] == 160
