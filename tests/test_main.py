"""``lsdseg.cli.main``: the parser's "did you mean" suggestions."""

from __future__ import annotations

import pytest

from lsdseg.cli.main import main


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        # the option of another sub-command is not suggested: segment has no --save-vis
        (["segment", "x", "--save-vis"], "(did you mean --save-masks?)"),
        (["evaluate", "--data", "d", "--hypothesis", "4"], "(did you mean --hypotheses?)"),
        (["segment", "x", "--hypotheses=3", "--sead", "1"], "(did you mean --seed?)"),
        (["segment", "x", "-v"], "(-v is an option of lsdseg itself: put it before the command)"),
        (["val", "--data", "d"], "(did you mean 'evaluate'?)"),
        (["predict", "x"], "(did you mean 'segment'?)"),
        (["benchmark"], "(did you mean 'bench'?)"),
        (["segmnet", "x"], "(did you mean 'segment'?)"),
        (["segment", "x", "--backend", "onx"], "(did you mean 'onnx'?)"),
    ],
)
def test_suggestions(capsys, argv, hint):
    err = usage_error(capsys, argv)
    assert err.rstrip().endswith(hint), err


def test_unknown_options_name_their_sub_command_and_suggest_only_its_options(capsys):
    err = usage_error(capsys, ["evaluate", "--data", "d", "-k", "2"])
    # evaluate has no -k (segment's alias of --hypotheses): nothing close to suggest
    assert err == "lsdseg evaluate: error: unrecognized arguments: -k 2\n"


def test_export_format_names_of_other_tools(capsys):
    assert main(["export", "--format", "engine"]) == 1
    err = capsys.readouterr().err
    assert err.rstrip().endswith("choose one of onnx, trt (did you mean 'trt'?)"), err
