"""The extraction pipeline and the cache it writes, with a fast stand-in for the conv base.

The stand-in makes features from the pixels themselves, so every row is checkable; the real
conv base is exercised in test_features.py and test_resume.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from fakes import SIZE, CountingFeatures, DiesOnBatch, fake_features, make_folder, opts
from imagegen import gradient, write_bad_files
from PIL import Image

from extractor import FeatureSpec, open_cache
from extractor.cache import CacheError, parts_dir
from extractor.cli import main as extract_main
from extractor.runner import ExtractError, Options, run


def test_cache_layout_reads_with_plain_h5py(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs")
    out = tmp_path / "feats.h5"
    summary = run(opts(folder, out, batch_size=3), features_fn=fake_features)
    assert summary.total == 10 and summary.extracted == 10

    # Exactly as docs/CACHE.md shows it: no featcache import needed.
    with h5py.File(out, "r") as f:
        features = f["features"][:]
        labels = f["labels"][:]
        paths = f["paths"].asstr()[:]
        class_names = list(f.attrs["class_names"])
        assert features.shape == (10, 2, 2, 512) and features.dtype == np.float32
        assert class_names == ["cat", "dog"]
        assert list(labels) == [0] * 5 + [1] * 5
        assert list(paths) == sorted(paths) and paths[0] == "cat/cat000.png"
        assert len(f["sha256"].asstr()[0]) == 64
        assert f["features"].compression == "gzip"
        for attr in ("backbone", "weights_sha256", "layer", "input_size", "preprocessing",
                     "package_version", "runtime"):
            assert attr in f.attrs
        assert f.attrs["input_size"] == SIZE and f.attrs["layer"] == "block5_pool"
    for i, p in enumerate(paths):
        pixels = np.asarray(Image.open(folder / p).convert("RGB").resize((SIZE, SIZE)))
        assert features[i, 0, 0, 0] == pytest.approx(pixels.mean(), abs=0.5)


def test_reader_iterates_in_chunks(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=7)
    out = tmp_path / "feats.h5"
    run(opts(folder, out), features_fn=fake_features)
    with open_cache(out) as cache:
        x_all, y_all = cache.read()
        batches = list(cache.iter_batches(batch_size=4))
        assert [len(b[0]) for b in batches] == [4, 4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x_all)
        idx = [9, 2, 5]
        x_sel, y_sel = cache.read(idx)
        np.testing.assert_array_equal(x_sel, x_all[idx])
        np.testing.assert_array_equal(y_sel, y_all[idx])
        assert cache.spec.feature_shape == (2, 2, 512)


def test_bad_files_are_skipped_and_recorded(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    expected = write_bad_files(folder / "cat")
    out = tmp_path / "feats.h5"
    summary = run(opts(folder, out), features_fn=fake_features)
    assert summary.total == 4
    reasons = dict(summary.skipped)
    assert set(reasons) == {f"cat/{name}" for name in expected}
    for name, fragment in expected.items():
        assert fragment in reasons[f"cat/{name}"], (name, reasons[f"cat/{name}"])
    with open_cache(out) as cache:
        assert dict(cache.skipped) == reasons
        assert not any(p.startswith("cat/zero") for p in cache.paths)


def test_identical_files_go_through_the_model_once(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    shutil.copy(folder / "cat" / "cat000.png", folder / "dog" / "copy-of-cat.png")
    shutil.copy(folder / "cat" / "cat001.png", folder / "cat" / "again.png")
    counter = CountingFeatures()
    summary = run(opts(folder, tmp_path / "f.h5", batch_size=2), features_fn=counter)
    assert counter.images == 6 and summary.duplicates == 2 and summary.total == 8
    with open_cache(tmp_path / "f.h5") as cache:
        x, y = cache.read()
        paths = cache.paths
    a, b = paths.index("cat/cat000.png"), paths.index("dog/copy-of-cat.png")
    np.testing.assert_array_equal(x[a], x[b])
    assert (y[a], y[b]) == (0, 1)  # same bytes, each keeps its own label


def test_rerun_extracts_only_new_files_and_drops_removed(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    before = out.stat().st_mtime_ns

    counter = CountingFeatures()
    summary = run(opts(folder, out), features_fn=counter)
    assert counter.images == 0 and summary.already_cached == 6
    assert out.stat().st_mtime_ns == before  # nothing new: the file is left alone

    Image.fromarray(gradient(80, 60, seed=999)).save(folder / "dog" / "new.png")
    (folder / "cat" / "cat002.png").unlink()
    counter = CountingFeatures()
    summary = run(opts(folder, out), features_fn=counter)
    assert counter.images == 1 and summary.removed == 1 and summary.total == 6
    with open_cache(out) as cache:
        assert "dog/new.png" in cache.paths and "cat/cat002.png" not in cache.paths
        assert len(set(cache.paths)) == len(cache)


def test_new_class_folder_relabels_consistently(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2, classes=("b_cls", "c_cls"))
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    make_folder(folder, per_class=2, classes=("a_cls",))
    run(opts(folder, out), features_fn=fake_features)
    with open_cache(out) as cache:
        assert cache.class_names == ["a_cls", "b_cls", "c_cls"]
        for path, label in zip(cache.paths, cache.labels, strict=True):
            assert cache.class_names[label] == path.split("/")[0]


def test_flat_folder_gives_unlabelled_cache(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(gradient(50, 50, seed=i)).save(folder / f"{i}.png")
    run(opts(folder, tmp_path / "f.h5"), features_fn=fake_features)
    with open_cache(tmp_path / "f.h5") as cache:
        assert cache.class_names == [] and list(cache.labels) == [-1, -1, -1]


def test_checkpoints_are_folded_in_and_removed(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=5)
    out = tmp_path / "f.h5"
    run(opts(folder, out, batch_size=2, checkpoint_every=2), features_fn=fake_features)
    assert not parts_dir(out).exists()
    with open_cache(out) as cache:
        assert len(cache) == 10


def test_interrupted_run_resumes_from_checkpoints(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=6)
    out = tmp_path / "f.h5"

    with pytest.raises(KeyboardInterrupt):
        run(opts(folder, out, batch_size=2, checkpoint_every=2), features_fn=DiesOnBatch(3))
    assert not out.exists() and parts_dir(out).is_dir()

    counter = CountingFeatures()
    run(opts(folder, out, batch_size=2), features_fn=counter)
    assert counter.images == 12 - 4  # the two completed batches are not redone
    run(opts(folder, tmp_path / "ref.h5"), features_fn=fake_features)
    with open_cache(out) as got, open_cache(tmp_path / "ref.h5") as ref:
        assert got.paths == ref.paths
        np.testing.assert_array_equal(got.read()[0], ref.read()[0])
        np.testing.assert_array_equal(got.labels, ref.labels)


def test_settings_differing_from_existing_cache_are_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    with pytest.raises(ExtractError, match="input_size"):
        run(Options(directory=folder, out=out, image_size=96, progress=False),
            features_fn=fake_features)
    other_weights = tmp_path / "other.h5"
    other_weights.write_bytes(b"not the same weights")
    with pytest.raises(ExtractError, match="weights_sha256"):
        run(opts(folder, out, weights=str(other_weights)), features_fn=fake_features)


def test_not_a_cache_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("hello")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        open_cache(bogus)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="not a feature cache"):
        open_cache(tmp_path / "other.h5")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dir", "{tmp}/missing"], "is not a folder"),
        (["--dir", "{imgs}", "--out", "{tmp}/no/such/dir/f.h5"], "does not exist"),
        (["--dir", "{imgs}", "--weights", "{tmp}/nope.h5"], "weights file not found"),
        (["--dir", "{empty}"], "no files found"),
        (["--dir", "{bad}", "--out", "{tmp}/bad.h5"], "no image could be cached"),
    ],
)
def test_cli_errors_exit_nonzero_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    imgs = make_folder(tmp_path / "imgs", per_class=1)
    (tmp_path / "empty").mkdir()
    write_bad_files(tmp_path / "bad")
    fmt = {"tmp": tmp_path, "imgs": imgs, "empty": tmp_path / "empty", "bad": tmp_path / "bad"}
    argv = [a.format(**fmt) for a in args] + ["--quiet", "--image-size", str(SIZE)]
    assert extract_main(argv) == 1
    assert message in capsys.readouterr().err


def test_cli_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        extract_main(["--dir", ".", "--batch-size", "0"])
    assert exc.value.code == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_files_changed_since_the_cache_are_extracted_again(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    with open_cache(out) as cache:
        before = dict(zip(cache.paths, cache.read()[0][:, 0, 0, 0].tolist(), strict=True))

    target = folder / "dog" / "dog001.png"
    Image.fromarray(np.full((60, 80, 3), 7, np.uint8)).save(target)  # new bytes, same name
    untouched = folder / "cat" / "cat000.png"
    untouched.touch()  # newer timestamp, same bytes: hashed, not extracted again
    counter = CountingFeatures()
    summary = run(opts(folder, out), features_fn=counter)
    assert counter.images == 1 and summary.changed == {"dog/dog001.png"}
    with open_cache(out) as cache:
        after = dict(zip(cache.paths, cache.read()[0][:, 0, 0, 0].tolist(), strict=True))
        assert len(cache) == 6 and len(set(cache.paths)) == 6
    assert after["dog/dog001.png"] == pytest.approx(7.0, abs=0.01)
    assert after["dog/dog001.png"] != before["dog/dog001.png"]
    assert {p: v for p, v in after.items() if p != "dog/dog001.png"} == {
        p: v for p, v in before.items() if p != "dog/dog001.png"}


def test_a_cached_file_that_turns_bad_leaves_the_cache(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    (folder / "cat" / "cat001.png").write_bytes(b"overwritten with text")
    summary = run(opts(folder, out), features_fn=fake_features)
    assert summary.changed == {"cat/cat001.png"} and summary.total == 3
    with open_cache(out) as cache:
        assert "cat/cat001.png" not in cache.paths
        assert dict(cache.skipped)["cat/cat001.png"].startswith("not an image")


def test_renamed_file_and_a_new_file_under_its_old_name(tmp_path: Path) -> None:
    """`mv a b` then a new `a` (issue 11, item 6): b keeps a's features, a gets its own."""
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    with open_cache(out) as cache:
        old = cache.read([cache.paths.index("cat/cat000.png")])[0][0]
    (folder / "cat" / "cat000.png").rename(folder / "cat" / "renamed.png")
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(folder / "cat" / "cat000.png")

    counter = CountingFeatures()
    summary = run(opts(folder, out), features_fn=counter)
    assert counter.images == 1  # the new file; the renamed one shares its old features
    assert summary.total == 5
    with open_cache(out) as cache:
        x = dict(zip(cache.paths, cache.read()[0], strict=True))
    np.testing.assert_array_equal(x["cat/renamed.png"], old)
    assert x["cat/cat000.png"][0, 0, 0] == pytest.approx(200.0, abs=0.01)


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    """Two runs on one --out (issue 11, item 7). Without a lock, run B (started while A runs,
    after files were added) checkpoints the new files, A's consolidation folds B's checkpoints
    in, drops those files (A's listing lacks them) and deletes the checkpoints; B then
    finishes from A's cache and the new files are lost although B extracted them."""
    import threading

    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    a_paused, b_progressed, a_done = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def fa(pixels: np.ndarray) -> np.ndarray:
        results["a_calls"] = int(results.get("a_calls", 0)) + 1  # type: ignore[call-overload]
        if results["a_calls"] == 2:
            a_paused.set()
            b_progressed.wait(30)
        return fake_features(pixels)

    def fb(pixels: np.ndarray) -> np.ndarray:
        results["b_calls"] = int(results.get("b_calls", 0)) + 1  # type: ignore[call-overload]
        if results["b_calls"] == 3:
            b_progressed.set()
            a_done.wait(30)
        return fake_features(pixels)

    def runner(name: str, fn: object, done: threading.Event) -> None:
        try:
            results[name] = run(opts(folder, out, batch_size=1, checkpoint_every=1),
                                features_fn=fn)  # type: ignore[arg-type]
        except Exception as exc:
            results[name] = exc
        finally:
            done.set()

    a = threading.Thread(target=runner, args=("a", fa, a_done))
    a.start()
    assert a_paused.wait(30)
    for i in range(2):
        Image.fromarray(gradient(70, 70, seed=500 + i)).save(folder / "cat" / f"a_new{i}.png")
    b = threading.Thread(target=runner, args=("b", fb, b_progressed))
    b.start()
    a.join(60)
    b.join(60)

    with open_cache(out) as cache:
        held = cache.paths
    assert isinstance(results["b"], ExtractError), (
        f"the second run was not refused ({results['b']}); after both runs the cache holds "
        f"{held}")
    assert "another extract" in str(results["b"]) and str(out) in str(results["b"])
    assert not isinstance(results["a"], Exception) and len(held) == 4
    assert run(opts(folder, out), features_fn=fake_features).total == 6
    assert not list(tmp_path.glob(".f.h5.lock"))  # released and removed


