"""The README and docs/ against the code: every flag, variable, command and message they name exists.

- every ``researcher ...`` line in a shell code block parses with the real parser;
- every ``--flag`` in inline code exists on the subcommand it is documented under;
- every option of every subcommand is in the configuration reference, with the right variable;
- every ``RESEARCHER_*`` variable is an option's, and setting it sets that option;
- the quick start's two commands are the ones ``.ci/run`` relies on;
- every troubleshooting message is one the code can print.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
#: Flags in inline code that belong to other programs (gVisor's runtime arguments).
FOREIGN_FLAGS = {"--network", "--host-uds"}
#: Inline code that starts with one of these is another program's command line.
FOREIGN_PROGRAMS = ("docker", "pip", "apt-get", "python", ".venv/bin/python", "pytest", "systemctl", "dockerd",
                    "scripts/setup.sh", "bash", "curl", "ollama", "nvidia-smi", "sudo", "git", "docker-compose")
#: Placeholders that state the rule, not an option or a variable.
RULE_PLACEHOLDERS = {"RESEARCHER_FOO_BAR", "--foo-bar"}
#: Where the code's messages live.
MESSAGE_SOURCES = ["orchestrator", "evaluator", "sandbox_image", "scripts"]


# ------------------------------------------------------------------ the parser's view


def subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (nested) subcommand's parser by its words, e.g. ("image", "build")."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*path, name)] = sub
                found.update(subparsers(sub, (*path, name)))
    return found


PARSER = build_parser()
SUBS = subparsers(PARSER)
LEAVES = {words: p for words, p in SUBS.items() if not any(o[: len(words)] == words and o != words for o in SUBS)}


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option string -> action (help excluded)."""
    return {o: a for a in parser._actions if not isinstance(a, argparse._HelpAction)
            for o in a.option_strings if o.startswith("--")}


def rule_var(flag: str) -> str:
    """The issue's rule, written out independently of the CLI's code: --foo-bar -> RESEARCHER_FOO_BAR."""
    return "RESEARCHER_" + flag[2:].replace("-", "_").upper()


def sub_of(words: list[str]) -> tuple[str, ...] | None:
    """The longest subcommand that ``words`` start with."""
    for n in (2, 1):
        if tuple(words[:n]) in SUBS:
            return tuple(words[:n])
    return None


# ------------------------------------------------------------------ the docs' view


@dataclass(frozen=True)
class Span:
    """One inline code span of a doc, with where it stands."""

    doc: str
    line: int
    text: str
    context: tuple[str, ...] | None  # the subcommand the section or table row is about
    section: str  # the nearest ## heading


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """(info string, first line number, body) of every fenced block."""
    return [(m.group(1).strip(), text[: m.start()].count("\n") + 2, m.group(2))
            for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def inline_code(line: str) -> list[str]:
    """Contents of the inline code spans of one Markdown line (single or double backticks)."""
    return [m.group(2).strip() for m in re.finditer(r"(``?)(.+?)\1", line)]


def heading_context(line: str) -> tuple[str, ...] | None:
    found = re.search(r"`researcher ([a-z]+(?: [a-z]+)?)`", line)
    return sub_of(found.group(1).split()) if found else None


def spans(doc: Path) -> list[Span]:
    """Every inline code span of ``doc`` with its subcommand context."""
    out, context, section = [], None, ""
    for number, line in prose_lines(doc.read_text()):
        if line.startswith("#"):
            context = heading_context(line)
            section = line.lstrip("#").strip() if line.startswith("## ") else section
            continue
        row_context = context
        codes = inline_code(line)
        if line.startswith("|") and codes:
            first = codes[0].split()
            row_context = sub_of(first) or sub_of(first[1:] if first[:1] == ["researcher"] else []) or context
        out.extend(Span(doc.name, number, code, row_context, section) for code in codes)
    return out


def researcher_commands(doc: Path) -> list[tuple[int, list[str]]]:
    """(line, argv after `researcher`) of every researcher command in the doc's shell blocks."""
    found = []
    for info, first, body in code_blocks(doc.read_text()):
        if info not in SHELL_BLOCKS:
            continue
        for offset, line in enumerate(body.splitlines()):
            for part in re.split(r"&&|\|\||;", line):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    continue
                names = [os.path.basename(w) for w in words]
                if "researcher" in names:
                    argv = words[names.index("researcher") + 1:]
                    found.append((first + offset, [w.strip("[]") for w in argv]))
    return found


def flags_in(code: str) -> list[str]:
    return re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code)


