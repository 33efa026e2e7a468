"""The settings of one research run: what ``researcher resume`` needs to carry on.

They are stored in the registry and in ``run.json``. Secrets never are: there is
no field for an API key, ``extra`` rejects keys that look like credentials, and
user:password or query strings in the LLM base URL are removed before storing.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from orchestrator.exceptions import UsageError
from orchestrator.planning.types import Target

ExtraValue = str | int | float | bool | None

#: Keys of ``extra`` that are refused because they would store a credential.
_SECRET_KEY = re.compile(r"key|token|secret|passw|credential|auth", re.IGNORECASE)


class RunSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything needed to resume a run (never an API key)."""

    goal: str  # the user's goal sentence
    name: str = ""  # run directory name; "" = run_<UTC timestamp>
    dataset: str = "digits"  # dataset name or file
    data_dir: str | None = None  # where local datasets live
    target: Target = Target()  # primary metric, its direction and stop threshold
    seeds: tuple[int, ...] = (0,)  # training seeds of every candidate
    max_candidates: Annotated[int, Meta(ge=1)] | None = None  # candidate budget
    time_budget_s: Annotated[float, Meta(ge=0.0)] | None = None  # wall-clock budget
    planner: Literal["offline", "llm"] = "offline"
    search_seed: int = 0  # seed of the planner's sampler
    llm_base_url: str | None = None  # OpenAI-compatible endpoint, credentials removed
    llm_model: str | None = None
    device: str = "cpu"
    parallel: Annotated[int, Meta(ge=1)] = 1  # candidates evaluated at once
    runtime: str = "docker"  # sandbox backend
    keep: bool = False  # keep scratch files after the run
    extra: dict[str, ExtraValue] = {}  # further loop settings (no secrets)

    def __post_init__(self) -> None:
        secrets = sorted(k for k in self.extra if _SECRET_KEY.search(k))
        if secrets:
            raise UsageError(f"run settings must not store credentials; remove {secrets} from "
                             "extra (API keys are read from flags or the environment on resume)")

    @property
    def metric(self) -> str:
        """The primary metric, e.g. ``accuracy``."""
        return self.target.metric


def redact_url(url: str | None) -> str | None:
    """``url`` without user:password, query string or fragment (where keys hide); None stays None."""
    if not url:
        return url
    from orchestrator.llm.urls import redact_url as redact  # one redaction for the whole project

    return redact(url)


def sanitised(settings: RunSettings) -> RunSettings:
    """``settings`` with the LLM URL redacted, ready to store."""
    return msgspec.structs.replace(settings, llm_base_url=redact_url(settings.llm_base_url))


def encode_settings(settings: RunSettings) -> bytes:
    """Settings as JSON bytes."""
    return msgspec.json.encode(settings)


def decode_settings(data: bytes | str) -> RunSettings:
    """Settings from JSON; UsageError when they are not valid run settings."""
    try:
        return msgspec.json.decode(data, type=RunSettings)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UsageError(f"stored run settings are invalid ({exc}); was the run made by another "
                         "version of researcher?") from exc