def test_cli_refuses_an_output_another_run_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extractor.locking import exclusive

    folder = make_folder(tmp_path / "imgs", per_class=1)
    out = tmp_path / "f.h5"
    with exclusive(out):
        rc = extract_main(["--dir", str(folder), "--out", str(out), "--quiet",
                           "--image-size", str(SIZE)])
    err = capsys.readouterr().err
    assert rc == 1 and "another extract" in err and "Traceback" not in err
    assert not out.exists()


def test_files_changed_after_a_checkpoint_are_extracted_again(tmp_path: Path) -> None:
    """Issue 11, item 8: rows (and skips) already in checkpoints were trusted without checking
    whether their files changed since; a resumed run now re-extracts the changed ones."""
    folder = make_folder(tmp_path / "imgs", per_class=3)
    (folder / "cat" / "bad.png").write_bytes(b"not an image yet")
    out = tmp_path / "f.h5"

    with pytest.raises(KeyboardInterrupt):
        run(opts(folder, out, batch_size=1, checkpoint_every=1), features_fn=DiesOnBatch(3))
    # Checkpointed: cat/bad.png (skipped), cat/cat000.png, cat/cat001.png. Now both change.
    Image.fromarray(np.full((60, 80, 3), 9, np.uint8)).save(folder / "cat" / "cat000.png")
    Image.fromarray(np.full((60, 80, 3), 33, np.uint8)).save(folder / "cat" / "bad.png")

    summary = run(opts(folder, out), features_fn=fake_features)
    assert summary.total == 7 and summary.skipped == []
    with open_cache(out) as cache:
        x = dict(zip(cache.paths, cache.read()[0][:, 0, 0, 0].tolist(), strict=True))
    assert x["cat/cat000.png"] == pytest.approx(9.0, abs=0.01)
    assert x["cat/bad.png"] == pytest.approx(33.0, abs=0.01)


