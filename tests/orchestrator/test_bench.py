"""`researcher bench` runs the same set three ways and reports figures (not timed assertions)."""

from orchestrator.bench import bench
from orchestrator.sandbox.local import SubprocessBackend


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


def test_bench_profiles_where_a_cold_job_spends_its_time():
    report = bench(count=2, epochs=1, parallel=1, backend_factory=SubprocessBackend,
                   image="unused-by-the-subprocess-backend", memory="1g", progress=lambda line: None)
    prof = report["profile"]
    phases = prof["cold_phase_ms_median"]
    assert list(phases) == ["prepare", "container_start", "imports", "handoff", "train", "result", "teardown"]
    assert all(v >= 0 for v in phases.values())
    assert phases["imports"] > 100  # a fresh worker process imports torch: never free
    assert phases["train"] > 0 and prof["direct_train_ms_median"] > 0
    assert prof["fixed_cost_ms_per_container"] >= phases["imports"]
    # digits: 450 test and 135 selection inputs, 10 float32 logits each
    assert prof["logits_kb_per_seed"] == round((450 + 135) * 10 * 4 / 1024, 1)
    cpu = prof["host_cpu_s_per_candidate"]
    assert set(cpu) == {"direct", "sandbox_cold", "sandbox_warm_parallel1"} and all(v > 0 for v in cpu.values())
    assert "isolation_cpu_s_per_candidate" in prof


def test_host_cpu_seconds_counts_busy_time_only():
    from orchestrator.bench import host_cpu_seconds

    before = host_cpu_seconds()
    sum(i * i for i in range(3_000_000))  # about 0.2 s of one core
    after = host_cpu_seconds()
    assert before is not None and after is not None and after - before > 0.05
