"""Augmented views: reproducible per image and seed, distinct, and grouped with their image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fakes import SIZE, fake_features, make_folder, opts
from imagegen import gradient
from PIL import Image

from extractor import open_cache
from extractor.augment import augment, view_rng
from extractor.runner import ExtractError, run


def test_views_are_deterministic_and_distinct() -> None:
    pixels = gradient(64, 64, seed=3)
    a = augment(pixels, view_rng("abc", 1, seed=0))
    assert a.shape == pixels.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, augment(pixels, view_rng("abc", 1, seed=0)))
    assert not np.array_equal(a, pixels)
    assert not np.array_equal(a, augment(pixels, view_rng("abc", 2, seed=0)))
    assert not np.array_equal(a, augment(pixels, view_rng("abc", 1, seed=1)))


def test_identity_parameters_leave_the_image_alone() -> None:
    from extractor.augment import Augmentation

    none = Augmentation(0, 0, 0, 0, 0, horizontal_flip=False)
    pixels = gradient(40, 40, seed=1)
    np.testing.assert_array_equal(augment(pixels, view_rng("x", 1, 0), none), pixels)


def test_cache_rows_hold_each_image_then_its_views(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    shutil.copy(folder / "cat" / "cat000.png", folder / "dog" / "same-bytes.png")
    out = tmp_path / "f.h5"
    summary = run(opts(folder, out, augment=2, batch_size=4), features_fn=fake_features)
    assert summary.total == 7 and summary.extracted == 6 and summary.duplicates == 1
    with open_cache(out) as cache:
        paths, views = cache.paths, cache.views.tolist()
        x, y = cache.read()
        assert len(cache) == 21
        assert cache.augmentation.count == 2
        assert paths[:3] == ["cat/cat000.png"] * 3 and views[:3] == [0, 1, 2]
        assert sorted(zip(paths, views, strict=True)) == list(zip(paths, views, strict=True))
        # Views are different pictures of the same image, with the image's label.
        assert len({float(v) for v in x[:3, 0, 0, 0]}) == 3
        assert y[:3].tolist() == [0, 0, 0]
        # A file with the same bytes shares every view, and keeps its own label.
        a = [i for i, p in enumerate(paths) if p == "cat/cat000.png"]
        b = [i for i, p in enumerate(paths) if p == "dog/same-bytes.png"]
        np.testing.assert_array_equal(x[a], x[b])
        assert set(y[b].tolist()) == {1}
    again = run(opts(folder, out, augment=2, batch_size=4), features_fn=fake_features)
    assert again.extracted == 0 and again.total == 7  # images, not rows, in both code paths


def test_views_do_not_depend_on_batching_or_order(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    run(opts(folder, tmp_path / "a.h5", augment=2, batch_size=1), features_fn=fake_features)
    run(opts(folder, tmp_path / "b.h5", augment=2, batch_size=7, workers=1),
        features_fn=fake_features)
    with open_cache(tmp_path / "a.h5") as a, open_cache(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(a.read()[0], b.read()[0])


def test_other_augment_settings_are_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out, augment=2), features_fn=fake_features)
    with pytest.raises(ExtractError, match="augmented views"):
        run(opts(folder, out, augment=3), features_fn=fake_features)
    with pytest.raises(ExtractError, match="augmented views"):
        run(opts(folder, out, augment=2, augment_seed=1), features_fn=fake_features)
    Image.fromarray(gradient(70, 70, seed=42)).save(folder / "cat" / "new.png")
    summary = run(opts(folder, out, augment=2), features_fn=fake_features)
    assert summary.extracted == 1
    with open_cache(out) as cache:
        assert len(cache) == 5 * 3


def test_size_is_the_extractors(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=1)
    run(opts(folder, tmp_path / "f.h5", augment=1), features_fn=fake_features)
    with open_cache(tmp_path / "f.h5") as cache:
        assert cache.spec.input_size == SIZE


def test_dihedral_views_are_the_seven_other_symmetries() -> None:
    from extractor.augment import make_view

    pixels = gradient(32, 32, seed=5)
    views = [make_view(pixels, "abc", v, seed=0, mode="dihedral") for v in range(1, 8)]
    symmetries = [np.rot90(pixels, k) for k in range(4)]
    symmetries += [s[:, ::-1] for s in symmetries]
    as_bytes = {v.tobytes() for v in views}
    assert len(as_bytes) == 7 and pixels.tobytes() not in as_bytes
    assert as_bytes <= {s.tobytes() for s in symmetries}
    np.testing.assert_array_equal(views[2], make_view(pixels, "abc", 3, seed=0, mode="dihedral"))
    assert [v.tobytes() for v in views] != [
        make_view(pixels, "abd", i, seed=0, mode="dihedral").tobytes() for i in range(1, 8)]


def test_augment_mode_is_part_of_the_cache_settings(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out, augment=2, augment_mode="dihedral"), features_fn=fake_features)
    with open_cache(out) as cache:
        assert cache.augmentation.description.startswith("dihedral")
    with pytest.raises(ExtractError, match="augment-mode"):
        run(opts(folder, out, augment=2), features_fn=fake_features)


def test_augment_mode_attribute_and_old_caches(tmp_path: Path) -> None:
    import h5py

    folder = make_folder(tmp_path / "imgs", per_class=2)
    for mode, k in (("recipe", 2), ("dihedral", 3), ("flips", 1)):
        out = tmp_path / f"{mode}.h5"
        run(opts(folder, out, augment=k, augment_mode=mode), features_fn=fake_features)
        with h5py.File(out, "r") as f:
            assert f.attrs["augment_mode"] == mode
        with h5py.File(out, "a") as f:  # as a cache written before the attribute existed
            del f.attrs["augment_mode"]
        with open_cache(out) as cache:
            assert (cache.augmentation.mode, cache.augmentation.count) == (mode, k)
        again = run(opts(folder, out, augment=k, augment_mode=mode), features_fn=fake_features)
        assert again.extracted == 0  # the derived mode matches: the cache is extended, as before
    run(opts(folder, tmp_path / "plain.h5"), features_fn=fake_features)
    with open_cache(tmp_path / "plain.h5") as cache:
        assert not cache.augmentation and cache.augmentation.count == 0
        assert cache.attrs["augment_mode"] == "none"  # as docs/CACHE.md says a file records it


def test_flips_mode_stores_the_mirror_image(tmp_path: Path) -> None:
    from extractor.augment import make_view
    from extractor.images import decode_image

    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out, augment=1, augment_mode="flips"), features_fn=fake_features)
    with open_cache(out) as cache:
        assert len(cache) == 8 and cache.views.tolist() == [0, 1] * 4
        x = cache.read_named(["block5_pool", "block3_pool/max"])
        paths = cache.paths
    pixels = decode_image((folder / paths[1]).read_bytes(), SIZE)
    mirror = make_view(pixels, "any", 1, seed=0, mode="flips")
    np.testing.assert_array_equal(mirror, pixels[:, ::-1])
    expected = fake_features(mirror[None])
    np.testing.assert_allclose(x["block5_pool"][1], expected["block5_pool"][0], rtol=1e-6)
    np.testing.assert_allclose(x["block3_pool/max"][1], expected["block3_pool/max"][0],
                               rtol=1e-6)


@pytest.mark.parametrize(("mode", "k", "message"), [
    ("flips", 2, "flips makes one view"),
    ("dihedral", 8, "more would repeat them: use --augment 7 or fewer"),
])
def test_view_counts_a_mode_cannot_fill_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, k: int, message: str
) -> None:
    from extractor.cli import main as extract_main

    folder = make_folder(tmp_path / "imgs", per_class=1)
    with pytest.raises(ExtractError, match=message):
        run(opts(folder, tmp_path / "f.h5", augment=k, augment_mode=mode),
            features_fn=fake_features)
    with pytest.raises(SystemExit) as exc:
        extract_main(["--dir", str(folder), "--augment", str(k), "--augment-mode", mode])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    run(opts(folder, tmp_path / "ok.h5", augment=k - 1 or 1, augment_mode=mode),
        features_fn=fake_features)


def test_image_ids_group_the_views_of_each_image(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out, augment=2), features_fn=fake_features)
    with open_cache(out) as cache:
        ids, paths = cache.image_ids, cache.paths
    assert ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all((ids[i] == ids[j]) == (paths[i] == paths[j])
               for i in range(len(ids)) for j in range(len(ids)))


def test_one_views_type() -> None:
    """The classifier's `Views` is the extractor's: one description of views for caches, heads,
    the inference path and the service."""
    from classifier.views import Views as ClassifierViews
    from extractor.augment import Views

    assert ClassifierViews is Views
    views = Views(2, "dihedral", 0)
    assert Views.from_dict(views.to_dict()) == views
    assert Views.from_attrs({"augment_views": 2, "augment_mode": "dihedral"}) == views
    # Caches written before augment_mode was recorded: the mode read from the description.
    assert Views.from_attrs({"augment_views": 1, "augmentation": "flips: the left-right"}
                            ).mode == "flips"
    assert Views.from_attrs({"augment_views": 0}) == Views() and not Views()
    assert views.same_kind(Views(7, "dihedral", 5)) and not views.same_kind(Views(2, "recipe"))
    assert views.describe() == "2 dihedral views"