def test_a_file_edited_during_the_run_is_noticed_by_the_next(tmp_path: Path) -> None:
    """Issue 11, item 8: the watermark was the cache's own mtime, set when the run ends, so a
    file edited after it was read, before the run ended, looked older than the cache."""
    folder = make_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "f.h5"
    edited = folder / "cat" / "cat000.png"
    calls = 0

    def edits_the_first_file(pixels: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 2:  # cat000 was read and went through the model in the first batch
            Image.fromarray(np.full((60, 80, 3), 11, np.uint8)).save(edited)
        return fake_features(pixels)

    run(opts(folder, out, batch_size=1), features_fn=edits_the_first_file)
    counter = CountingFeatures()
    summary = run(opts(folder, out), features_fn=counter)
    assert summary.changed == {"cat/cat000.png"} and counter.images == 1
    with open_cache(out) as cache:
        x = dict(zip(cache.paths, cache.read()[0][:, 0, 0, 0].tolist(), strict=True))
    assert x["cat/cat000.png"] == pytest.approx(11.0, abs=0.01)


# --------------------------------------------------------------------------- pooled vectors


def test_pooled_vectors_are_stored_beside_the_maps(tmp_path: Path) -> None:
    from extractor.features import DEFAULT_POOLED_LAYERS, pool

    folder = make_folder(tmp_path / "imgs", per_class=3)
    shutil.copy(folder / "cat" / "cat000.png", folder / "dog" / "same-bytes.png")
    out = tmp_path / "f.h5"
    run(opts(folder, out, batch_size=2, checkpoint_every=2), features_fn=fake_features)
    with h5py.File(out, "r") as f:  # plain h5py: the layout docs/CACHE.md describes
        assert list(f.attrs["pooled_layers"]) == list(DEFAULT_POOLED_LAYERS)
        for layer, channels in (("block3_pool", 256), ("block4_pool", 512),
                                ("block5_pool", 512)):
            for how in ("avg", "max"):
                ds = f[f"pooled/{layer}/{how}"]
                assert ds.shape == (7, channels) and ds.dtype == np.float32
                assert ds.chunks is not None and ds.compression == "gzip"
        maps = f["features"][:]
        np.testing.assert_array_equal(f["pooled/block5_pool/avg"][:], pool(maps, "avg"))
        np.testing.assert_array_equal(f["pooled/block5_pool/max"][:], pool(maps, "max"))
        paths = list(f["paths"].asstr()[:])
        b3 = f["pooled/block3_pool/max"][:]
    # Each row holds its own image's vectors; a duplicate shares them.
    pixels = {p: np.asarray(Image.open(folder / p).convert("RGB").resize((SIZE, SIZE)))
              for p in paths}
    for i, p in enumerate(paths):
        assert b3[i, 0] == pytest.approx(float(pixels[p].mean()) + 63 * 256 / 1000, abs=0.5)
    np.testing.assert_array_equal(b3[paths.index("cat/cat000.png")],
                                  b3[paths.index("dog/same-bytes.png")])
    with open_cache(out) as cache:
        got = cache.read_named(["block4_pool/avg", "block5_pool/max"], [3, 0])
        assert got["block4_pool/avg"].shape == (2, 512)
        np.testing.assert_array_equal(got["block5_pool/max"], pool(maps[[3, 0]], "max"))


def test_pooled_layers_option_and_refusal_of_other_pooled_layers(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out, pooled_layers=()), features_fn=fake_features)
    with h5py.File(out, "r") as f:
        assert "pooled" not in f and list(f.attrs["pooled_layers"]) == []
    with open_cache(out) as cache:  # an old-style cache: the main poolings come from the maps
        assert cache.feature_names[-2:] == ["block5_pool/avg", "block5_pool/max"]

    with pytest.raises(ExtractError, match=r"pooled_layers: cache has none, this run "
                                           r"block4_pool.*--pooled-layers none"):
        run(opts(folder, out, pooled_layers=("block4_pool",)), features_fn=fake_features)
    # Left out, the option follows the existing cache: new files are added as before.
    Image.fromarray(gradient(70, 70, seed=42)).save(folder / "cat" / "new.png")
    summary = run(opts(folder, out), features_fn=fake_features)
    assert summary.extracted == 1 and summary.total == 5
    with h5py.File(out, "r") as f:
        assert "pooled" not in f

    other = tmp_path / "g.h5"
    run(opts(folder, other, pooled_layers=("block4_pool",)), features_fn=fake_features)
    with h5py.File(other, "r") as f:
        assert sorted(f["pooled"]) == ["block4_pool"]
    with pytest.raises(ExtractError, match="pooled_layers"):
        run(opts(folder, other, pooled_layers=("block4_pool", "block3_pool")),
            features_fn=fake_features)


