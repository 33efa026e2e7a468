"""The research loop on a (fake, Ray-less) cluster: placement recorded, a lost node costs one retry."""

from __future__ import annotations

import pytest

from orchestrator.planning.types import Target
from orchestrator.registry import Registry, RunSettings
from orchestrator.research import Secrets, start_run
from orchestrator.sandbox.config import SandboxConfig
from tests.cluster.fakes import FakeClusterPool

CONFIG = SandboxConfig(timeout_s=120, cpus=1)


@pytest.fixture
def fake_cluster(monkeypatch):
    import orchestrator.cluster.pool as pool_module

    FakeClusterPool.instances.clear()
    monkeypatch.setattr(pool_module, "ClusterPool", FakeClusterPool)
    return FakeClusterPool


def _run(tmp_path, name: str, **kw) -> Registry:
    settings = RunSettings(goal="iris classifier", dataset="iris", seeds=(0,), max_candidates=kw.pop("n", 3),
                           time_budget_s=600.0, target=Target(metric="accuracy", threshold=None), name=name, **kw)
    def no_local_backend():
        raise AssertionError("a cluster run must not open this machine's Docker backend")

    assert start_run(settings, root=tmp_path, config=CONFIG, secrets=Secrets(), backend_factory=no_local_backend,
                     cluster="ray://fake:10001") == 0
    return Registry.open(tmp_path / name, readonly=True)


def _placements(registry: Registry) -> list[tuple[str, str, int]]:
    return [(e.payload["candidate"], e.payload["node"], e.payload["attempt"])
            for e in registry.events("candidate_placed")]


def test_candidates_spread_over_the_nodes_and_the_registry_names_each_ones_node(tmp_path, fake_cluster):
    with _run(tmp_path, "spread") as registry:
        records = registry.candidates()
        assert [r.status for r in records] == ["passed"] * 3
        placed = _placements(registry)
        assert {node for _, node, _ in placed} == {"head/aaaaaaaa", "node2/bbbbbbbb"}
        assert [c for c, _, _ in placed] == ["c001", "c002", "c003"]
        assert registry.events("cluster_node_ready")
    report = (tmp_path / "spread" / "report.md").read_text()
    assert "node2/bbbbbbbb" in report and "head/aaaaaaaa" in report


def test_a_node_lost_mid_candidate_is_retried_once_on_another_node(tmp_path, fake_cluster, monkeypatch):
    monkeypatch.setattr(FakeClusterPool, "dying", frozenset({"node2/bbbbbbbb"}))
    with _run(tmp_path, "retry") as registry:
        records = registry.candidates()
        assert [r.status for r in records] == ["passed"] * 3, [r.failure for r in records]
        lost = registry.events("candidate_node_lost")
        assert len(lost) == 1 and lost[0].payload["node"] == "node2/bbbbbbbb"
        assert "retrying on another node" in lost[0].message
        cid = lost[0].payload["candidate"]
        tries = [(node, attempt) for c, node, attempt in _placements(registry) if c == cid]
        assert tries == [("node2/bbbbbbbb", 1), ("head/aaaaaaaa", 2)]
        # the lost node gets no further work
        later = [node for c, node, _ in _placements(registry) if c > cid]
        assert later and set(later) == {"head/aaaaaaaa"}
        assert registry.run_info().status == "finished"
    assert fake_cluster.instances[-1].lost_nodes == ["node2/bbbbbbbb"]


def test_a_candidate_whose_retry_node_dies_too_is_recorded_crashed_naming_the_node(tmp_path, fake_cluster, monkeypatch):
    monkeypatch.setattr(FakeClusterPool, "dying", frozenset(FakeClusterPool.nodes_spec))
    with _run(tmp_path, "crash", n=1) as registry:
        (record,) = registry.candidates()
        assert record.status == "failed"
        assert record.failure.kind.value == "crashed"
        assert "was lost mid-candidate" in record.failure.message and "after 2 tries" in record.failure.message
        assert any(node in record.failure.message for node in FakeClusterPool.nodes_spec)
        assert len(registry.events("candidate_node_lost")) == 2
        assert registry.run_info().status == "finished"  # the run went on to its budget


def test_cluster_and_launcher_together_are_refused(tmp_path, capsys):
    from orchestrator.cli import main

    code = main(["run", "--cluster", "ray://h:10001", "--launcher", f"ipc://{tmp_path}/l.sock",
                 "--runs-dir", str(tmp_path)])
    assert code == 2
    assert "--cluster and --launcher cannot go together" in capsys.readouterr().err
