"""The Ray engine: shards merged through a virtual dataset, equal to the local engine."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from extractor import FeatureSpec, open_cache, write_cache
from extractor.cache import shards as sh
from extractor.runner import ExtractError, Options

SPEC = FeatureSpec(backbone="vgg16", weights_sha256="x" * 64, layer="block5_pool",
                   input_size=150, preprocessing="p", feature_shape=(2, 2, 3))


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SPEC.feature_shape), dtype=np.float32)


@pytest.fixture
def two_shards(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """Two shards of a 2-class folder (one skip each), written out of path order."""
    sdir = sh.shards_dir(tmp_path / "c.h5")
    a, b = _rows(3, 0), _rows(2, 1)
    sh.write_shard(sdir, SPEC, ["b/1.png", "b/2.png", "b/3.png"], ["s1", "s2", "s3"], a,
                   [("b/bad.png", "not an image")])
    sh.write_shard(sdir, SPEC, ["a/1.png", "a/2.png"], ["s4", "s5"], b,
                   [("a/empty.png", "empty file (0 bytes)")])
    paths = ["a/1.png", "a/2.png", "b/1.png", "b/2.png", "b/3.png"]
    labels = {p: int(p[0] == "b") for p in [*paths, "a/empty.png", "b/bad.png"]}
    expected = dict(paths=paths, feats=np.concatenate([b, a]), labels=labels,
                    sha=["s4", "s5", "s1", "s2", "s3"],
                    skipped=[("a/empty.png", "empty file (0 bytes)"),
                             ("b/bad.png", "not an image")])
    return tmp_path / "c.h5", expected


def _merge(cache: Path, exp: dict[str, Any]) -> None:
    shards = sh.load_shards(sh.shards_dir(cache), SPEC)
    sh.merge(cache, shards, exp["labels"], ["a", "b"], SPEC, {"source_dir": "/x"})


def test_merged_cache_reads_like_a_plain_one(two_shards, tmp_path: Path) -> None:
    cache, exp = two_shards
    _merge(cache, exp)
    plain = write_cache(tmp_path / "plain.h5", exp["feats"], [0, 0, 1, 1, 1], exp["paths"],
                        SPEC, ["a", "b"], exp["sha"], exp["skipped"])
    assert sh.is_virtual(cache) and not sh.is_virtual(plain)
    with open_cache(cache) as m, open_cache(plain) as p:
        assert m.paths == p.paths == exp["paths"]
        assert m.sha256 == p.sha256 and m.skipped == p.skipped == exp["skipped"]
        assert m.labels.tolist() == p.labels.tolist()
        assert m.class_names == p.class_names and m.spec == p.spec
        np.testing.assert_array_equal(m.read()[0], p.read()[0])
        np.testing.assert_array_equal(m.read([4, 0, 2])[0], exp["feats"][[4, 0, 2]])
    with h5py.File(cache, "r") as f:  # plain h5py, no featcache code
        np.testing.assert_array_equal(f["features"][:], exp["feats"])
        # One mapping per shard: rows are in path order and each shard is one sorted run.
        assert len(f["features"].virtual_sources()) == 2

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(cache, moved / cache.name)
    shutil.move(sh.shards_dir(cache), sh.shards_dir(moved / cache.name))
    with open_cache(moved / cache.name) as m:
        np.testing.assert_array_equal(m.read()[0], exp["feats"])

    sh.make_self_contained(moved / cache.name)
    sh.remove_shards(sh.shards_dir(moved / cache.name))
    assert not sh.is_virtual(moved / cache.name)
    with open_cache(moved / cache.name) as m:
        np.testing.assert_array_equal(m.read()[0], exp["feats"])
        assert m.skipped == exp["skipped"] and m.paths == exp["paths"]


def test_missing_shard_is_detected(two_shards) -> None:
    cache, exp = two_shards
    sdir = sh.shards_dir(cache)
    # A worker reported a shard the driver cannot see (a disk of its own): refused at merge.
    with pytest.raises(sh.ShardError, match="storage that every node and the driver can read"):
        sh.load_shards(sdir, SPEC, expected=[sdir / "shard-elsewhere.h5"])
    assert not cache.exists()

    _merge(cache, exp)
    victim = sh.list_shards(sdir)[0]
    victim.unlink()
    # HDF5 itself reads the lost rows as the fill value, silently; check_sources catches it.
    with h5py.File(cache, "r") as f:
        assert np.isnan(f["features"][:]).any()
    assert sh.missing_sources(cache) == [victim]
    with pytest.raises(sh.ShardError, match="cannot be read"):
        sh.check_sources(cache)


def test_shards_made_differently_are_refused(two_shards) -> None:
    cache, _ = two_shards
    other = FeatureSpec(**{**SPEC.to_dict(), "layer": "block4_pool",
                           "feature_shape": (4, 4, 3)})
    with pytest.raises(sh.ShardError, match="other settings"):
        sh.load_shards(sh.shards_dir(cache), other)


def test_without_ray_the_message_says_how_to_install(
    small_image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from extractor.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = main(["--dir", str(small_image_dir), "--out", str(tmp_path / "c.h5"), "--engine", "ray",
               "-q"])
    assert rc == 1
    assert "pip install 'featcache[ray]'" in capsys.readouterr().err
    from extractor.ray_engine import require_ray

    with pytest.raises(ExtractError, match=r"featcache\[ray\]"):
        require_ray()


# --------------------------------------------------------------------------- on Ray, real model


def _folder(elpv_dir: Path, root: Path, n: int) -> Path:
    """n real images per class, a duplicate, and three files that are not usable images."""
    for cls in ("defective", "functional"):
        (root / cls).mkdir(parents=True)
        for src in sorted((elpv_dir / "train" / cls).iterdir())[:n]:
            shutil.copy(src, root / cls / src.name)
    first = sorted((root / "defective").iterdir())[0]
    shutil.copy(first, root / "functional" / "copy-of-defective.png")
    (root / "defective" / "notes.png").write_text("not an image")
    (root / "functional" / "empty.png").write_bytes(b"")
    (root / "functional" / "truncated.png").write_bytes(first.read_bytes()[:300])
    return root


@pytest.mark.slow
def test_ray_engine_equals_local_engine_and_resumes(
    local_ray: Any, elpv_dir: Path, weights_path: Path, tmp_path: Path
) -> None:
    from extractor import ray_engine
    from extractor.runner import run

    images = _folder(elpv_dir, tmp_path / "images", 3)
    late = sorted((elpv_dir / "validation" / "functional").iterdir())[0]
    common = dict(directory=images, weights=str(weights_path), runtime="keras", progress=False)

    ray_out = tmp_path / "ray.h5"
    first = ray_engine.run(Options(out=ray_out, checkpoint_every=3, **common),  # type: ignore[arg-type]
                           ray_engine.RayOptions(actors=1))
    # Equal bytes share a forward pass within a shard; across shards they run again.
    assert first.extracted + first.duplicates == 7 and len(first.skipped) == 3
    shard_files = sh.list_shards(sh.shards_dir(ray_out))
    assert len(shard_files) >= 3  # one per batch of 3 files

    shutil.copy(late, images / "functional" / late.name)  # resume: only the new file runs
    second = ray_engine.run(Options(out=ray_out, checkpoint_every=3, **common),  # type: ignore[arg-type]
                            ray_engine.RayOptions(actors=1))
    assert (second.extracted, second.already_cached) == (1, 10)

    local_out = tmp_path / "local.h5"
    run(Options(out=local_out, **common))  # type: ignore[arg-type]
    with open_cache(ray_out) as r, open_cache(local_out) as lo:
        assert r.paths == lo.paths and len(r) == 8
        assert r.sha256 == lo.sha256 and r.labels.tolist() == lo.labels.tolist()
        assert r.skipped == lo.skipped and [p for p, _ in r.skipped] == [
            "defective/notes.png", "functional/empty.png", "functional/truncated.png"]
        assert r.spec == lo.spec and r.class_names == lo.class_names
        ours, theirs = r.attrs, lo.attrs
        # `created` is a timestamp in seconds: equal when both were written in the same second.
        assert {k for k in ours if ours[k] != theirs.get(k)} - {"created"} == {"engine"}
        rf, lf = r.read()[0], lo.read()[0]
        assert not np.isnan(rf).any()
        np.testing.assert_allclose(rf, lf, rtol=1e-5, atol=1e-4)
        # The pooled vectors too, each a virtual dataset over the shards.
        names = r.spec.stored_names()
        assert len(names) == 7 and r.spec.pooled_layers == lo.spec.pooled_layers
        ours_named, theirs_named = r.read_named(names), lo.read_named(names)
        for name in names:
            np.testing.assert_allclose(ours_named[name], theirs_named[name], rtol=1e-5,
                                       atol=1e-4, err_msg=name)
    with h5py.File(ray_out, "r") as f:
        assert f["pooled/block3_pool/avg"].is_virtual


def test_every_reader_refuses_a_merged_cache_with_a_lost_shard(tmp_path: Path) -> None:
    """Issue 11, item 9: a lost shard reads back as NaN; only `predict` checked. Now opening the
    cache refuses it, so the local extract, train-head and evaluate cannot use NaN rows."""
    from fakes import fake_features, make_folder, opts
    from imagegen import gradient
    from PIL import Image

    from extractor import CacheError
    from extractor.runner import run

    folder = make_folder(tmp_path / "imgs", per_class=3)
    plain = tmp_path / "plain.h5"
    run(opts(folder, plain), features_fn=fake_features)
    out = tmp_path / "merged.h5"
    with open_cache(plain) as c:
        spec, paths, shas, feats = c.spec, c.paths, c.sha256, c.read()[0]
        stored = c.read_named(spec.stored_names())
        labels = dict(zip(paths, c.labels.tolist(), strict=True))
        attrs = {k: v for k, v in c.attrs.items()
                 if k in ("weights_source", "weights_file", "keras_version", "source_dir")}
    sdir = sh.shards_dir(out)
    first = sh.write_shard(sdir, spec, paths[:3], shas[:3],
                           {k: v[:3] for k, v in stored.items()}, [])
    sh.write_shard(sdir, spec, paths[3:], shas[3:], {k: v[3:] for k, v in stored.items()}, [])
    sh.merge(out, sh.load_shards(sdir, spec), labels, ["cat", "dog"], spec, attrs)
    with open_cache(out) as c:
        np.testing.assert_array_equal(c.read()[0], feats)  # complete: reads like the plain one

    first.unlink()
    with pytest.raises(CacheError, match="cannot be read"):
        open_cache(out)

    # The local engine over it, with a new file to fold in: refused, never NaN rows copied.
    Image.fromarray(gradient(70, 70, seed=77)).save(folder / "cat" / "new.png")
    before = out.read_bytes()
    with pytest.raises(CacheError, match=str(first.name)):
        run(opts(folder, out), features_fn=fake_features)
    assert out.read_bytes() == before

    from classifier.evaluation import evaluate
    from classifier.training import train

    head = train(plain, tmp_path / "head", val_cache=plain)
    with pytest.raises(CacheError, match="cannot be read"):
        train(out, tmp_path / "head2", val_cache=plain)
    with pytest.raises(CacheError, match="cannot be read"):
        evaluate(head, out)


def test_merge_maps_every_pooled_dataset_onto_the_shards(tmp_path: Path) -> None:
    spec = FeatureSpec(**{**SPEC.to_dict(), "pooled_layers": ("block3_pool", "block5_pool")})
    rng = np.random.default_rng(3)

    def feats(n: int) -> dict[str, np.ndarray]:
        return {"block5_pool": rng.random((n, 2, 2, 3), dtype=np.float32),
                **{f"{layer}/{how}": rng.random((n, c), dtype=np.float32)
                   for layer, c in (("block3_pool", 256), ("block5_pool", 512))
                   for how in ("avg", "max")}}

    a, b = feats(3), feats(2)
    cache = tmp_path / "c.h5"
    sdir = sh.shards_dir(cache)
    sh.write_shard(sdir, spec, ["b/1", "b/2", "b/3"], ["s1", "s2", "s3"], a, [])
    sh.write_shard(sdir, spec, ["a/1", "a/2"], ["s4", "s5"], b, [])
    labels = {p: int(p[0] == "b") for p in ("a/1", "a/2", "b/1", "b/2", "b/3")}
    sh.merge(cache, sh.load_shards(sdir, spec), labels, ["a", "b"], spec, {})
    expected = {name: np.concatenate([b[name], a[name]]) for name in a}
    with h5py.File(cache, "r") as f:
        assert list(f.attrs["pooled_layers"]) == ["block3_pool", "block5_pool"]
        for name in a:
            ds = f["features" if name == "block5_pool" else f"pooled/{name}"]
            assert ds.is_virtual
            np.testing.assert_array_equal(ds[:], expected[name])
    with open_cache(cache) as c:
        got = c.read_named(list(a))
    for name in a:
        np.testing.assert_array_equal(got[name], expected[name])

    # A shard without the pooled datasets the spec names is refused, not read as NaN.
    other = FeatureSpec(**{**spec.to_dict(), "pooled_layers": ("block4_pool",)})
    with pytest.raises(sh.ShardError, match="pooled"):
        sh.load_shards(sdir, other)

    sh.make_self_contained(cache)
    sh.remove_shards(sdir)
    with h5py.File(cache, "r") as f:
        assert not f["pooled/block3_pool/max"].is_virtual
        assert f["pooled/block3_pool/max"].compression == "gzip"
    with open_cache(cache) as c:
        got = c.read_named(list(a))
    for name in a:
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.slow
def test_ray_engine_on_a_cache_a_local_run_appended_to(
    local_ray: Any, elpv_dir: Path, weights_path: Path, tmp_path: Path
) -> None:
    """The Ray engine compacts an appended-to cache (issue 19) before it uses it as a shard:
    nothing is extracted twice and no row file is left behind."""
    from extractor import ray_engine
    from extractor.cache.rows import rows_dir
    from extractor.runner import run

    images = _folder(elpv_dir, tmp_path / "images", 2)
    common = dict(directory=images, weights=str(weights_path), runtime="keras", progress=False)
    out = tmp_path / "f.h5"
    run(Options(out=out, **common))  # type: ignore[arg-type]
    late = sorted((elpv_dir / "validation" / "functional").iterdir())[:2]
    shutil.copy(late[0], images / "functional" / late[0].name)
    run(Options(out=out, **common))  # type: ignore[arg-type]
    assert rows_dir(out).is_dir()  # an index over row files now

    shutil.copy(late[1], images / "functional" / late[1].name)
    summary = ray_engine.run(Options(out=out, **common),  # type: ignore[arg-type]
                             ray_engine.RayOptions(actors=1))
    assert (summary.extracted, summary.already_cached) == (1, 9)
    assert not rows_dir(out).exists()
    reference = tmp_path / "ref.h5"
    run(Options(out=reference, **common))  # type: ignore[arg-type]
    with open_cache(out) as r, open_cache(reference) as lo:
        assert r.paths == lo.paths and r.sha256 == lo.sha256 and len(r) == 7
        np.testing.assert_allclose(r.read()[0], lo.read()[0], rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------- parity: views, int8, predict (#17)


def _same_cache(ray_out: Path, local_out: Path, rtol: float = 1e-5, atol: float = 1e-4) -> None:
    """Same rows (paths, views, hashes, labels), skips, settings and features within tolerance."""
    with open_cache(ray_out) as r, open_cache(local_out) as lo:
        assert r.paths == lo.paths and r.views.tolist() == lo.views.tolist()
        assert r.sha256 == lo.sha256 and r.labels.tolist() == lo.labels.tolist()
        assert r.skipped == lo.skipped and r.n_images == lo.n_images
        assert r.spec == lo.spec and r.augmentation == lo.augmentation
        ours, theirs = r.attrs, lo.attrs
        assert {k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k)} - {"created"} == {
            "engine"}
        names = r.spec.stored_names()
        ours_named, theirs_named = r.read_named(names), lo.read_named(names)
        for name in names:
            assert not np.isnan(ours_named[name]).any(), name
            np.testing.assert_allclose(ours_named[name], theirs_named[name], rtol=rtol,
                                       atol=atol, err_msg=name)


@pytest.mark.parametrize(("mode", "views"), [("recipe", 2), ("dihedral", 3), ("flips", 1)])
def test_ray_engine_makes_every_views_mode_as_the_local_engine(
    local_ray: Any, tmp_path: Path, mode: str, views: int
) -> None:
    from fakes import fake_features, make_folder, opts
    from ray_faults import ship

    from extractor import ray_engine
    from extractor.runner import run

    ship()
    folder = make_folder(tmp_path / "imgs", per_class=3)
    shutil.copy(folder / "cat" / "cat000.png", folder / "dog" / "same-as-cat.png")
    (folder / "dog" / "broken.png").write_text("not an image")
    kw = dict(augment=views, augment_mode=mode, augment_seed=3, checkpoint_every=4)
    summary = ray_engine.run(opts(folder, tmp_path / "ray.h5", **kw), ray_engine.RayOptions(
        actors=1), features_fn=fake_features)
    run(opts(folder, tmp_path / "local.h5", **kw), features_fn=fake_features)
    assert summary.total == 7 and len(summary.skipped) == 1
    _same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")
    with open_cache(tmp_path / "ray.h5") as c:
        assert len(c) == 7 * (views + 1) and c.augmentation.mode == mode
    # Resumed with other views: the shards are refused, never mixed in.
    with pytest.raises(ExtractError, match="augmented views"):
        ray_engine.run(opts(folder, tmp_path / "ray.h5", **{**kw, "augment_seed": 4}),
                       ray_engine.RayOptions(actors=1), features_fn=fake_features)


@pytest.mark.slow
def test_ray_engine_views_and_int8_equal_the_local_engine_on_real_weights(
    local_ray: Any, elpv_dir: Path, weights_path: Path, tmp_path: Path
) -> None:
    from extractor import ray_engine
    from extractor.runner import run

    images = tmp_path / "images"
    for cls in ("defective", "functional"):
        (images / cls).mkdir(parents=True)
        for src in sorted((elpv_dir / "train" / cls).iterdir())[:2]:
            shutil.copy(src, images / cls / src.name)
    cases: dict[str, dict[str, Any]] = {
        "views": dict(runtime="keras", augment=2, augment_mode="recipe",
                      pooled_layers=("block4_pool", "block5_pool")),
        "int8": dict(precision="int8"),  # this CPU's own int8 model (scheme by its family)
    }
    for name, kw in cases.items():
        common = dict(directory=images, weights=str(weights_path), progress=False,
                      checkpoint_every=2, **kw)
        ray_out, local_out = tmp_path / f"ray-{name}.h5", tmp_path / f"local-{name}.h5"
        ray_engine.run(Options(out=ray_out, **common), ray_engine.RayOptions(actors=1))
        run(Options(out=local_out, **common))
        _same_cache(ray_out, local_out)
        with open_cache(ray_out) as c:
            assert len(c) == 4 * (1 + int(kw.get("augment", 0))), name
            assert c.spec.precision == kw.get("precision", "fp32")


@pytest.mark.slow
def test_predict_on_ray_with_a_views_head_equals_local_predict(
    local_ray: Any, small_image_dir: Path, conv_base: Any, tmp_path: Path
) -> None:
    """A head trained on flipped views: `predict --engine ray` extracts the same views on Ray
    and averages over them, giving the local engine's probabilities."""
    import csv

    from classifier.artifact import load_head
    from classifier.training import train
    from extractor.runner import run
    from featcache.predict_cli import main as predict

    images = tmp_path / "images"
    for cls in ("defective", "functional"):
        (images / cls).mkdir(parents=True)
        for f in sorted((small_image_dir / cls).iterdir())[:4]:
            shutil.copy(f, images / cls / f.name)
    train_cache = tmp_path / "flips.h5"
    run(Options(directory=images, out=train_cache, progress=False, augment=1,
                augment_mode="flips"), features_fn=conv_base)
    head_dir = train(train_cache, tmp_path / "head", cv=0, val_split=0.5)
    head = load_head(head_dir)
    assert (head.views.count, head.views.mode) == (1, "flips")

    got: dict[str, dict[str, list[float]]] = {}
    for engine in ("ray", "local"):
        out = tmp_path / f"{engine}.csv"
        assert predict(["--head", str(head_dir), "--dir", str(images), "--out", str(out),
                        "--cache", str(tmp_path / f"{engine}.h5"), "--engine", engine,
                        "--actors", "1", "--runtime", "keras", "-q"]) == 0
        with open(out, newline="") as fh:
            got[engine] = {r["path"]: [float(r[f"p_{c}"]) for c in head.classes_]
                           for r in csv.DictReader(fh)}
    with open_cache(tmp_path / "ray.h5") as c:
        assert sh.is_virtual(tmp_path / "ray.h5")
        assert len(c) == 16 and c.views.tolist() == [0, 1] * 8  # each file and its mirror
    assert sorted(got["ray"]) == sorted(got["local"]) and len(got["ray"]) == 8
    for path, proba in got["ray"].items():
        np.testing.assert_allclose(proba, got["local"][path], atol=1e-5, err_msg=path)


@pytest.mark.slow
def test_the_python_api_makes_views_on_ray(
    local_ray: Any, elpv_dir: Path, weights_path: Path, tmp_path: Path
) -> None:
    """`featcache.extract(engine="ray", augment=...)` stores the views it asks for, as the local
    engine does (issue 20 item 15 found them dropped silently)."""
    import featcache

    images = _folder(elpv_dir, tmp_path / "images", 2)
    kw = dict(weights=str(weights_path), runtime="keras", augment=1, augment_mode="flips")
    featcache.extract(images, tmp_path / "ray.h5", engine="ray", actors=1, **kw)
    featcache.extract(images, tmp_path / "local.h5", **kw)
    with open_cache(tmp_path / "ray.h5") as c:
        assert len(c) == 2 * c.n_images and c.augmentation.mode == "flips"
    _same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")