def test_checkpoints_made_with_other_pooled_layers_are_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "f.h5"

    with pytest.raises(KeyboardInterrupt):
        run(opts(folder, out, batch_size=2, checkpoint_every=2, pooled_layers=()),
            features_fn=DiesOnBatch(2))
    with pytest.raises(CacheError, match="pooled_layers"):
        run(opts(folder, out), features_fn=fake_features)
    summary = run(opts(folder, out, pooled_layers=()), features_fn=fake_features)
    assert summary.total == 6


def test_write_cache_takes_named_features_or_the_maps(tmp_path: Path) -> None:
    from extractor import write_cache
    from extractor.features import pool

    spec = FeatureSpec(backbone="vgg16", weights_sha256="x" * 64, layer="block5_pool",
                       input_size=64, preprocessing="p", feature_shape=(2, 2, 512),
                       pooled_layers=("block5_pool",))
    maps = fake_features(np.zeros((3, SIZE, SIZE, 3), np.uint8))["block5_pool"]
    write_cache(tmp_path / "a.h5", maps, [0, 1, 0], ["a", "b", "c"], spec, ["x", "y"])
    with open_cache(tmp_path / "a.h5") as cache:
        np.testing.assert_array_equal(cache.read_named(["block5_pool/max"])["block5_pool/max"],
                                      pool(maps, "max"))
    bad = {**fake_features(np.zeros((3, SIZE, SIZE, 3), np.uint8))}
    bad["block5_pool/avg"] = bad["block5_pool/avg"][:2]
    with pytest.raises(ValueError, match="block5_pool/avg"):
        write_cache(tmp_path / "b.h5", bad, [0, 1, 0], ["a", "b", "c"], spec, ["x", "y"])
    assert not (tmp_path / "b.h5").exists()


def test_cli_pooled_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from extractor.cli import pooled_layers

    assert pooled_layers("none") == ()
    assert pooled_layers("block4_pool, block3_pool,block4_pool") == ("block4_pool", "block3_pool")
    with pytest.raises(SystemExit) as exc:
        extract_main(["--dir", str(tmp_path), "--pooled-layers", "block9_pool"])
    assert exc.value.code == 2 and "block9_pool" in capsys.readouterr().err
