"""Prompts of the LLM planner: task, dataset facts, target, history, and repair tasks.

Kept short on purpose: a 135M model with a 4k context must still see the whole task,
so the schema is described in a line per layer and the history is trimmed to the most
recent and the best candidates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from orchestrator import units
from orchestrator.llm.records import ChatMessage
from orchestrator.llm.schema import resolve
from orchestrator.planning.types import PlannerFacts, Outcome, Proposal, Target, final_training_of

_MESSAGE_CHARS = 600  # of a failure message shown back to the model
_SOURCE_CHARS = 6000  # of failed source shown in a repair task


def _range(spec: dict[str, Any], root: dict[str, Any]) -> str:
    spec = resolve(spec, root)
    if "enum" in spec:
        return "|".join(str(v) for v in spec["enum"])
    if "anyOf" in spec:
        parts = [_range(o, root) for o in spec["anyOf"] if resolve(o, root).get("type") != "null"]
        return " or ".join(parts) + " or null"
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    if low is not None or high is not None:
        return f"{low if low is not None else ''}..{high if high is not None else ''}"
    return str(spec.get("type", "any"))


def describe_object(schema: dict[str, Any], root: dict[str, Any],
                    skip: tuple[str, ...] = ()) -> str:
    """``name range [= default]`` for each property of an object schema, comma-separated."""
    schema = resolve(schema, root)
    required = set(schema.get("required", ()))
    parts = []
    for name, spec in schema.get("properties", {}).items():
        if name in skip:
            continue
        text = f"{name} {_range(spec, root)}"
        if spec.get("description"):  # what a recipe knob does, where the range cannot say it
            text += f" ({spec['description']})"
        if "default" in spec:
            text += f" = {json.dumps(spec['default'])}"
        elif name in required:
            text += " (required)"
        parts.append(text)
    return ", ".join(parts)


def describe_layers(config_schema: dict[str, Any], root: dict[str, Any]) -> str:
    """One line per layer type allowed by a (compacted) ModelConfig schema."""
    layers = resolve(config_schema, root)["properties"]["layers"]["items"]["anyOf"]
    lines = []
    for option in layers:
        layer = resolve(option, root)
        tag = layer["properties"]["type"]["enum"][0]
        fields = describe_object(layer, root, skip=("type",))
        lines.append(f"- {tag}" + (f": {fields}" if fields else ""))
    return "\n".join(lines)


def describe_facts(facts: PlannerFacts) -> str:
    """The dataset in one line."""
    kind = "image (C, H, W)" if facts.is_image else "table (features,)"
    sizes = f"{facts.n_train} train / {facts.n_val} val / {facts.n_test} test examples"
    names = f"; classes: {', '.join(facts.class_names[:20])}" if facts.class_names else ""
    return (f"{facts.name}: {kind} input of shape {tuple(facts.input_shape)}, "
            f"{facts.num_classes} classes, {sizes}{names}")


def describe_target(target: Target | None) -> str:
    """The target in one line."""
    if target is None or target.threshold is None:
        metric = target.metric if target else "accuracy"
        return f"make {metric} as good as possible ({target.direction if target else 'maximize'})"
    return f"{target.metric} {target.sign} {target.threshold:g} on the held-out selection split"


def describe_proposal(proposal: Proposal) -> str:
    """A proposal's model and training, compactly."""
    train = proposal.train
    settings = (f"epochs {train.epochs}, batch {train.batch_size}, lr {train.lr:g}, "
                f"{train.optimizer}{' nesterov' if train.nesterov else ''}, "
                f"weight_decay {train.weight_decay:g}, schedule {train.schedule}")
    settings += f" (warmup {train.warmup_epochs:g})" if train.warmup_epochs else ""
    settings += f", label_smoothing {train.label_smoothing:g}" if train.label_smoothing else ""
    settings += f", augment {train.augment}" if train.augment != "none" else ""
    settings += ", tta_flip" if train.tta_flip else ""
    if proposal.config is not None:
        layers = msgspec.json.encode(proposal.config.layers).decode()
        return f"layers={layers}; {settings}"
    lines = (proposal.source or "").count("\n") + 1
    return f"source class {proposal.class_name} ({lines} lines); {settings}"


