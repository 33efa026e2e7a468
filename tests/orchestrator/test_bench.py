"""`researcher bench` runs the same set three ways and reports figures (not timed assertions)."""

from orchestrator.bench import bench
from orchestrator.sandbox.fake import SubprocessBackend


def test_bench_reports_every_figure_for_each_mode():
    report = bench(count=2, epochs=1, parallel=2, backend_factory=SubprocessBackend,
                   image="unused-by-the-subprocess-backend", memory="1g", progress=lambda line: None)
    assert set(report["modes"]) == {"direct", "sandbox_cold", "sandbox_warm_parallel1", "sandbox_warm_parallel2"}
    for name, mode in report["modes"].items():
        assert mode["failures"] == [], name
        assert mode["wall_s"] > 0 and mode["candidates_per_min"] > 0
    assert report["overhead_ratio"] > 0 and report["parallel_speedup"] > 0
    assert report["handoff_ms_p50"] is not None and report["handoff_ms_p95"] >= report["handoff_ms_p50"]
    # the same candidates, trained the same way, reach the same accuracy in and out of the worker
    accuracies = report["accuracy_mean"]
    assert abs(accuracies["direct"] - accuracies["sandbox_warm_parallel1"]) < 1e-6
