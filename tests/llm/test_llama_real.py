"""Against a real llama.cpp server (SmolLM2-135M, offline), started by scripts/llama_server.sh.

Marked ``llm``: deselect with ``-m "not llm"`` where no compiler or time is at hand. When
the server cannot start the tests FAIL, never skip: CI must not go green without them.
The first run on a machine builds llama-cpp-python from source (about 5 min on 2 cores);
later runs reuse the cached wheel and start in seconds.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.llm import FormatMode, LLMCall, LLMClient, RetryPolicy, extract_json_object
from orchestrator.planning.assembler import analyze
from orchestrator.planning.llm import LLMPlanner
from orchestrator.planning.types import PlannerFacts, Target

pytestmark = [pytest.mark.llm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "llama_server.sh"
SETUP_TIMEOUT_S = 1800  # a first run compiles llama.cpp
DIGITS = PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10, n_train=1347,
                      n_val=225, n_test=225)
MAX_TRIES = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a freshly started server; stopped after the module."""
    work = tmp_path_factory.mktemp("llama")
    pidfile, log = work / "server.pid", work / "server.log"
    options = ["--port", str(_free_port()), "--pidfile", str(pidfile), "--log", str(log)]
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start", *options], capture_output=True,
                                 text=True, timeout=SETUP_TIMEOUT_S, check=False)
        if started.returncode != 0:
            pytest.fail(f"the llama.cpp server did not start (exit {started.returncode}):\n"
                        f"{started.stderr[-4000:]}", pytrace=False)
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", "--pidfile", str(pidfile)],
                       capture_output=True, timeout=60, check=False)


@pytest.fixture
def calls() -> list[LLMCall]:
    return []


@pytest.fixture
def client(llama_url: str, calls: list[LLMCall]) -> Iterator[LLMClient]:
    with LLMClient(llama_url, "smollm2", timeout=180, recorder=calls.append,
                   retry=RetryPolicy(max_retries=2, base_s=0.5)) as c:
        yield c


def test_server_lists_its_model(client: LLMClient) -> None:
    assert client.models() == ["smollm2"]


def test_client_negotiates_a_structured_output_form(client: LLMClient,
                                                    calls: list[LLMCall]) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"], "additionalProperties": False}
    result = client.chat([{"role": "user", "content": "What is 2 + 3? Answer in JSON."}],
                         schema=schema, max_tokens=32, temperature=0.0)
    # Refused forms come first, each answered with an error; the accepted one answers 200.
    tried = [(c.response_format, c.status) for c in calls]
    assert tried[-1] == (result.response_format, 200)
    assert all(status != 200 for _, status in tried[:-1])
    assert result.response_format in (FormatMode.JSON_SCHEMA, FormatMode.JSON_OBJECT), tried
    assert client.response_format is result.response_format
    answer = extract_json_object(result.text)  # grammar-constrained: JSON of that shape
    assert isinstance(answer.get("answer"), int), result.text
    assert result.prompt_tokens > 0 and result.completion_tokens > 0


def test_planner_gets_a_valid_bounded_proposal(client: LLMClient, calls: list[LLMCall]) -> None:
    planner = LLMPlanner(client, DIGITS, Target(threshold=0.98),
                         "train a small CNN on the digits data to 98% accuracy",
                         temperature=0.3, correction_rounds=1)
    errors = []
    for _ in range(MAX_TRIES):
        proposal = planner.propose([])
        assert proposal is not None
        if proposal.params.get("origin") == "propose":
            break
        errors.append(planner.last_error)
    else:
        pytest.fail(f"no usable proposal from the model in {MAX_TRIES} tries: {errors}")
    analysis = analyze(proposal.config, input_shape=DIGITS.input_shape,
                       num_classes=DIGITS.num_classes)
    assert analysis.shapes[-1] == (DIGITS.num_classes,)
    bounds = planner.assembler.bounds
    train = proposal.train
    assert bounds.epochs[0] <= train.epochs <= bounds.epochs[1]
    assert bounds.lr[0] <= train.lr <= bounds.lr[1]
    assert bounds.batch_size[0] <= train.batch_size <= bounds.batch_size[1]
    assert all(c.messages[0].role == "system" for c in calls)
    print(json.dumps({"rationale": proposal.rationale, "attempts": len(calls),
                      "format": client.response_format.value}))


@pytest.mark.docker
def test_a_short_researcher_run_against_the_real_server(llama_url: str, docker_client, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`researcher run` end to end: real LLM proposals, real Docker sandboxes, calls recorded."""
    from orchestrator import cli
    from orchestrator.registry import Registry

    code = cli.main(["run", "--goal", "iris classifier with at least 99% accuracy", "--dataset", "iris",
                     "--llm-base-url", llama_url, "--llm-model", "smollm2", "--max-candidates", "2",
                     "--seeds", "1", "--runs-dir", str(tmp_path), "--name", "llm", "--cpus", "1"])
    assert code == 0
    with Registry.open(tmp_path / "llm", readonly=True) as registry:
        records = registry.candidates()
        calls = registry.llm_calls()
        assert registry.settings.planner == "llm" and registry.run_info().status == "finished"
    assert len(records) == 2 and all(r.status in ("passed", "failed") for r in records)
    assert calls and all(c.model == "smollm2" for c in calls)
    assert any(c.status == 200 and c.response for c in calls)  # the server answered at least once
    assert all(r.proposal.rationale for r in records)
    assert (tmp_path / "llm" / "report.html").exists()
    assert "best:" in capsys.readouterr().out or any(r.status == "failed" for r in records)