# ------------------------------------------------------------------ (a) flags exist


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_documented_researcher_command_parses(doc, monkeypatch):
    for name in [n for n in os.environ if n.startswith("RESEARCHER_")]:
        monkeypatch.delenv(name)
    commands = researcher_commands(doc)
    if doc.name == "README.md":
        assert len(commands) >= 8, commands
    for line, argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{doc.name}:{line}: `researcher {' '.join(argv)}` does not parse (exit {exc.code})")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_flag_in_inline_code_exists_on_its_subcommand(doc):
    every = set().union(*(options(p) for p in SUBS.values()))
    checked = 0
    for span in spans(doc):
        words = span.text.split()
        if not words or words[0] in FOREIGN_PROGRAMS or os.path.basename(words[0]) in FOREIGN_PROGRAMS:
            continue
        for flag in flags_in(span.text):
            if flag in FOREIGN_FLAGS or flag in RULE_PLACEHOLDERS:
                continue
            checked += 1
            where = f"{span.doc}:{span.line} `{span.text}`"
            if span.context is not None:
                have = options(SUBS[span.context])
                assert flag in have, f"{where}: `researcher {' '.join(span.context)}` has no {flag}"
            else:
                assert flag in every, f"{where}: no subcommand has {flag}"
    if doc.name == "README.md":
        assert checked > 100, checked


def config_reference() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Configuration reference")
    return text[start:text.index("\n## ", start + 1)]


def test_the_configuration_reference_lists_every_option_of_every_subcommand():
    reference = config_reference()
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    missing = []
    for words, parser in LEAVES.items():
        for flag in options(parser):
            name = " ".join(words)
            in_own_table = any(re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", row.split(" | ")[0]) and
                               (f"`{name} " in row.split(" | ")[0] or f"`researcher {name}`" in _table_heading(reference, row))
                               for row in rows)
            if not in_own_table:
                missing.append(f"{name} {flag}")
    assert missing == [], f"options missing from the README's configuration reference: {missing}"


def _table_heading(reference: str, row: str) -> str:
    """The ### heading above ``row`` in the reference."""
    before = reference[: reference.index(row)]
    headings = re.findall(r"^### (.*)$", before, re.MULTILINE)
    return headings[-1] if headings else ""


