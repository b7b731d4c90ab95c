"""The `fpsiam` command itself: help everywhere, one clear line and a non-zero exit on bad input."""

import subprocess
import sys

import pytest

from fpsiam.cli import build_parser, main


def subcommands(parser):
    for action in parser._subparsers._group_actions:
        yield from action.choices.items()


def test_every_command_has_help(capsys):
    parser = build_parser()
    for name, sub in subcommands(parser):
        assert sub.format_help().strip(), name
        if sub._subparsers is not None:
            for inner, p in subcommands(sub):
                assert p.description or p.format_help(), inner


def test_python_m_fpsiam_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "fpsiam", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("fpsiam ")


def test_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0] and "Traceback" not in err[0]


def test_unknown_config_key_through_the_cli(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  lamda: 0.5\n")
    assert main(["pretrain", str(cfg)]) == 2
    assert "model.lamda" in capsys.readouterr().err


def test_missing_required_argument_is_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", "x"])
    assert e.value.code == 2
