"""The README's commands exist: its first screen shows the dashboard and the two commands a
newcomer runs, and every command it quotes names a script, a file or an `unsflow` command
(with options) that is there."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from unsflow.cli import main

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _shell_lines() -> list[str]:
    """Command lines of the README's ```sh blocks, comments removed."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _inline_unsflow() -> list[str]:
    """`unsflow ...` quoted inline (the command table)."""
    return [m.replace("\\|", "|") for m in re.findall(r"`((?:\.venv/bin/)?unsflow [^`]+)`",
                                                    README)]


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command ``words`` name (groups followed), and the words left."""
    command: click.Command = main
    while isinstance(command, click.Group) and words and words[0] in command.commands:
        command, words = command.commands[words[0]], words[1:]
    return command, words


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def test_the_first_screen_shows_the_dashboard_and_the_two_commands():
    first = "\n".join(README.splitlines()[:20])
    image = re.search(r"!\[[^\]]+\]\((docs/img/[^)]+\.png)\)", first)
    assert image, "no screenshot on the README's first screen"
    png = REPO / image.group(1)
    assert png.is_file() and 20_000 < png.stat().st_size < 400_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = _shell_lines()[:2]
    assert commands[0] == "bash scripts/setup.sh"
    assert commands[1].endswith("unsflow demo")
    assert README.index("bash scripts/setup.sh") < README.index("unsflow demo") < 1500


@pytest.mark.parametrize("line", _shell_lines())
def test_every_shell_command_exists(line):
    words = shlex.split(line)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]  # VAR=value before the command
    program, args = words[0], words[1:]
    if program == "bash":
        assert (REPO / args[0]).is_file(), line
    elif program in ("python", "python3") or program.endswith("/python"):
        if args[:2] == ["-m", "pytest"]:
            for path in (a for a in args[2:] if not a.startswith("-")):
                assert (REPO / path).exists(), line
        else:
            assert (REPO / args[0]).is_file(), line
    elif program.endswith("unsflow"):
        _check_unsflow(args, line)
    else:
        pytest.fail(f"the README quotes a command this test does not know: {line}")


def _check_unsflow(args: list[str], line: str) -> None:
    command, rest = _resolve(args)
    assert command is not main, f"no unsflow command in {line!r}"
    known = _options(command)
    for word in rest:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in known, f"{line!r}: {command.name} has no {word}"


@pytest.mark.parametrize("text", _inline_unsflow())
def test_every_quoted_unsflow_command_exists(text):
    words = [w for w in text.split() if w not in ("[", "]")]
    words = [w.strip("[]") for w in words][1:]
    command, rest = _resolve(words)
    assert command is not main, f"no unsflow command in {text!r}"
    known = _options(command)
    for word in rest:
        for option in re.findall(r"--[a-z][a-z-]*", word):
            assert option in known, f"{text!r}: {command.name} has no {option}"


@pytest.mark.parametrize("path", sorted(set(re.findall(
    r"`(?:PYTHONPATH=src )?(?:python3?|bash) ((?:benchmarks|scripts)/[^` ]+)", README))))
def test_every_quoted_script_exists(path):
    assert (REPO / path).is_file(), path
