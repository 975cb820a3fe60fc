"""The docs say what the code does: every command shown runs as written, the hook reference matches the hookspecs."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("plugins/*/README.md"),
               ROOT / "examples" / "README.md"])
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)


def shown_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for each ``graphopt ...`` line in a fenced code block (continuations joined).

    Synopsis lines (``[--flag]``, ``...``) describe a command's shape rather than run it: left out.
    """
    found = []
    for doc in DOCS:
        if not doc.is_file():
            continue
        for block in FENCE.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ").strip()
                line = re.sub(r"^(\w+=\S+\s+)+", "", line)  # VAR=value graphopt ...
                if not line.startswith("graphopt ") or " [" in line or "..." in line or "|" in line:
                    continue
                found.append((str(doc.relative_to(ROOT)), line))
    return found


COMMANDS = shown_commands()


def test_the_docs_show_commands_at_all():
    assert len(COMMANDS) >= 20, COMMANDS


@pytest.fixture(scope="module")
def parser():
    from graphopt.cli.main import build_parser
    from graphopt.plugins import Host

    return build_parser(Host.create())


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_every_command_in_the_docs_parses_as_written(parser, doc, command):
    words = shlex.split(command.split(" # ")[0].split("  #")[0])[1:]
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"{doc}: '{command}' is refused by graphopt's parser (exit {exc.code})")
    assert args.command, f"{doc}: '{command}' names no command"
    if args.command == "optimize":  # the one rule argparse cannot express: somewhere to write
        assert args.output or args.serving_dir, f"{doc}: '{command}' gives neither -o nor --serving-dir"


def test_the_hook_reference_is_generated_from_the_hookspecs():
    tool = runpy.run_path(str(ROOT / "docs" / "develop" / "hooks_reference.py"))
    assert tool["main"](["--check"]) == 0, "docs/develop/hooks.md is out of date: run python docs/develop/hooks_reference.py"
