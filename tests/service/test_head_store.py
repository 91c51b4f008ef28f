"""The watched heads folder alone: layout, versions, and what a broken or half-copied version does
(nothing, to the head being served)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from headfolders import edit_metadata, install, model_file

from extractor.spec import FeatureSpec
from service.errors import HeadRequiredError, UnknownVersionError
from service.head_store import HeadStore
from service.heads import load_heads, trial_features


def statuses(store: HeadStore) -> dict[tuple[str, int | None], tuple[str, str | None, bool]]:
    return {(s.name, s.version): (s.status, s.reason, s.served) for s in store.statuses()}


def assert_no_paths(store: HeadStore, *roots: Path) -> None:
    for s in store.statuses():
        for root in roots:
            assert str(root) not in (s.reason or ""), s


def test_layout(head_dir: Path, second_head_dir: Path, base_spec: FeatureSpec,
                tmp_path: Path) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    install(second_head_dir, root / "cells" / "2")
    install(head_dir, root / "plain")  # metadata.json directly inside: unversioned
    install(head_dir, root / ".cells.tmp-77")  # train-head's temporary name: skipped
    install(head_dir, root / "cells" / "latest")  # not a version number: ignored
    install(head_dir, root / "cells" / "03")  # not a plain number: ignored
    store = HeadStore.open([], root, base_spec=base_spec)
    registry = store.current()
    assert registry.names == ["cells", "plain"]
    assert [h.version for h in registry.versions("cells")] == [1, 2]
    assert registry.get("cells").version == 2
    assert registry.get("cells", 1).metadata["kind"] == "logreg"
    assert registry.get("cells").metadata["kind"] == "svm"
    assert registry.get("plain").version is None and registry.get("plain").name == "plain"
    with pytest.raises(UnknownVersionError, match="1, 2"):
        registry.get("cells", 3)
    with pytest.raises(HeadRequiredError, match="cells, plain"):
        registry.get(None)  # two heads and no default: a guess would be wrong half the time
    assert set(statuses(store)) == {("cells", 1), ("cells", 2), ("plain", None)}
    assert all(s.status == "available" and s.served for s in store.statuses())
    assert HeadStore.open([], root, base_spec=base_spec, default="plain").current().get(
        None).name == "plain"
    # Nothing changed on disk: a scan loads nothing again.
    assert store.scan() == []
    assert store.current().get("cells") is registry.get("cells")


BROKEN = ["bad-hash", "not-head-metadata", "unreadable-json", "spec-mismatch", "no-model-file"]


def break_head(folder: Path, how: str) -> str:
    """Damage a head folder; return a fragment of the reason /heads should give."""
    if how == "bad-hash":
        with open(model_file(folder), "ab") as fh:
            fh.write(b"\0")
        return "sha-256"
    if how == "not-head-metadata":
        edit_metadata(folder, format="something-else/9")
        return "not head metadata"
    if how == "unreadable-json":
        (folder / "metadata.json").write_text('{"format": "featcache-head/1", "kind": ')
        return "not readable json"
    if how == "spec-mismatch":
        edit_metadata(folder, spec={"input_size": 224, "feature_shape": [7, 7, 512]})
        return "differs in: input_size"
    if how == "no-model-file":
        model_file(folder).unlink()
        return "no model file"
    raise AssertionError(how)


@pytest.mark.parametrize("how", BROKEN)
def test_a_broken_version_never_replaces_a_working_one(
    how: str, head_dir: Path, second_head_dir: Path, base_spec: FeatureSpec, tmp_path: Path,
) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    # settle_s=0: an incomplete-looking folder is failed at once instead of retried a while.
    store = HeadStore.open([], root, base_spec=base_spec, settle_s=0)
    serving = store.current().get("cells")
    staged = install(second_head_dir, tmp_path / "staging" / "2")
    fragment = break_head(staged, how)
    install(staged, root / "cells" / "2")

    [change] = store.scan()
    assert (change.head, change.version, change.change) == ("cells", 2, "failed")
    assert fragment in (change.reason or "").lower()
    assert store.current().get("cells") is serving  # the same object keeps serving
    assert store.current().names == ["cells"]
    status, reason, served = statuses(store)[("cells", 2)]
    assert (status, served) == ("failed", False) and fragment in (reason or "").lower()
    assert_no_paths(store, tmp_path, head_dir.parent)
    assert store.scan() == []  # unchanged: not retried, not reported again

    # Fixed in place (a fresh copy renamed over it): picked up on the next scan.
    shutil.rmtree(root / "cells" / "2")
    install(second_head_dir, root / "cells" / "2")
    [change] = store.scan()
    assert (change.version, change.change) == (2, "added")
    assert store.current().get("cells").version == 2
    assert statuses(store)[("cells", 2)] == ("available", None, True)


def test_half_copied_version_is_loading_until_complete(
    second_head_dir: Path, head_dir: Path, base_spec: FeatureSpec, tmp_path: Path,
) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    store = HeadStore.open([], root, base_spec=base_spec, settle_s=60)
    target = root / "cells" / "2"
    target.mkdir()
    # A copy that wrote metadata.json (and the head's other files, such as its guard's arrays)
    # first and is still writing the model file.
    for f in second_head_dir.iterdir():
        if f.is_file() and f.name != model_file(second_head_dir).name:
            shutil.copy(f, target)
    data = model_file(second_head_dir).read_bytes()
    (target / model_file(second_head_dir).name).write_bytes(data[: len(data) // 2])
    [change] = store.scan()
    assert (change.version, change.change) == (2, "loading")
    assert statuses(store)[("cells", 2)][0] == "loading"
    assert store.current().get("cells").version == 1
    assert store.scan() == []  # still loading: retried, reported once

    (target / model_file(second_head_dir).name).write_bytes(data)
    [change] = store.scan()
    assert (change.version, change.change) == (2, "added")
    assert store.current().get("cells").version == 2

    # A folder with nothing in it yet: loading while fresh, failed once quiet.
    (root / "empty").mkdir()
    [change] = store.scan()
    assert change.change == "loading" and "metadata.json" in (change.reason or "")
    store.settle_s = 0
    [change] = store.scan()
    assert change.change == "failed" and "incomplete" in (change.reason or "")


def test_replace_in_place_and_remove(
    head_dir: Path, second_head_dir: Path, base_spec: FeatureSpec, tmp_path: Path,
) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    store = HeadStore.open([], root, base_spec=base_spec, settle_s=0)
    old = store.current().get("cells")
    assert old.metadata["kind"] == "logreg"

    # A broken change to the served version: reported, and the previous load keeps serving.
    with open(model_file(root / "cells" / "1"), "ab") as fh:
        fh.write(b"\0")
    [change] = store.scan()
    assert change.change == "failed" and "previous load keeps serving" in (change.reason or "")
    assert store.current().get("cells") is old
    status, _, served = statuses(store)[("cells", 1)]
    assert (status, served) == ("failed", True)

    # Replaced whole (renamed over): the new content serves; a request holding the old object
    # still finishes on it.
    shutil.rmtree(root / "cells" / "1")
    install(second_head_dir, root / "cells" / "1")
    [change] = store.scan()
    assert change.change == "replaced"
    new = store.current().get("cells")
    assert new is not old and new.metadata["kind"] == "svm"
    assert old.predict_proba(trial_features(old)).shape == (1, 2)

    shutil.rmtree(root / "cells")
    [change] = store.scan()
    assert (change.head, change.version, change.change) == ("cells", 1, "removed")
    assert store.current().names == [] and store.statuses() == ()


def test_fixed_heads_keep_their_name_and_the_default(
    head_dir: Path, second_head_dir: Path, base_spec: FeatureSpec, tmp_path: Path,
) -> None:
    root = tmp_path / "heads"
    install(second_head_dir, root / head_dir.name / "1")  # same name as the --head head
    install(second_head_dir, root / "other" / "4")
    fixed = load_heads([head_dir])
    store = HeadStore.open(fixed, root, base_spec=base_spec, settle_s=0)
    registry = store.current()
    assert registry.names == [head_dir.name, "other"]
    assert registry.get(None) is fixed[0]  # the first --head stays the default
    assert registry.get(head_dir.name) is fixed[0]
    status, reason, served = statuses(store)[(head_dir.name, 1)]
    assert status == "failed" and "--head" in (reason or "") and not served
    assert statuses(store)[(head_dir.name, None)] == ("available", None, True)


def test_files_changing_while_read_never_unserve(
    head_dir: Path, second_head_dir: Path, base_spec: FeatureSpec, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A version folder that cannot be read for a moment (a file replaced as we list it) keeps
    serving, and a new one that changes while checked is retried, not failed."""
    from service import head_store

    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    store = HeadStore.open([], root, base_spec=base_spec, settle_s=60)
    serving = store.current().get("cells")

    real_fingerprint = head_store._fingerprint

    def vanishing(path: Path):  # type: ignore[no-untyped-def]
        if path.name == "1":
            raise FileNotFoundError(path / "model.skops")
        return real_fingerprint(path)

    monkeypatch.setattr(head_store, "_fingerprint", vanishing)
    assert store.scan() == []
    assert store.current().get("cells") is serving

    install(second_head_dir, root / "cells" / "2")

    def gone(path: Path) -> None:
        raise FileNotFoundError(path / "model.skops")

    monkeypatch.setattr(head_store, "_completeness", gone)
    [change] = store.scan()
    assert (change.version, change.change) == (2, "loading")
    assert "changed while" in (change.reason or "")
    monkeypatch.undo()
    [change] = store.scan()
    assert (change.version, change.change) == (2, "added")
    assert store.current().get("cells", 1) is serving
