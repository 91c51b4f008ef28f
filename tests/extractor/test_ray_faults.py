"""Faults on a real Ray cluster of three nodes on this machine (issue 17, item 5): a worker node
removed in the middle of `extract --engine ray`, and an actor whose batch raises. Either way the
run, or the same command run again, leaves the rows of a local extraction: none lost, none
doubled, no shard half-written. Fake features keep it fast; the faults themselves are real."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import fake_features, make_folder, opts
from ray_faults import RaisesOnce, StallsOnWorkerNode, ship

from extractor import open_cache, ray_engine
from extractor.cache import shards as sh
from extractor.runner import ExtractError, Summary, run

pytestmark = pytest.mark.slow


def _equal_to_local(folder: Path, out: Path, tmp_path: Path) -> None:
    local = tmp_path / "local.h5"
    run(opts(folder, local), features_fn=fake_features)
    with open_cache(out) as r, open_cache(local) as lo:
        assert r.paths == lo.paths and len(set(r.paths)) == len(r) == 10  # none lost or doubled
        assert r.sha256 == lo.sha256 and r.labels.tolist() == lo.labels.tolist()
        names = r.spec.stored_names()
        ours, theirs = r.read_named(names), lo.read_named(names)
        for name in names:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    sdir = sh.shards_dir(out)
    assert [p.name for p in sdir.iterdir() if p.name.startswith(".")] == []  # no half shard
    for shard in sh.load_shards(sdir, None):  # every shard complete and readable
        assert len(shard.paths) == len(set(shard.paths))


def _extract(folder: Path, out: Path, features_fn: Any) -> Summary:
    return ray_engine.run(opts(folder, out, checkpoint_every=2, batch_size=2),
                          ray_engine.RayOptions(), features_fn=features_fn)


def test_a_worker_node_removed_mid_run(ray_cluster: Any, tmp_path: Path) -> None:
    ship()
    folder = make_folder(tmp_path / "imgs", per_class=5)
    out, marker = tmp_path / "ray.h5", tmp_path / "stalled-on"
    stalls = StallsOnWorkerNode(marker, ray_cluster.head_node.node_id)
    result: list[Summary | BaseException] = []

    def extract() -> None:
        try:
            result.append(_extract(folder, out, stalls))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=extract, daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "no batch ran on a worker node"
    time.sleep(0.5)  # the marker is written: its node is now stuck inside that batch
    victim = next(n for n in ray_cluster.worker_nodes if n.node_id == marker.read_text())
    ray_cluster.remove_node(victim)
    thread.join(timeout=100)
    assert not thread.is_alive() and len(result) == 1
    if isinstance(result[0], BaseException):
        # Ray gave up on the batch: the shards written so far are kept; a re-run finishes.
        assert isinstance(result[0], ExtractError), result[0]
        again = _extract(folder, out, fake_features)
        assert again.already_cached + again.extracted + again.duplicates == 10
    else:
        assert result[0].total == 10  # Ray restarted the actor elsewhere and retried the batch
    _equal_to_local(folder, out, tmp_path)


def test_an_actor_that_raises_on_one_batch(ray_cluster: Any, tmp_path: Path) -> None:
    ship()
    folder = make_folder(tmp_path / "imgs", per_class=5)
    out, marker = tmp_path / "ray.h5", tmp_path / "raised"
    with pytest.raises(ExtractError, match="run the same command again") as err:
        _extract(folder, out, RaisesOnce(marker))
    assert "injected fault" in str(err.value) and marker.exists()
    assert not out.exists()  # nothing merged from a failed run ...
    kept = {p for s in sh.load_shards(sh.shards_dir(out), None) for p in s.paths}
    assert len(kept) < 10  # ... and the failed batch's files have no shard
    again = _extract(folder, out, fake_features)
    assert again.already_cached == len(kept) and again.extracted == 10 - len(kept)
    _equal_to_local(folder, out, tmp_path)
