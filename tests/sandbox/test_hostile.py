"""Hostile models against the real Docker sandbox: each ends as the right Failure, in time.

One container per test, run one at a time (the CI machine has two cores). Each
test also proves that the host outlived the model: the job ended within its
limit, the orchestrator never stalled and did not grow, the engine still
answers, and no sandbox container is left behind. The benign control model
runs in test_isolation.py (where the engine-side settings are checked).
"""

from __future__ import annotations

import pytest

from tests.sandbox.harness import assert_contained

pytestmark = pytest.mark.docker

HANG_S = 8.0  # limit for models that never finish on their own
QUICK_S = 60.0  # limit for models that end by themselves (the assertion is on kind, not time)


CASES = [
    ("spin_forward", HANG_S, "timeout", "8 s limit"),
    ("sleep_import", HANG_S, "timeout", "8 s limit"),
    ("segfault", QUICK_S, "crashed", "SIGSEGV"),
    ("exit_forward", QUICK_S, "crashed", "code 17"),
    ("forge_garbage", QUICK_S, "protocol_violation", "undecodable"),
    ("forge_oversize", QUICK_S, "protocol_violation", "byte limit"),
    ("nan_output", QUICK_S, "non_finite", "NaN"),
    ("wrong_shape", QUICK_S, "shape_mismatch", "(2, 7)"),
]


@pytest.mark.parametrize(("model", "limit_s", "kind", "says"), CASES, ids=[case[0] for case in CASES])
def test_hostile_model_fails_with_the_right_kind_and_the_host_survives(sandbox_run, model, limit_s, kind, says):
    outcome = sandbox_run(model, timeout_s=limit_s)

    failure = outcome.result.failure
    assert failure is not None, f"{model} passed; expected {kind}"
    assert failure.kind.value == kind, f"{model}: {failure.kind.value} ({failure.message[:300]}); logs:\n{outcome.result.logs[-800:]}"
    assert says in failure.message, f"{model}: message does not say {says!r}: {failure.message[:300]}"
    assert outcome.result.ready is not None, f"{model}: the worker never said Ready"
    if kind == "timeout":  # killed by the host at the limit, not before
        assert outcome.job_s >= limit_s
        assert outcome.result.exit is not None and outcome.result.exit.exit_code == 137
    assert_contained(outcome, limit_s=limit_s)


def test_memory_bomb_is_killed_at_the_cap(sandbox_run):
    outcome = sandbox_run("memory_bomb", timeout_s=QUICK_S, memory="512m")

    assert outcome.kind == "out_of_memory", outcome.result.failure
    assert outcome.result.exit is not None and outcome.result.exit.oom_killed
    cap = 512 << 20
    peak = outcome.watch.peak_memory_bytes
    assert 0.8 * cap <= peak <= cap, f"memory cgroup peak {peak >> 20} MiB, cap {cap >> 20} MiB"
    assert_contained(outcome, limit_s=QUICK_S)


def test_fork_bomb_is_held_at_the_pids_cap_and_killed_at_the_limit(sandbox_run):
    # 2g so that the pids cap, not the memory cap, is what stops 256 copies of a torch process
    outcome = sandbox_run("fork_bomb", timeout_s=HANG_S, memory="2g")

    assert outcome.kind == "timeout", outcome.result.failure
    assert 200 <= outcome.watch.max_pids <= 256, f"{outcome.watch.max_pids} tasks seen (cap 256)"
    assert_contained(outcome, limit_s=HANG_S)


def test_output_flood_is_capped_on_the_host(sandbox_run):
    outcome = sandbox_run("output_flood", timeout_s=HANG_S)

    assert outcome.kind == "timeout"
    cap = 1 << 20  # SandboxConfig.log_max_size = "1m", one file
    log = outcome.watch
    assert log.log_path, "the engine reported no LogPath for the container"
    assert log.max_log_bytes > 100_000, f"the flood never reached the log ({log.max_log_bytes} bytes): did it run?"
    # json-file rotates once a write crosses max-size: allow one 16 KiB entry over, JSON-escaped
    assert log.max_log_bytes <= cap + 64 * 1024, f"container log grew to {log.max_log_bytes} bytes (cap {cap})"
    assert len(outcome.result.logs) <= 2 * cap, f"the result kept {len(outcome.result.logs)} bytes of logs"
    assert_contained(outcome, limit_s=HANG_S)


def test_unix_socket_attacker_is_shrugged_off_and_the_job_still_passes(sandbox_run):
    outcome = sandbox_run("unix_socket_attack", timeout_s=QUICK_S)

    report = outcome.attack_report()
    assert "/job/worker.sock" in report, f"the attacker did not find the job socket: {sorted(report)}"
    attacked = report["/job/worker.sock"]
    assert attacked["raw"]["mb"] > 0 or attacked["raw"]["err"], attacked
    assert attacked["zmtp"]["mb"] > 0 or attacked["zmtp"]["err"], attacked
    assert outcome.kind == "passed", f"{outcome.result.failure}; logs:\n{outcome.result.logs[-800:]}"
    assert outcome.result.check is not None and outcome.result.check.output_shape == (2, 10)
    assert_contained(outcome, limit_s=QUICK_S)


def test_connection_hog_cannot_spend_the_orchestrators_file_descriptors(sandbox_run):
    outcome = sandbox_run("fd_hog", timeout_s=QUICK_S)

    held = [line for line in outcome.watch.output.splitlines() if line.startswith("HELD ")]
    assert held, f"the hog never reported:\n{outcome.watch.output[-800:]}"
    # Either the socket refuses new connections once the worker is in (HELD 0), or the
    # host drops them: what must not happen is the host holding one descriptor for each
    # (at the common `ulimit -n 1024`, libzmq then aborts the orchestrator).
    assert outcome.kind == "passed", f"{outcome.result.failure}; logs:\n{outcome.result.logs[-800:]}"
    assert_contained(outcome, limit_s=QUICK_S)


def test_forged_failure_cannot_make_the_host_keep_megabytes_of_text(sandbox_run):
    outcome = sandbox_run("forge_huge_failure", timeout_s=QUICK_S)

    failure = outcome.result.failure
    assert failure is not None, "a forged Failure ended the job as a pass"
    kept = len(failure.message) + len(failure.traceback)
    assert kept <= 16_384, f"the host kept {kept} characters of a forged Failure ({failure.kind.value})"
    assert_contained(outcome, limit_s=QUICK_S)
