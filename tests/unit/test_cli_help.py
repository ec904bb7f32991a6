"""Every `spendwatch` command and subcommand answers --help with exit 0; each command's help says its exit
status and gives an example (README: "`spendwatch COMMAND --help` says what each reads and writes, its
defaults, exit status and examples")."""

from __future__ import annotations

import argparse

import pytest

from watcher.cli.main import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


COMMANDS = [path for path, _ in _commands(build_parser())]


def test_every_command_is_found():
    top = {p[0] for p in COMMANDS}
    assert {"run", "simulate", "demo", "check-config", "deadletters", "bench", "chain", "replay", "eval",
            "statement", "breaker", "facilitator"} <= top
    assert ("breaker", "approve") in COMMANDS


@pytest.mark.parametrize("path", [()] + COMMANDS, ids=lambda p: " ".join(p) or "spendwatch")
def test_help_exits_0(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spendwatch")
    if len(path) == 1:
        text = " ".join(out.split()).lower()
        assert "exit" in text, f"`spendwatch {path[0]} --help` does not say its exit status"
        assert "example" in text, f"`spendwatch {path[0]} --help` gives no example"
