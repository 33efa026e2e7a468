"""The settings of one research run: what ``researcher resume`` needs to carry on.

They are stored in the registry and in ``run.json``, typed: the sandbox's
``SandboxConfig`` (less the host-local jobs directory, given again at resume) and
the LLM planner's ``LLMConfig``. Secrets never are: there is no field for an API
key, and user:password or query strings in the LLM base URL are removed before
storing. Settings written by older versions (loose ``extra`` dict) are migrated on
read (``migrate``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from evaluator.datasets import DEFAULT_DATASET
from orchestrator.exceptions import UsageError
from orchestrator.planning.types import MAX_SEEDS, Target
from orchestrator.sandbox.config import SandboxConfig

#: Defaults of the LLM client (``LLMClient``/``RetryPolicy``), stored with each LLM run.
DEFAULT_LLM_TIMEOUT_S = 120.0
DEFAULT_LLM_MAX_RETRIES = 4
DEFAULT_LLM_RETRY_BACKOFF_S = 0.5


class LLMConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The LLM planner's endpoint and how it is asked (never its API key)."""

    base_url: str  # OpenAI-compatible endpoint, credentials removed before storing
    model: str = "default"  # model name the server knows
    mode: Literal["config", "source"] = "config"  # config: a layer config; source: an nn.Module
    timeout_s: Annotated[float, Meta(gt=0.0)] = DEFAULT_LLM_TIMEOUT_S  # per request
    max_retries: Annotated[int, Meta(ge=0)] = DEFAULT_LLM_MAX_RETRIES  # retries after the first attempt
    retry_backoff_s: Annotated[float, Meta(ge=0.0)] = DEFAULT_LLM_RETRY_BACKOFF_S  # base of the exponential backoff


class RunSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything needed to resume a run (never an API key, never a host-local path but data_dir)."""

    goal: str  # the user's goal sentence
    name: str = ""  # run directory name; "" = run_<UTC timestamp>
    dataset: str = DEFAULT_DATASET  # dataset name or file
    dataset_from: Literal["flag", "goal", "default"] = "flag"  # where the dataset choice came from
    data_dir: str | None = None  # where local datasets live
    target: Target = Target()  # primary metric, its direction and stop threshold
    seeds: Annotated[tuple[Annotated[int, Meta(ge=0)], ...], Meta(min_length=1, max_length=MAX_SEEDS)] = (0,)
    max_candidates: Annotated[int, Meta(ge=1)] | None = None  # candidate budget
    time_budget_s: Annotated[float, Meta(ge=0.0)] | None = None  # wall-clock budget
    search_seed: int = 0  # seed of the planner's sampler
    llm: LLMConfig | None = None  # the LLM planner; None: the offline planner
    parallel: Annotated[int, Meta(ge=1)] = 1  # candidates evaluated at once
    sandbox: SandboxConfig = SandboxConfig()  # the sandboxes' image, caps, container runtime, device, GPUs
    keep: bool = False  # keep scratch files after the run

    @property
    def metric(self) -> str:
        """The primary metric, e.g. ``accuracy``."""
        return self.target.metric

    @property
    def planner(self) -> Literal["offline", "llm"]:
        """Which planner proposes: ``llm`` when LLM settings are given."""
        return "offline" if self.llm is None else "llm"

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda``: where candidates train (the sandbox's)."""
        return self.sandbox.device


def redact_url(url: str | None) -> str | None:
    """``url`` without user:password, query string or fragment (where keys hide); None stays None."""
    if not url:
        return url
    from orchestrator.llm.urls import redact_url as redact  # one redaction for the whole project

    return redact(url)


def sanitised(settings: RunSettings) -> RunSettings:
    """``settings`` ready to store: the LLM URL redacted, the host-local jobs directory dropped."""
    replace = msgspec.structs.replace
    llm = settings.llm and replace(settings.llm, base_url=redact_url(settings.llm.base_url) or "")
    return replace(settings, llm=llm, sandbox=replace(settings.sandbox, jobs_dir=None))


#: What resume assumed when a settings file of format 1 (``extra``) lacked a sandbox key.
_V1_SANDBOX_DEFAULTS = {"image": SandboxConfig().image, "memory": "2g", "cpus": 1.0, "pids": 256,
                        "timeout_s": 900.0, "container_runtime": "runc", "gpus": ""}
_V1_ONLY = ("extra", "runtime", "planner", "device", "llm_base_url", "llm_model")


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Settings of format 1 (loose ``extra``, flat LLM and runtime fields) as the typed format; others as they are.

    Format 1 kept the sandbox in ``extra`` (``container_runtime`` runc/runsc; the top-level
    ``runtime`` was a copy of it), the LLM endpoint in ``llm_base_url``/``llm_model`` and its
    mode and timeout in ``extra``. Unknown ``extra`` keys are dropped.
    """
    if not any(key in data for key in _V1_ONLY):
        return data
    extra = data.get("extra") or {}
    new = {k: v for k, v in data.items() if k not in _V1_ONLY}
    sandbox = {**_V1_SANDBOX_DEFAULTS, **{k: extra[k] for k in _V1_SANDBOX_DEFAULTS if k in extra}}
    if "container_runtime" not in extra and data.get("runtime") in ("runc", "runsc"):
        sandbox["container_runtime"] = data["runtime"]
    sandbox["gpus"] = [g for g in str(sandbox["gpus"] or "").split(",") if g]
    new["sandbox"] = {**sandbox, "device": data.get("device", "cpu")}
    if "dataset_from" in extra:
        new["dataset_from"] = extra["dataset_from"]
    if data.get("planner") == "llm" or (data.get("planner") is None and data.get("llm_base_url")):
        new["llm"] = {"base_url": data.get("llm_base_url") or "", "model": data.get("llm_model") or "default",
                      "mode": extra.get("llm_mode", "config"),
                      "timeout_s": extra.get("llm_timeout", DEFAULT_LLM_TIMEOUT_S),
                      "max_retries": extra.get("llm_max_retries", DEFAULT_LLM_MAX_RETRIES),
                      "retry_backoff_s": extra.get("llm_retry_backoff", DEFAULT_LLM_RETRY_BACKOFF_S)}
    return new


def decode_settings(data: bytes | str) -> RunSettings:
    """Settings from JSON (older formats migrated); UsageError when they are not valid run settings."""
    try:
        raw = msgspec.json.decode(data)
        if not isinstance(raw, dict):
            raise msgspec.ValidationError("run settings must be a JSON object")
        return msgspec.convert(migrate(raw), type=RunSettings)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UsageError(f"stored run settings are invalid ({exc}); was the run made by another "
                         "version of researcher?") from exc
