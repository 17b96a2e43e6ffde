"""Every option of every subcommand, given a bad value, is one line naming the option (exit 2).

The options are found by walking the real parser, so a subcommand or option added later is
covered without editing this file; an option that takes a plain ``int``/``float``/``Path``
(no validation) fails the first test.
"""

from __future__ import annotations

import argparse
import json

import pytest

from tritonfleet.builder.cli import args as cli_args
from tritonfleet.builder.cli import main, make_parser

NUMBERS = {cli_args.positive_int: ["0", "-1", "abc", "1.5"], cli_args.positive_float: ["0", "-2", "abc"],
           cli_args.non_negative_float: ["-0.5", "x"], cli_args.port: ["-1", "70000", "http"],
           cli_args.int_list: ["0", "1,-2", "a,b", ","], cli_args.precision_list: ["fp8", "fp32,int4", ","],
           cli_args.non_negative_int: ["-1", "x", "0.5"], cli_args.percent: ["-1", "101", "ten"],
           cli_args.probability: ["0", "1.5", "p"], cli_args.points: ["-101", "200", "pt"]}
FILES = (cli_args.existing_file, cli_args.existing_dir, cli_args.json_file)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options() -> list[tuple[str, argparse.Action]]:
    return [(name, action) for name, sub in subparsers().items() for action in sub._actions
            if action.option_strings and action.type is not None]


def positionals(sub: argparse.ArgumentParser, tmp_path) -> list[str]:
    """Valid placeholders for the required positionals of a subcommand."""
    values = []
    for action in sub._actions:
        if action.option_strings or action.nargs == "?" or isinstance(action, argparse._SubParsersAction):
            continue
        values.append(str(tmp_path) if action.type in (cli_args.existing_dir,) else
                      action.choices[0] if action.choices else "x")
    return values


def test_every_typed_option_is_validated():
    plain = [f"{name} {action.option_strings[0]}" for name, action in options()
             if action.type in (int, float) or (action.type not in NUMBERS and action.type not in FILES
                                                and action.type is not str and getattr(action.type, "__module__", "")
                                                != "pathlib")]
    assert plain == [], "give these options a validated type from tritonfleet.builder.cli.args"


@pytest.mark.parametrize("case", [f"{n} {a.option_strings[0]}" for n, a in options()
                                  if a.type in NUMBERS or a.type in FILES])
def test_a_bad_value_is_one_line_naming_the_option(case, tmp_path, capsys):
    name, option = case.split()
    sub = subparsers()[name]
    action = next(a for a in sub._actions if option in a.option_strings)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    values = NUMBERS.get(action.type) or ([str(tmp_path / "missing.json"), str(bad_json)]
                                          if action.type is cli_args.json_file else [str(tmp_path / "missing")])
    for value in values:
        code = main([name, *positionals(sub, tmp_path), option, value])
        err = capsys.readouterr().err
        assert code == 2, (value, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"tritonfleet {name}: error: argument {option}: "), err
        assert err.rstrip().endswith(f"(see tritonfleet {name} --help)"), err


@pytest.mark.parametrize("argv, message", [
    (["report", "MISSING"], "tritonfleet report: error: argument results: file not found: MISSING"),
    (["verify", "MISSING"], "tritonfleet verify: error: argument repository: folder not found: MISSING"),
    (["rollback", "MISSING", "m"], "tritonfleet rollback: error: argument repository: folder not found: MISSING"),
    (["bench", "--engine", "wrk"], "tritonfleet bench: error: argument --engine: invalid choice: 'wrk'"),
    (["frobnicate"], "tritonfleet: error: argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_bad_positionals_and_choices_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_unreadable_report_json_is_named(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"meta": {}}))  # valid JSON, not a benchmark
    assert main(["report", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {path} is not a tritonfleet benchmark JSON ('models'); make one with 'tritonfleet bench'" in err


def test_a_window_of_zero_is_refused_before_any_server_starts(tmp_path, capsys):
    """The README promise that ended in a traceback: tritonfleet bench REPO --window 0."""
    assert main(["bench", str(tmp_path), "--window", "0"]) == 2
    assert capsys.readouterr().err == ("tritonfleet bench: error: argument --window: must be > 0, got '0' "
                                       "(see tritonfleet bench --help)\n")
