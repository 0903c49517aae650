"""The README's CLI reference and its example commands match what `hbone --help` / `microxds --help` accept.

The rule, for whoever adds a command or a flag: every subcommand (e.g. `hbone capture tproxy`) has a line in the
README section "## CLI reference" that names it in backticks (`` `hbone capture tproxy …` ``), and every long flag
of that subcommand appears on one of the table rows or paragraphs naming it. Flags in a command's synopsis (its
first code span) must exist. Every `hbone …`/`microxds …` command line in the README's shell blocks must
parse with today's CLI.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from hbone.cli import build_parser as hbone_parser
from microxds.cli import build_parser as microxds_parser

README = Path(__file__).resolve().parents[2] / "README.md"
PARSERS = {"hbone": hbone_parser, "microxds": microxds_parser}
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def _commands(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, f"{path} {name}")


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 4)
    return text[start : end if end > 0 else len(text)]


def _units(reference: str) -> list[str]:
    """Table rows one by one; other text as paragraphs (lines joined until a blank line or a table row)."""
    units: list[str] = []
    para: list[str] = []
    for line in [*reference.splitlines(), ""]:
        if line.startswith("|") or not line.strip():
            if para:
                units.append(" ".join(para))
                para = []
            if line.startswith("|"):
                units.append(line)
        else:
            para.append(line.strip())
    return units


def _lines_naming(reference: str, command: str) -> list[str]:
    pattern = re.compile(rf"`{re.escape(command)}(?=[ `])")
    return [unit for unit in _units(reference) if pattern.search(unit)]


ALL = [(prog, path, p) for prog, build in PARSERS.items() for path, p in _commands(build(), prog)]


@pytest.mark.parametrize(("prog", "command", "parser"), ALL, ids=[c for _, c, _ in ALL])
def test_reference_documents_every_flag(prog: str, command: str, parser: argparse.ArgumentParser) -> None:
    reference = _section("CLI reference")
    lines = _lines_naming(reference, command)
    assert lines, (
        f"README.md '## CLI reference' has no line for `{command}`: add a table row starting with "
        f"`{command} …` (see `{command} --help`)"
    )
    documented = set(FLAG.findall("\n".join(lines)))
    missing = sorted(_flags(parser) - documented)
    assert not missing, (
        f"README.md '## CLI reference': the `{command}` row lacks {', '.join(missing)} "
        f"(from `{command} --help`); add them to that row or to a line naming `{command}`"
    )
    synopsis = re.search(rf"`({re.escape(command)}[^`]*)`", lines[0])
    assert synopsis is not None
    stale = sorted(set(FLAG.findall(synopsis.group(1))) - _flags(parser))
    assert not stale, f"README.md lists {', '.join(stale)} for `{command}`, which `{command} --help` does not have"


def _readme_commands() -> list[str]:
    text = README.read_text()
    out = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split(" #", 1)[0].strip().removeprefix("$ ")
            if line.split(" ", 1)[0] in PARSERS:
                out.append(line)
    return out


@pytest.mark.parametrize("line", _readme_commands())
def test_readme_commands_parse(line: str) -> None:
    words = shlex.split(line)
    parser = PARSERS[words[0]]()
    try:
        parser.parse_args(words[1:])
    except SystemExit as exc:  # argparse reports the problem on stderr
        raise AssertionError(f"README.md command no longer parses: {line!r} (see `{words[0]} --help`)") from exc


def test_quick_start_is_what_mesh_init_prints() -> None:
    from hbone.commands.mesh import MeshPlan

    quick_start = _section("Quick start")
    plan = MeshPlan(Path(".mesh"))
    missing = [cmd for _, cmd in plan.start_commands() + plan.try_commands() if cmd not in quick_start]
    assert not missing, f"README.md '## Quick start' no longer shows what `hbone mesh init .mesh` prints: {missing}"
