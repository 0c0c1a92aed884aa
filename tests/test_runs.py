"""``lsdseg.cli.runs``: output paths are checked before any work, in one line naming them."""

from __future__ import annotations

import os

import pytest

import lsdseg
import lsdseg.export.onnx
import lsdseg.segmenter
from lsdseg.cli import bench_cmd
from lsdseg.cli.errors import UserError
from lsdseg.cli.main import main
from lsdseg.cli.runs import check_writable


def test_check_writable_creates_nothing_and_names_the_blocking_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    check_writable(tmp_path / "new" / "deeper", "--out")  # fine: it can be created
    check_writable(tmp_path / "new" / "x.json", "--json", folder=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    with pytest.raises(UserError, match=f"--out {blocker}: is a file, not a folder"):
        check_writable(blocker, "--out")
    with pytest.raises(UserError, match=f"{blocker} is a file, so nothing can be written"):
        check_writable(blocker / "sub" / "x.json", "--json", folder=False)
    with pytest.raises(UserError, match=f"--json {tmp_path}: is a folder; give a file name"):
        check_writable(tmp_path, "--json", folder=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UserError, match=f"{locked} is not writable"):
        check_writable(locked / "runs", "--project")


def _no_work(*args, **kwargs):
    raise AssertionError("the work started before the output path was checked")


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["segment", "{image}", "--project", "{blocked}/runs"], "--project"),
        (["evaluate", "--data", "{tmp}", "--project", "{blocked}"], "--project"),
        (["train", "--data", "{tmp}", "--out", "{blocked}/run"], "--out"),
        (["bench", "--json", "{blocked}/bench.json"], "--json"),
        (["export", "--onnx", "--out", "{blocked}/export"], "--out"),
        (
            ["export", "--onnx", "--out", "{tmp}/ok", "--triton-repo", "{blocked}/repo"],
            "--triton-repo",
        ),
    ],
)
def test_an_output_under_a_file_fails_before_the_work(capsys, tmp_path, monkeypatch, argv, option):
    import cv2
    import numpy as np

    # lsdseg.load first: lsdseg resolves it lazily from lsdseg.segmenter, and resolving it after
    # the patch below would cache the patched function in lsdseg for every later test
    for target, name in (
        (lsdseg, "load"),
        (lsdseg.segmenter, "load"),
        (lsdseg.segmenter, "resolve_device"),
        (bench_cmd, "measure"),
        (lsdseg.export.onnx, "resolve_weights"),
    ):
        monkeypatch.setattr(target, name, _no_work)
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    argv = [a.format(tmp=tmp_path, blocked=blocked, image=image) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"error: {option} {blocked}" in err and "is a file" in err and "Errno" not in err
    assert not (tmp_path / "ok").exists()
