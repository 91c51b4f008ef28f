"""The cache in other tools: dimension names for xarray (h5netcdf) and docs/CACHE.md's examples."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from fakes import fake_features, make_folder, opts

from extractor import open_cache
from extractor.cache import shards as sh
from extractor.runner import run

DOC = Path(__file__).resolve().parents[2] / "docs" / "CACHE.md"
MAPS_DIMS = ("row", "height", "width", "channel")


def _check_dims(path: Path, pooled_layers: tuple[str, ...]) -> None:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf", phony_dims="access") as ds:
        assert ds["features"].dims == MAPS_DIMS
        for name in ("labels", "paths", "sha256", "view", "file_size", "file_mtime_ns"):
            assert ds[name].dims == ("row",), name
        assert not any(d.startswith("phony") for d in ds.dims)
        assert "row" not in ds.data_vars  # a dimension name, not a variable
        features = ds["features"].values
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(features, f["features"][:])
    for layer in pooled_layers:
        with xr.open_dataset(path, engine="h5netcdf", group=f"pooled/{layer}",
                             phony_dims="access") as g:
            for how in ("avg", "max"):
                assert g[how].dims == ("row", f"{layer}_channel")
    with xr.open_dataset(path, engine="h5netcdf", group="skipped", phony_dims="access") as s:
        assert s["paths"].dims == s["reasons"].dims == ("skipped_row",)


def test_local_and_merged_caches_name_their_dimensions(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    (folder / "cat" / "bad.png").write_bytes(b"not an image")
    local = tmp_path / "local.h5"
    run(opts(folder, local, augment=1, augment_mode="flips"), features_fn=fake_features)
    with open_cache(local) as c:
        spec = c.spec
        layers = spec.pooled_layers
        assert len(layers) == 3
        stored = c.read_named(spec.stored_names())
        paths, shas = c.paths[::2], c.sha256[::2]
        labels = dict(zip(c.paths, c.labels.tolist(), strict=True))
    _check_dims(local, layers)

    # A merged cache: virtual datasets and dimension scales together in one file.
    merged = tmp_path / "merged.h5"
    sdir = sh.shards_dir(merged)
    images = {k: v[::2] for k, v in stored.items()}
    for lo, hi in ((0, 2), (2, 6)):
        sh.write_shard(sdir, spec, paths[lo:hi], shas[lo:hi],
                       {k: v[lo:hi] for k, v in images.items()}, [("cat/bad.png", "bad")])
    sh.merge(merged, sh.load_shards(sdir, spec), labels, ["cat", "dog"], spec, {})
    with h5py.File(merged, "r") as f:
        assert f["features"].is_virtual and f["pooled/block4_pool/max"].is_virtual
    _check_dims(merged, layers)
    with open_cache(merged) as c:
        np.testing.assert_array_equal(c.read()[0], images["block5_pool"])

    sh.make_self_contained(merged)
    _check_dims(merged, layers)


@pytest.mark.slow
def test_real_cache_reads_in_xarray_with_named_dimensions(small_cache: Path) -> None:
    import xarray as xr

    with open_cache(small_cache) as c:
        layers = c.spec.pooled_layers
        n = len(c)
    _check_dims(small_cache, layers)
    with xr.open_dataset(small_cache, engine="h5netcdf", phony_dims="access") as ds:
        assert dict(ds.sizes) == {"row": n, "height": 4, "width": 4, "channel": 512}
    with xr.open_dataset(small_cache, engine="h5netcdf", group="pooled/block3_pool") as g:
        assert dict(g.sizes) == {"row": n, "block3_pool_channel": 256}


def _doc_example(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    matching = [b for b in blocks if marker in b]
    assert len(matching) == 1, f"one example with {marker!r} in {DOC}"
    return matching[0]


def test_cache_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    run(opts(folder, tmp_path / "feats.h5", augment=2), features_fn=fake_features)
    monkeypatch.chdir(tmp_path)

    scope: dict[str, object] = {}
    exec(_doc_example("import pandas"), scope)
    table, images = scope["table"], scope["images"]
    with open_cache(tmp_path / "feats.h5") as c:
        avg = c.read_named(["block5_pool/avg"])["block5_pool/avg"]
        assert list(table["path"]) == c.paths and len(table) == 18  # type: ignore[index]
    assert list(images["view"]) == [0] * 6 and list(images["class"]) == ["cat"] * 3 + ["dog"] * 3  # type: ignore[index]
    np.testing.assert_array_equal(table.filter(like="block5_avg_").to_numpy(), avg)  # type: ignore[attr-defined]

    scope = {}
    exec(_doc_example('f["features"][:][images]'), scope)
    assert scope["X"].shape == (6, 2, 2, 512) and len(scope["paths"]) == 6  # type: ignore[attr-defined]
    scope = {}
    exec(_doc_example("pooled/{layer}/{how}"), scope)
    assert scope["X"].shape == (6, 2 * (256 + 512 + 512))  # type: ignore[attr-defined]
    scope = {}
    exec(_doc_example("import xarray"), scope)
    assert scope["b3"]["avg"].dims == ("row", "block3_pool_channel")  # type: ignore[index]
