"""scripts/hostile_replay.py: the sweep's worst cases replay, once, on a few quick cases."""

from __future__ import annotations

from conftest import load_script


def test_the_replay_runs_and_reports_each_case(capsys):
    replay = load_script("scripts/hostile_replay.py")
    assert replay.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "bomb-png-30000-grey" in names and "output-over-input-video" in names
    assert replay.main(["--only", "sparse"]) == 0  # a 3 GB sparse PNG, refused unread
    out = capsys.readouterr().out
    assert "ok   bomb-sparse-3gb-png" in out and "1 of 1 cases hold" in out, out
    assert replay.main(["--only", "no-such-case"]) == 1
