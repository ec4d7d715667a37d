"""The CLI's shared helpers (cameras.cli.common) and the program's own options."""

from __future__ import annotations

import argparse
import io
import sys

import pytest

import cameras
from cameras.cli import build_parser, main
from cameras.cli.common import output_stems, parse_scales, progress_bar, split_names


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"cameras {cameras.__version__}\n"


def test_every_option_states_its_default():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert "default" in (action.help or ""), f"{name} {action.option_strings}"


def test_every_command_writes_into_cameras_out_by_default():
    parser = build_parser()
    for command in ("explain", "attack", "sanity", "evaluate"):
        args = parser.parse_args([command, "x"])
        assert str(args.out) == "cameras-out", command


class FakeTerminal(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_only_on_a_terminal(monkeypatch, terminal):
    stream = FakeTerminal(terminal)
    monkeypatch.setattr(sys, "stderr", stream)
    for _ in progress_bar(range(3), desc="explain"):
        pass
    assert ("explain" in stream.getvalue()) == terminal


def test_small_parsers():
    assert split_names(" a, b,,c ,") == ["a", "b", "c"]
    assert parse_scales("224, 324,") == [224, 324]
    with pytest.raises(argparse.ArgumentTypeError, match="expected comma-separated sizes"):
        parse_scales("224,big")
    assert output_stems(
        [__import__("pathlib").Path(p) for p in ("a/x.jpg", "b/x.png", "y.jpg")]
    ) == [
        "x",
        "x-2",
        "y",
    ]
