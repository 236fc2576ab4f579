"""Every registered command imports, documents its options and runs `--help`."""

from __future__ import annotations

import importlib

import pytest

from clam_dist.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_module_and_help(name, capsys):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert name in out and "--" in out


def test_top_level_help_lists_every_command(capsys):
    build_parser().print_help()
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_no_command_prints_help_and_fails():
    assert main([]) == 2
