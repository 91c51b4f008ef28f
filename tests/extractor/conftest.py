"""Ray for the engine's tests: one small local Ray, or a cluster of several nodes.

Only one Ray runtime lives in a process, so `local_ray` starts one when none is running (and
the session stops it), and `ray_cluster` stops it before starting its own, and its own after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def _ray_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Ray's files under a temp dir, without a token under the home folder; Ray stopped last."""
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # else Ray writes a token under the home folder
    yield tmp_path_factory.mktemp("ray")
    import ray

    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture
def local_ray(_ray_home: Path) -> Any:
    """One small local Ray: 2 CPUs, no dashboard, files under a temp dir (kept between tests)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 _node_ip_address="127.0.0.1", _temp_dir=str(_ray_home), log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    return ray


@pytest.fixture
def ray_cluster(_ray_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Ray cluster of three nodes on this machine (a head and two workers, 1 CPU each), the
    driver connected to it. Yields `ray.cluster_utils.Cluster`."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    monkeypatch.setenv("RAY_TMPDIR", str(_ray_home))  # where a cluster notes its address
    node: dict[str, Any] = dict(num_cpus=1, object_store_memory=80 * 2**20,
                                node_ip_address="127.0.0.1")
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        **node, include_dashboard=False))
    try:
        for _ in range(2):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
