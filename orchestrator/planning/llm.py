"""The LLM planner: an OpenAI-compatible model proposes, repairs and is kept in bounds.

``LLMPlanner`` implements the ``Planner`` protocol. Each ``propose`` asks the model for
one candidate as JSON (structured output where the server has it): in ``"config"`` mode
a layer config for the deterministic assembler, in ``"source"`` mode a full
``nn.Module`` class (the *LLM assembler*). A failed candidate goes back to the model as a
repair task, at most ``repair_budget`` times per lineage. ``LLMAssembler`` turns a reply
into a ``Proposal``: tolerant extraction, every value coerced into bounds and noted
(SmolLM2 proposes width 0 and lr 10), the config checked to fit the input. A reply that
still cannot be used gets ``correction_rounds`` follow-ups; an LLM that is down or keeps
answering nonsense costs one candidate: ``propose`` returns a safe fallback proposal
whose ``params["origin"] == "fallback"`` and ``params["llm_error"]`` say why. Nothing
the LLM does raises out of ``propose``: hostile replies (huge numbers, deep nesting,
null bytes) are refused where they are parsed, as ``LLMBadResponse`` or
``InvalidConfig``, and anything else that escapes handling one reply is caught in
``propose`` as a last resort and ends in the fallback, like an LLM that is down.

With a time budget the run ends as the offline search does: once no other candidate fits
beside it, the fallback (an ``OfflinePlanner``) proposes one final training of the best
design so far, whoever proposed it, on train + val with the time left. Until then the
fallback holds each of the LLM's candidates to the time its own would get (``fit``): a
deadline that keeps the final training's reserve, and fewer epochs for a config it can
time; the prompt gives the time left, that limit and what each earlier candidate took.
When what is left cannot train the quickest design measured (its ``no_room``), ``propose``
returns None without asking the LLM, and ``stop_reason`` says why.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from orchestrator.llm import prompts
from orchestrator.llm.client import LLMClient
from orchestrator.llm.errors import LLMBadResponse, LLMError
from orchestrator.llm.extract import PARSE_ERRORS, extract_json_object, extract_python
from orchestrator.llm.records import ChatMessage
from orchestrator.llm.schema import coerce_to_schema, compact_schema, show
from orchestrator.planning.assembler import DEFAULT_MAX_PARAMS, analyze, render
from orchestrator.planning.space import augment_choices, epoch_range
from orchestrator.planning.types import (
    OPTIMIZERS,
    SCHEDULES,
    SPATIAL_LAYERS,
    BatchNorm,
    Conv2d,
    PlannerFacts,
    Dropout,
    GlobalAvgPool,
    InvalidConfig,
    Linear,
    MaxPool,
    ModelConfig,
    Outcome,
    Planner,
    Proposal,
    ReLU,
    Target,
    model_config_json_schema,
    parse_model_config,
    parse_train_spec,
)
from sandbox_image.protocol import FailureKind, TrainSpec

Mode = Literal["config", "source"]

#: Failures a model change can fix; the others are the sandbox's or an attack.
REPAIRABLE = frozenset(FailureKind) - {FailureKind.SANDBOX_UNAVAILABLE,
                                       FailureKind.PROTOCOL_VIOLATION}
_WIDTH_FIELDS = ("out_channels", "out_features", "channels")
_MAX_SOURCE_CHARS = 100_000
_MAX_BOUNDED_CHARS = 600  # of the notes on what was bounded, appended to the rationale
_SOURCE_TASK = (
    "Write one complete PyTorch model. The JSON field python holds the whole module: imports "
    "(torch, torch.nn, torch.nn.functional), helper classes if any, and one nn.Module class "
    "named class_name whose __init__ takes no required arguments and whose forward(x) maps a "
    "batch x of shape (B, {shape}) to logits of shape (B, {k}).")
_CONFIG_TASK = (
    "Design the hidden layers of a classifier for inputs of shape ({shape}) as a list of "
    "layers; the final linear layer to {k} classes is added for you, do not add it.")


@dataclass(frozen=True)
class TrainBounds:
    """Ranges the planner lets the LLM choose training settings in (tighter than TrainSpec's).

    The recipe's knobs are the offline planner's: augmentation (images only, and flips only
    where the dataset allows them), schedule with warm-up, SGD's Nesterov momentum, label
    smoothing and flip test-time augmentation. Seeds, the flip rule and the time budget are
    the run's, never the LLM's: the schema does not offer them.
    """

    epochs: tuple[int, int] = (1, 50)
    batch_size: tuple[int, int] = (8, 512)
    lr: tuple[float, float] = (1e-5, 0.2)  # sgd with OneCycle peaks near 0.2, adamw near 3e-3
    weight_decay: tuple[float, float] = (0.0, 0.1)
    label_smoothing: tuple[float, float] = (0.0, 0.3)
    max_warmup_epochs: float = 5.0  # and below the fewest epochs allowed
    min_width: int = 8  # channels/features below this are raised to it

    def schema(self, defaults: TrainSpec, facts: PlannerFacts | None = None) -> dict[str, Any]:
        """JSON schema of the settings the LLM may choose, within these bounds, for ``facts``."""
        def num(kind: str, bounds: tuple[float, float], default: float) -> dict[str, Any]:
            default = min(max(default, bounds[0]), bounds[1])
            return {"type": kind, "minimum": bounds[0], "maximum": bounds[1], "default": default}
        epochs = min(max(defaults.epochs, self.epochs[0]), self.epochs[1])
        props: dict[str, Any] = {
            "epochs": num("integer", self.epochs, epochs),
            "batch_size": num("integer", self.batch_size, defaults.batch_size),
            "lr": num("number", self.lr, defaults.lr),
            "optimizer": {"enum": list(OPTIMIZERS), "default": defaults.optimizer},
            "weight_decay": num("number", self.weight_decay, defaults.weight_decay),
            "nesterov": {"type": "boolean", "default": defaults.nesterov,
                         "description": "Nesterov momentum; with optimizer sgd only"},
            "schedule": {"enum": list(SCHEDULES), "default": defaults.schedule,
                         "description": "lr schedule over the epochs; lr is its peak"},
            "label_smoothing": num("number", self.label_smoothing, defaults.label_smoothing),
        }
        warmup = min(self.max_warmup_epochs, float(self.epochs[0] - 1))
        if warmup > 0:
            props["warmup_epochs"] = {
                **num("number", (0.0, warmup), defaults.warmup_epochs),
                "description": "linear lr warm-up of constant and cosine (onecycle has its own)"}
        props |= _augment_schema(defaults, facts)
        return {"type": "object", "properties": props,
                "required": ["epochs", "batch_size", "lr", "optimizer"],
                "additionalProperties": False}


def _augment_schema(defaults: TrainSpec, facts: PlannerFacts | None) -> dict[str, Any]:
    """``augment`` (and ``tta_flip`` where flips keep labels) for image data; nothing for tables."""
    if facts is None or not facts.is_image:
        return {}
    from evaluator.augment import flips_preserve_labels  # the rule the loop applies

    flips = flips_preserve_labels(facts.name)
    choices = list(augment_choices(facts, flips))
    rule = "flips keep this dataset's labels" if flips else "never flipped: it would change labels"
    props: dict[str, Any] = {"augment": {
        "enum": choices, "default": defaults.augment if defaults.augment in choices else "none",
        "description": f"label-preserving training augmentation ({rule})"}}
    if flips:
        props["tta_flip"] = {"type": "boolean", "default": defaults.tta_flip,
                             "description": "average each test image's logits with its mirror's"}
    return props


def default_config(facts: PlannerFacts, variant: int = 0) -> ModelConfig:
    """A known-good small model for the data; ``variant`` varies its width."""
    width = (32, 64, 16, 128)[variant % 4]
    if facts.is_image:
        pool = [MaxPool(kernel=2)] if min(facts.input_shape[1:]) >= 4 else []
        layers = [Conv2d(out_channels=width), BatchNorm(), ReLU(), *pool,
                  Conv2d(out_channels=2 * width), BatchNorm(), ReLU(), GlobalAvgPool(),
                  Dropout(p=0.2)]
    else:
        layers = [Linear(out_features=4 * width), ReLU(), Dropout(p=0.1),
                  Linear(out_features=2 * width), ReLU()]
    return ModelConfig(layers=tuple(layers), name=f"default{variant}")


class LLMAssembler:
    """Turns a model's reply into a validated, bounded ``Proposal`` (config or source mode)."""

    def __init__(self, facts: PlannerFacts, *, mode: Mode = "config",
                 train_defaults: TrainSpec = TrainSpec(), bounds: TrainBounds | None = None,
                 max_params: int = DEFAULT_MAX_PARAMS) -> None:
        if mode not in ("config", "source"):
            raise ValueError(f"mode must be 'config' or 'source', got {mode!r}")
        self.facts, self.mode, self.max_params = facts, mode, max_params
        self.train_defaults = train_defaults
        self.bounds = bounds or TrainBounds(epochs=epoch_range(facts))
        self.schema = self._schema()

    def _schema(self) -> dict[str, Any]:
        train = self.bounds.schema(self.train_defaults, self.facts)
        props: dict[str, Any] = {"rationale": {"type": "string", "maxLength": 400}}
        if self.mode == "source":
            props |= {"class_name": {"type": "string"}, "python": {"type": "string"}}
            return {"type": "object", "properties": {**props, "train": train},
                    "required": ["rationale", "class_name", "python", "train"],
                    "additionalProperties": False}
        config = _config_schema(self.facts, self.bounds.min_width)
        return {"type": "object",
                "properties": {**props, "config": {"$ref": config["$ref"]}, "train": train},
                "required": ["rationale", "config", "train"], "additionalProperties": False,
                "$defs": config["$defs"]}

    def system_prompt(self) -> str:
        """What the model is asked to do, the allowed values, and a worked example."""
        train_text = prompts.describe_object(self.schema["properties"]["train"], self.schema)
        config = default_config(self.facts)
        example: dict[str, Any] = {"rationale": "A small, regularised baseline to start from."}
        k, shape = self.facts.num_classes, ", ".join(map(str, self.facts.input_shape))
        if self.mode == "source":
            task, layers = _SOURCE_TASK.format(shape=shape, k=k), ""
            example |= {"class_name": "Net", "python": render(
                config, input_shape=self.facts.input_shape, num_classes=k)}
        else:
            task = _CONFIG_TASK.format(shape=shape, k=k)
            layers = prompts.describe_layers(self.schema["properties"]["config"], self.schema)
            layers_json = [{k: v for k, v in layer.items() if v is not None}
                           for layer in msgspec.to_builtins(config.layers)]
            example["config"] = {"layers": layers_json}
        example["train"] = {"epochs": self.schema["properties"]["train"]["properties"]["epochs"]
                            ["default"], "batch_size": 64, "lr": 0.001, "optimizer": "adamw"}
        return prompts.system_prompt(task, layers, train_text, example)

    def build(self, text: str) -> tuple[Proposal, list[str]]:
        """The proposal in ``text`` and notes of what was bounded; LLMBadResponse/InvalidConfig."""
        raw = extract_json_object(text)
        if self.mode == "config" and "config" not in raw and "layers" in raw:
            raw["config"] = {"layers": raw.pop("layers")}  # a common slip of small models
        data, notes = coerce_to_schema(raw, self.schema)
        train = self.train_spec(data.get("train"))
        rationale = str(data.get("rationale", "")).strip()
        if self.mode == "source":
            source = extract_python(text)
            class_name = self._class_name(source, data.get("class_name"), notes)
            return Proposal(source=source, class_name=class_name, train=train,
                            rationale=rationale), notes
        config = parse_model_config({"name": "llm", **(data.get("config") or {"layers": []})})
        if not config.layers:
            raise InvalidConfig("the config has no layers; give at least one hidden layer")
        analyze(config, input_shape=self.facts.input_shape, num_classes=self.facts.num_classes,
                max_params=self.max_params)
        return Proposal(config=config, train=train, rationale=rationale), notes

    def train_spec(self, fields: Any = None) -> TrainSpec:
        """The run's train defaults with the (already bounded) fields the LLM chose."""
        props = self.schema["properties"]["train"]["properties"]
        chosen = {k: spec["default"] for k, spec in props.items() if "default" in spec}
        chosen |= fields if isinstance(fields, dict) else {}
        return parse_train_spec(msgspec.structs.replace(self.train_defaults, **chosen))

    def _class_name(self, source: str, wanted: Any, notes: list[str]) -> str:
        """The class to instantiate; the one the model named, else its only/last class."""
        if len(source) > _MAX_SOURCE_CHARS:
            raise LLMBadResponse(f"the source is {len(source):,} characters; keep it under "
                                 f"{_MAX_SOURCE_CHARS:,}")
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise LLMBadResponse(f"the python field does not parse: line {exc.lineno}: "
                                 f"{exc.msg}") from exc
        except PARSE_ERRORS as exc:  # nested past the parser's limits, or not encodable
            raise LLMBadResponse(f"the python field cannot be parsed ({type(exc).__name__}: "
                                 f"{str(exc)[:120] or 'too deeply nested'}); write plain, "
                                 "shallow code") from exc
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        if not classes:
            raise LLMBadResponse("the python field defines no class; define one nn.Module class")
        if isinstance(wanted, str) and wanted in classes:
            return wanted
        chosen = classes[-1]  # helpers come first; the model is usually the last class
        notes.append(f"class_name {show(wanted)} is not defined; using {chosen!r}")
        return chosen


def _config_schema(facts: PlannerFacts, min_width: int) -> dict[str, Any]:
    """ModelConfig's schema, compacted, without ``name``, limited to layers that fit the data."""
    schema = compact_schema(model_config_json_schema())
    defs = schema["$defs"]
    defs["ModelConfig"]["properties"].pop("name", None)
    spatial = {cls.__name__ for cls in SPATIAL_LAYERS} | {"Flatten"}
    items = defs["ModelConfig"]["properties"]["layers"]["items"]
    if not facts.is_image:
        items["anyOf"] = [r for r in items["anyOf"] if r["$ref"].rsplit("/", 1)[1] not in spatial]
        for name in spatial:
            defs.pop(name, None)
    for layer in defs.values():
        for field in _WIDTH_FIELDS:
            if field in layer.get("properties", {}):
                layer["properties"][field]["minimum"] = min_width
    return schema


class LLMPlanner:
    """Planner over an ``LLMClient``; see the module docstring. Satisfies ``Planner``."""

    def __init__(self, client: LLMClient, facts: PlannerFacts, target: Target | None = None,
                 goal: str = "", *, mode: Mode = "config", repair_budget: int = 2,
                 correction_rounds: int = 1, train_defaults: TrainSpec = TrainSpec(),
                 bounds: TrainBounds | None = None, max_params: int = DEFAULT_MAX_PARAMS,
                 history_limit: int = 8, temperature: float = 0.4,
                 max_tokens: int | None = None, fallback: Planner | None = None) -> None:
        if repair_budget < 0 or correction_rounds < 0:
            raise ValueError("repair_budget and correction_rounds must be >= 0")
        self.client, self.facts, self.target = client, facts, target
        self.goal = goal or f"the best classifier for {facts.name}"
        self.assembler = LLMAssembler(facts, mode=mode, train_defaults=train_defaults,
                                      bounds=bounds, max_params=max_params)
        self.repair_budget, self.correction_rounds = repair_budget, correction_rounds
        self.history_limit, self.temperature = history_limit, temperature
        self.max_tokens = max_tokens or (2048 if mode == "source" else 768)
        self.fallback = fallback
        self.last_error: str = ""  # why the latest proposal fell back; empty when it did not
        self._system = self.assembler.system_prompt()
        self._sent_for_repair: set[str] = set()
        self._count = 0
        self._seconds_left: float | None = None  # of the run's time budget, as set_budget said
        self._stop_reason = ""

    @property
    def mode(self) -> Mode:
        """"config" or "source"."""
        return self.assembler.mode

    def propose(self, history: Sequence[Outcome]) -> Proposal | None:
        """The final training once it is due, else None when no candidate fits the time left,
        else a repair of the latest repairable failure, else a new candidate; never raises."""
        self._count = max([self._count, *(_ref_number(o.proposal.ref) for o in history)]) + 1
        # the fallback's final training of the best design so far (the LLM's or its own), once
        # the time budget has no room for another candidate beside it
        final = self._from_fallback("final_if_due", None, history)
        if final is not None:
            self.last_error = ""
            return final
        self._stop_reason = self._from_fallback("no_room", "", least_epochs=self.assembler.bounds.epochs[0])
        if self._stop_reason:  # no candidate fits the time left: end the run, without asking
            self.last_error = ""
            return None
        try:
            proposal = self._ask(*self._request(history))
        except (LLMError, InvalidConfig) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return self._fallback(history)
        except Exception as exc:  # noqa: BLE001 - last resort: one reply must not end a run
            self.last_error = f"unexpected {type(exc).__name__} handling the LLM's reply: {exc}"
            return self._fallback(history)
        self.last_error = ""
        return self._fit(proposal)

    def _from_fallback(self, method: str, default: Any, *args: Any, **kwargs: Any) -> Any:
        """``self.fallback.<method>(...)``, or ``default`` where the fallback has no such method
        or it raises: the fallback's arithmetic must never cost the LLM its turn."""
        call = getattr(self.fallback, method, None)
        if call is None:
            return default
        try:
            return call(*args, **kwargs)
        except Exception:  # noqa: BLE001 - see above
            return default

    def _fit(self, proposal: Proposal) -> Proposal:
        """The LLM's candidate held to the time the fallback's own would get (its ``fit``): it
        stops in time for the final training, and a config it can time is planned shorter
        where needed; the change is said in the rationale."""
        fitted, note = self._from_fallback("fit", (proposal, ""), proposal,
                                           least_epochs=self.assembler.bounds.epochs[0])
        return msgspec.structs.replace(fitted, rationale=f"{fitted.rationale} [{note}]") if note else fitted

    def _time_line(self) -> str:
        """What the prompt says about time: what is left and what one candidate may train."""
        most = self._from_fallback("candidate_limit", None)
        if self._seconds_left is None or most is None:
            return ""
        return (f"Time: about {self._seconds_left:.0f} s of the run are left; a candidate may train "
                f"{most:.0f} s at most (all seeds), so choose epochs and size to finish in that.")

    def _request(self, history: Sequence[Outcome]) -> tuple[list[ChatMessage], str, str | None]:
        """The messages to send, the origin ("repair" or "propose") and the repaired parent."""
        failed = self._repairable(history)
        if failed is not None:
            self._sent_for_repair.add(failed.candidate_id)
            messages = prompts.repair_messages(self._system, self.goal, self.facts, failed)
            return messages, "repair", failed.candidate_id
        messages = prompts.propose_messages(self._system, self.goal, self.facts, self.target, history,
                                            limit=self.history_limit, time_line=self._time_line())
        return messages, "propose", None

    def observe(self, outcome: Outcome) -> None:
        """Pass outcomes on to the fallback planner; the history carries the rest."""
        if self.fallback is not None:
            self.fallback.observe(outcome)

    def set_budget(self, seconds_left: float | None, **limits) -> None:
        """Pass the time left on to a budget-aware fallback (its proposals must fit it too)."""
        self._seconds_left = seconds_left
        set_budget = getattr(self.fallback, "set_budget", None)
        if set_budget is not None:
            set_budget(seconds_left, **limits)

    def take_notices(self) -> list[str]:
        """The fallback planner's notes for the user (e.g. why no final training comes)."""
        take = getattr(self.fallback, "take_notices", None)
        return take() if take is not None else []

    def stop_reason(self) -> str:
        """Why the last ``propose`` returned None: no time for another candidate, as the
        fallback planner (which ends the run here) judged it."""
        if self._stop_reason:
            return self._stop_reason
        why = getattr(self.fallback, "stop_reason", None)
        return why() if why is not None else ""

    def close(self) -> None:
        """Close the client's connections (the planner is done)."""
        self.client.close()

    def _repairable(self, history: Sequence[Outcome]) -> Outcome | None:
        """The latest failure that is fixable, not yet sent back, and within the budget."""
        parents = {o.candidate_id: o.proposal.parent for o in history}
        repaired = {p for p in parents.values() if p} | self._sent_for_repair
        for outcome in reversed(history):
            if (outcome.status == "failed" and outcome.candidate_id not in repaired
                    and (outcome.failure_kind is None or outcome.failure_kind in REPAIRABLE)
                    and _depth(outcome.candidate_id, parents) < self.repair_budget):
                return outcome
        return None

    def _ask(self, messages: list[ChatMessage], origin: str, parent: str | None) -> Proposal:
        """Ask, build, and on an unusable reply say what was wrong, ``correction_rounds`` times."""
        problem = ""
        for _ in range(self.correction_rounds + 1):
            result = self.client.chat(messages, schema=self.assembler.schema,
                                      schema_name="candidate", temperature=self.temperature,
                                      max_tokens=self.max_tokens, purpose=origin)
            try:
                proposal, notes = self.assembler.build(result.text)
            except (LLMBadResponse, InvalidConfig) as exc:
                problem = str(exc)
                messages = [*messages, *prompts.correction_message(result.text, problem)]
                continue
            bounded = _bounded_text(notes)
            params = {"origin": origin, "response_format": result.response_format.value,
                      "llm_attempts": result.attempts, "bounded": len(notes)}
            return msgspec.structs.replace(
                proposal, parent=parent, ref=f"llm:{self._count}", params=params,
                rationale=(proposal.rationale or "(no rationale given)")[:400] + bounded)
        raise LLMBadResponse(f"no usable candidate after {self.correction_rounds + 1} "
                             f"replies; last problem: {problem}")

    def _fallback(self, history: Sequence[Outcome]) -> Proposal | None:
        """A safe proposal standing in for the LLM's (the fallback planner's, or a default)."""
        why = f"LLM failed ({self.last_error[:300]})"
        if self.fallback is not None:
            try:
                proposal = self.fallback.propose(history)
            except Exception as exc:  # noqa: BLE001 - the fallback's trouble must not end the run
                why += f"; fallback planner failed ({type(exc).__name__}: {str(exc)[:300]})"
            else:
                if proposal is None:
                    return None
                return msgspec.structs.replace(proposal, rationale=f"{why}; {proposal.rationale}")
        config = default_config(self.facts, variant=self._count - 1)
        train = self.assembler.train_spec()
        return Proposal(config=config, train=train, ref=f"llm-fallback:{self._count}",
                        rationale=f"{why}; a default {config.name} model stands in",
                        params={"origin": "fallback", "llm_error": self.last_error[:500]})


def _depth(candidate_id: str, parents: dict[str, str | None]) -> int:
    """How many repairs led to ``candidate_id`` (cycles, which a resume could forge, stop it)."""
    depth, seen, current = 0, set(), parents.get(candidate_id)
    while current and current not in seen:
        seen.add(current)
        depth += 1
        current = parents.get(current)
    return depth


def _bounded_text(notes: list[str]) -> str:
    """`` [bounded: ...]`` for the rationale, at most ``_MAX_BOUNDED_CHARS`` of notes."""
    if not notes:
        return ""
    text = "; ".join(notes)
    if len(text) > _MAX_BOUNDED_CHARS:
        text = f"{text[:_MAX_BOUNDED_CHARS]}... ({len(notes)} notes)"
    return f" [bounded: {text}]"


def _ref_number(ref: str) -> int:
    """N of our refs ``llm:N`` / ``llm-fallback:N`` (0 for others), so a resume continues."""
    head, _, number = ref.rpartition(":")
    ours = head in ("llm", "llm-fallback") and number.isascii() and number.isdigit()
    return int(number) if ours and len(number) < 16 else 0