def test_each_reference_row_names_its_flags_variable_by_the_rule():
    for row in (line for line in config_reference().splitlines() if line.startswith("| `")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        flags = flags_in(cells[0].split("`")[1]) if "`" in cells[0] else []
        variables = re.findall(r"RESEARCHER_[A-Z0-9_]+", cells[2]) if len(cells) > 2 else []
        if len(flags) == 1 and variables:
            assert variables == [rule_var(flags[0])], row


# ------------------------------------------------------------------ (b) RESEARCHER_* variables


def documented_variables() -> dict[str, str]:
    found = {}
    for doc in DOCS:
        for name in re.findall(r"RESEARCHER_[A-Z0-9_]+", doc.read_text()):
            if name not in RULE_PLACEHOLDERS:
                found.setdefault(name, doc.name)
    return found


def env_value(action: argparse.Action) -> tuple[str, object]:
    """A raw value the option accepts, and what parsing it should give."""
    if action.nargs == 0:
        return "yes", action.const
    if action.choices:
        choice = list(action.choices)[-1]
        return str(choice), choice
    if action.type is int:
        return "7", 7
    if action.type is float:
        return "7.5", 7.5
    if action.type is Path:
        return "/tmp/from-env", Path("/tmp/from-env")
    return "from-env", "from-env"


def compose_variables() -> set[str]:
    """The RESEARCHER_* variables compose.yaml itself substitutes (``${NAME:-default}``)."""
    return set(re.findall(r"\$\{(RESEARCHER_[A-Z0-9_]+)", (ROOT / "compose.yaml").read_text()))


def test_every_documented_variable_sets_its_option(monkeypatch):
    variables = documented_variables()
    assert {"RESEARCHER_JOBS_DIR", "RESEARCHER_MEMORY", "RESEARCHER_LLM_API_KEY"} <= set(variables)
    compose_only = compose_variables()
    assert {"RESEARCHER_UID", "RESEARCHER_GID", "RESEARCHER_LAUNCHER_ROOT"} <= compose_only
    for name in [n for n in os.environ if n.startswith("RESEARCHER_")]:
        monkeypatch.delenv(name)
    for var, doc in sorted(variables.items()):
        owners = [(words, action) for words, parser in LEAVES.items()
                  for flag, action in options(parser).items() if rule_var(flag) == var]
        if not owners and var in compose_only:
            continue  # compose.yaml's own (the orchestrator's uid, the launcher's root and maxima)
        assert owners, f"{doc} names {var}, but no subcommand has the option it would set, nor does compose.yaml read it"
        for words, action in owners:
            raw, expected = env_value(action)
            positionals = ["x" for a in LEAVES[words]._actions if not a.option_strings and a.dest != "help"]
            monkeypatch.setenv(var, raw)
            parsed = build_parser().parse_args([*words, *positionals])
            monkeypatch.delenv(var)
            assert getattr(parsed, action.dest) == expected, (
                f"{var}={raw} should set `researcher {' '.join(words)} {action.option_strings[0]}` to {expected!r}, "
                f"got {getattr(parsed, action.dest)!r}")


def test_an_empty_variable_counts_as_unset_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("RESEARCHER_MEMORY", "")
    assert build_parser().parse_args(["check", "m.py"]).memory == "2g"
    monkeypatch.setenv("RESEARCHER_MEMORY", "4g")
    assert build_parser().parse_args(["check", "m.py"]).memory == "4g"
    assert build_parser().parse_args(["check", "m.py", "--memory", "1g"]).memory == "1g"


# ------------------------------------------------------------------ (c) the quick start


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    info, _, body = code_blocks(section)[0]
    assert info == "bash"
    return [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_quick_start_is_two_commands_the_ci_runs():
    assert quick_start_commands() == [
        "scripts/setup.sh && .venv/bin/researcher run",
        "scripts/setup.sh && .venv/bin/python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "bash scripts/setup.sh" in ci
    pytest_line = next(line for line in ci if ".venv/bin/python -m pytest" in line)
    assert pytest_line.split("||")[0].strip() == ".venv/bin/python -m pytest -q"
    setup = ROOT / "scripts" / "setup.sh"
    assert os.access(setup, os.X_OK) and setup.read_text().startswith("#!/usr/bin/env bash")
    assert build_parser().parse_args(["run"]).command == "run"


# ------------------------------------------------------------------ (d) troubleshooting messages


def code_text() -> str:
    """The code's text with implicit string concatenation across lines joined."""
    parts = []
    for folder in MESSAGE_SOURCES:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".sh") and "__pycache__" not in path.parts:
                parts.append(path.read_text())
    return re.sub(r"\"\s*\n\s*[fr]?\"", "", "\n".join(parts))


def troubleshooting_messages() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Troubleshooting")
    section = text[start:text.index("\n## ", start + 1)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| message")
            and not line.startswith("|---")]
    return [code for row in rows for code in inline_code(row.split(" | ")[0])]


def test_every_troubleshooting_message_is_one_the_code_prints():
    source = code_text()
    messages = troubleshooting_messages()
    assert len(messages) >= 20, messages
    for message in messages:
        for fragment in re.split(r"\.\.\.|: ", message):
            fragment = fragment.strip(" '\"().,;:")
            if len(fragment) >= 8:
                assert fragment in source, f"troubleshooting names {message!r}, but the code never says {fragment!r}"


# ------------------------------------------------------------------ links


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_point_at_files_that_exist(doc):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


# ------------------------------------------------------------------ (f) the Python API's examples


def api_examples() -> list[tuple[int, str]]:
    """(line, body) of each ```python block under the README's "Python API" section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Python API\n")
    end = text.index("\n## ", start + 1)
    offset = text[:start].count("\n")
    return [(offset + line, body) for info, line, body in code_blocks(text[start:end]) if info == "python"]


@pytest.mark.docker
@pytest.mark.slow
def test_every_python_api_example_in_the_readme_runs(tmp_path, monkeypatch):
    """The blocks run in order in one namespace, in a fresh cwd; the LLM one against the scripted fake server."""
    from tests.fakes.fake_llm_server import FakeLLMServer, Reply

    examples = api_examples()
    assert len(examples) >= 3 and any("use_llm=True" in body for _, body in examples)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    with FakeLLMServer() as server:
        for line, body in examples:
            if "use_llm=True" in body:
                source = (namespace["src"].replace("class SmallCNN", "class FromLLM"))
                server.add(Reply.json({"rationale": "the config as written", "class_name": "FromLLM",
                                       "python": source, "train": {"epochs": 1, "batch_size": 64, "lr": 0.001,
                                                                   "optimizer": "adamw"}}))
                body = body.replace("http://127.0.0.1:11434/v1", server.base_url)
            exec(compile(body, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - our own docs
        assert namespace["result"].via == "llm", namespace["result"].llm_error
        assert server.pending == 0
    assert (tmp_path / "small_cnn.py").is_file() and (tmp_path / "llm_cnn.py").is_file()
