"""kit.entry: the settings options every tool shares and the one error -> exit-code mapping."""

from __future__ import annotations

import argparse

import pytest

from kit import exitcodes
from kit.entry import KitError, add_settings_options, run, settings_from, settings_parser


def _parser(**kwargs: bool) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="tool", parents=[settings_parser(**kwargs)])


def test_options_build_the_named_settings(tmp_path, monkeypatch):
    args = _parser().parse_args(["--profile", "seed", "--set", "serving.port=24000", "--set", "serving.quant_policy=8", "-v"])
    s = settings_from(args, {"serving": {"tp": 1}})
    assert (s.profile, s.serving.port, s.serving.quant_policy, args.verbose) == ("seed", 24000, 8, 1)
    monkeypatch.setenv("PROFILE", "fc")
    assert settings_from(_parser().parse_args([])).profile == "fc"  # the env var when no flag


def test_a_subcommand_copy_keeps_the_value_given_before_it():
    parser = argparse.ArgumentParser(prog="tool", parents=[settings_parser()])
    sub = parser.add_subparsers(dest="cmd")
    after = sub.add_parser("show")
    add_settings_options(after, suppress=True)
    assert parser.parse_args(["--profile", "seed", "show"]).profile == "seed"
    assert parser.parse_args(["show", "--profile", "fc"]).profile == "fc"


def test_options_can_be_left_out():
    args = _parser(overrides=False, settings_file=False, verbosity=False).parse_args([])
    assert vars(args) == {"profile": None}


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (KitError("the server at http://x answered 500"), exitcodes.FAILED, "tool: error: the server at http://x answered 500"),
        (KitError("bad flag", exitcodes.USAGE), exitcodes.USAGE, "tool: error: bad flag"),
        (KeyboardInterrupt(), exitcodes.INTERRUPTED, "tool: interrupted"),
    ],
)
def test_known_errors_are_one_line_and_an_exit_code(capsys, exc, code, line):
    def body(args):
        raise exc

    assert run(_parser(), body, [], prog="tool") == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_settings_errors_are_usage_errors(capsys):
    assert run(_parser(), lambda a: settings_from(a) and 0, ["--profile", "bogus"], prog="tool") == exitcodes.USAGE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("tool: error: unknown profile 'bogus'; allowed: default")


def test_without_a_prog_the_line_starts_with_error(capsys):
    assert run(_parser(), lambda a: settings_from(a) and 0, ["--set", "nonsense"]) == exitcodes.USAGE
    assert capsys.readouterr().err.startswith("error: override 'nonsense' must look like section.key=value")


def test_an_unexpected_error_is_raised_not_hidden():
    def body(args):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        run(_parser(), body, [])


def test_body_result_is_the_exit_code():
    assert run(_parser(), lambda a: 3, []) == 3