def describe_outcome(outcome: Outcome) -> str:
    """One history line: id, result or failure, the model and its training."""
    if outcome.status == "passed":
        ci = f" [{outcome.ci95[0]:.4f}, {outcome.ci95[1]:.4f}]" if outcome.ci95 else ""
        mean = "n/a" if outcome.mean is None else f"{outcome.mean:.4f}"
        params = (f", {outcome.params:,} params" if outcome.params else "") + \
            (f", {units.flops(outcome.flops)} per example" if outcome.flops else "")
        result = f"selection {outcome.metric or 'metric'} {mean}{ci}{params}"
        if outcome.val_curve and outcome.seconds > 0:  # what a candidate costs, for planning in time
            trained = len(outcome.val_curve)
            result += f", trained {trained} epoch{'' if trained == 1 else 's'} in {outcome.seconds:.0f} s"
    else:
        kind = outcome.failure_kind.value if outcome.failure_kind else "failed"
        message = (outcome.failure_message or "").strip().splitlines()
        result = f"FAILED {kind}: {message[-1][:200] if message else 'no message'}"
    of = final_training_of(outcome.proposal)
    name = outcome.candidate_id if of is None else f"{outcome.candidate_id} (final training of {of} on train + val)"
    return f"{name}: {result}; {describe_proposal(outcome.proposal)}"


def select_history(history: Sequence[Outcome], target: Target, limit: int) -> list[Outcome]:
    """The best few and the most recent outcomes, in their original order, at most ``limit``."""
    passed = [o for o in history if o.status == "passed" and o.mean is not None]
    best = target.ranked(passed, lambda o: o.mean)[:3]
    keep = {id(o) for o in best} | {id(o) for o in history[-max(limit - len(best), 0):]}
    return [o for o in history if id(o) in keep][-limit:]


def system_prompt(task: str, layer_text: str, train_text: str, example: dict[str, Any]) -> str:
    """Role, output format, the layers and train settings allowed, and an example."""
    return (
        "You are a careful machine-learning researcher who designs PyTorch classifiers.\n"
        f"{task}\n"
        f"Train settings: {train_text}.\n"
        + (f"Layer types (fields and ranges):\n{layer_text}\n" if layer_text else "")
        + "Reply with exactly one JSON object and nothing else, like this example:\n"
        + json.dumps(example)
    )


def propose_messages(system: str, goal: str, facts: PlannerFacts, target: Target | None,
                     history: Sequence[Outcome], *, limit: int = 8, time_line: str = "") -> list[ChatMessage]:
    """Messages asking for the next candidate, given everything tried so far (and ``time_line``,
    what the run's time budget leaves, when it has one)."""
    tgt = target or Target()
    shown = select_history(history, tgt, limit)
    lines = [f"Goal: {goal}", f"Dataset: {describe_facts(facts)}",
             f"Target: {describe_target(target)}", *([time_line] if time_line else [])]
    if shown:
        lines.append(f"Tried so far ({len(shown)} of {len(history)}):")
        lines += [f"- {describe_outcome(o)}" for o in shown]
        passed = [o for o in history if o.status == "passed" and o.mean is not None]
        if passed:
            best = tgt.best(passed, lambda o: o.mean)
            lines.append(f"Best so far: {best.candidate_id} with {best.metric} {best.mean:.4f}.")
        lines.append("Propose a new candidate that differs from those above and could beat "
                     "the best.")
    else:
        lines.append("Nothing has been tried yet. Propose a solid first candidate.")
    return [ChatMessage("system", system), ChatMessage("user", "\n".join(lines))]


def repair_messages(system: str, goal: str, facts: PlannerFacts, failed: Outcome,
                    ) -> list[ChatMessage]:
    """Messages asking to fix a failed candidate, with its error and its model."""
    proposal = failed.proposal
    kind = failed.failure_kind.value if failed.failure_kind else "failed"
    message = (failed.failure_message or "no message").strip()[-_MESSAGE_CHARS:]
    if proposal.source is not None:
        code = proposal.source[:_SOURCE_CHARS]
        shown = f"Its source (class {proposal.class_name}):\n```python\n{code}\n```"
    else:
        shown = f"Its model: {describe_proposal(proposal)}"
    text = "\n".join([
        f"Goal: {goal}",
        f"Dataset: {describe_facts(facts)}",
        f"Candidate {failed.candidate_id} FAILED with {kind}:",
        message,
        *([f"Traceback (end):\n{failed.failure_traceback.strip()[-_MESSAGE_CHARS:]}"] if failed.failure_traceback else []),
        shown,
        "Fix the cause of this failure and reply with the complete corrected candidate.",
    ])
    return [ChatMessage("system", system), ChatMessage("user", text)]


def correction_message(reply: str, problem: str) -> list[ChatMessage]:
    """Follow-up turns telling the model what was wrong with its last reply."""
    return [ChatMessage("assistant", reply[:2000]),
            ChatMessage("user", f"That reply cannot be used: {problem[:_MESSAGE_CHARS]}\n"
                                "Reply again with one corrected JSON object only.")]
