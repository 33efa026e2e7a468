"""`researcher run --cluster` on a real two-node Ray cluster, sandboxes in the local Docker engine.

The cluster (``conftest.ray_cluster``) is a head and a second node started with
``ray start`` on this machine. A run through it must place candidates on both
nodes, record where each ran, and score exactly as a run on this machine alone
with the same seeds; hostile models end as the same recorded failures through a
node; and a node killed mid-candidate (its raylet SIGKILLed) costs a retry or a
``crashed`` record, never the run, while a node that joins mid-run is used.
"""

from __future__ import annotations

import time

import msgspec
import pytest

from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.runner import execute, new_job_id
from sandbox_image.protocol import Job
from tests.cluster.runs import (
    HOSTILE,
    RUN,
    _only_run,
    _records,
    _researcher,
    _sandboxes,
)
from tests.sandbox.test_hostile import CASES

pytestmark = [pytest.mark.docker, pytest.mark.slow]

def test_a_cluster_run_uses_both_nodes_records_them_and_scores_like_a_local_run(ray_cluster, tmp_path):
    (tmp_path / "cluster").mkdir()
    (tmp_path / "local").mkdir()
    on_cluster = _researcher(RUN + ["--max-candidates", "3", "--cluster", ray_cluster.client_address], tmp_path / "cluster")
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]
    assert "2 slot(s) on 2 node(s)" in on_cluster.stderr
    local = _researcher(RUN + ["--max-candidates", "3"], tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]

    cluster_records, events, info = _records(_only_run(tmp_path / "cluster"))
    local_records, _, _ = _records(_only_run(tmp_path / "local"))
    assert info.status == "finished"
    placed = {e.payload["candidate"]: e.payload["node"] for e in events if e.kind == "candidate_placed"}
    assert set(placed) == {r.id for r in cluster_records}
    ids = {kind: node_id[:8] for kind, node_id in ray_cluster.nodes.items()}
    assert {node.rsplit("/", 1)[1] for node in placed.values()} == set(ids.values()), placed

    # the same candidates, trained the same way, score the same wherever they ran
    assert [r.id for r in cluster_records] == [r.id for r in local_records]
    for mine, theirs in zip(cluster_records, local_records):
        assert mine.status == theirs.status == "passed", (mine.failure, theirs.failure)
        assert msgspec.to_builtins(mine.proposal) == msgspec.to_builtins(theirs.proposal)
        assert mine.summary("accuracy").per_seed == theirs.summary("accuracy").per_seed, mine.id
        assert mine.value("accuracy") == theirs.value("accuracy"), mine.id
    report = (_only_run(tmp_path / "cluster") / "report.md").read_text()
    assert "| node |" in report.replace("seconds | node", "| node |")
    assert not _sandboxes(), "a cluster run left sandbox containers behind"


@pytest.fixture(scope="module")
def cluster_pool(ray_cluster, tmp_path_factory):
    """A ClusterPool of this test process on the two-node cluster (no run data: check-only jobs)."""
    from orchestrator.cluster.pool import ClusterPool

    data = tmp_path_factory.mktemp("cluster-data")
    config = SandboxConfig(timeout_s=60, memory="512m", startup_timeout_s=90)
    with ClusterPool(ray_cluster.client_address, config, data_dir=data) as pool:
        assert pool.wait_ready(2) == 2
        yield pool


@pytest.mark.parametrize(("model", "limit_s", "kind", "says"), CASES, ids=[case[0] for case in CASES])
def test_hostile_models_fail_the_same_way_through_a_cluster_node(cluster_pool, model, limit_s, kind, says):
    job = Job(job_id=new_job_id(), source=(HOSTILE / f"{model}.py").read_text(), class_name="Net",
              input_shape=(1, 8, 8), num_classes=10)
    started = time.monotonic()
    with cluster_pool.acquire(timeout_s=120) as slot:
        slot.config = msgspec.structs.replace(slot.config, timeout_s=limit_s)
        result = execute(slot, job)
    took = time.monotonic() - started
    assert result.failure is not None, f"{model} passed through the cluster; expected {kind}"
    assert result.failure.kind.value == kind, (model, result.failure.message[:300])
    assert says in result.failure.message, result.failure.message[:300]
    assert took < limit_s + 30, f"{model}: {took:.1f} s through the cluster, limit {limit_s} s"


def test_a_memory_bomb_is_killed_at_the_cap_on_a_node(cluster_pool):
    job = Job(job_id=new_job_id(), source=(HOSTILE / "memory_bomb.py").read_text(), class_name="Net",
              input_shape=(1, 8, 8), num_classes=10)
    with cluster_pool.acquire(timeout_s=120) as slot:
        result = execute(slot, job)
    assert result.failure is not None and result.failure.kind.value == "out_of_memory", result.failure
    assert result.exit is not None and result.exit.oom_killed
