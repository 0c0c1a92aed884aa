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


def _write_frames(folder, n=3, shape=(48, 64, 3)):
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), np.full(shape, 40 * i, np.uint8))
    return sorted(folder.iterdir())


def test_segment_refuses_outputs_over_its_inputs(capsys, tiny, tmp_path):
    import cv2
    import numpy as np

    frames = _write_frames(tmp_path / "frames")
    before = {p: p.read_bytes() for p in frames}
    argv = ["segment", str(tmp_path / "frames"), "--weights", tiny, "-k", "2"]
    rc = main([*argv, "--project", str(tmp_path), "--name", "frames", "--exist-ok"])
    err = capsys.readouterr().err
    assert rc == 1 and "holds the input" in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in frames} == before  # the inputs are untouched
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["0.png", "1.png", "2.png"]

    clip = tmp_path / "exp" / "clip.mp4"  # the output video would be exp/clip.mp4 itself
    clip.parent.mkdir()
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(5):
        vw.write(np.full((48, 64, 3), 30 * i, np.uint8))
    vw.release()
    size = clip.stat().st_size
    rc = main(["segment", str(clip), "--weights", tiny, "--project", str(tmp_path), "--exist-ok"])
    err = capsys.readouterr().err
    assert rc == 1 and f"holds the input {clip}" in err, err
    assert clip.stat().st_size == size and sorted(os.listdir(clip.parent)) == ["clip.mp4"]
    # a new run folder (no --exist-ok) beside the input is fine
    rc = main(["segment", str(clip), "--weights", tiny, "--project", str(tmp_path)])
    assert rc == 0 and (tmp_path / "exp2" / "clip.mp4").is_file()


def test_evaluate_refuses_a_run_folder_that_holds_its_data(capsys, tiny, tmp_path):
    _write_frames(tmp_path / "exp" / "data" / "images")
    _write_frames(tmp_path / "exp" / "data" / "masks", shape=(48, 64))
    argv = ["evaluate", "--data", str(tmp_path / "exp" / "data"), "--weights", tiny]
    rc = main([*argv, "--project", str(tmp_path), "--exist-ok", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "holds the input" in err, err
    assert sorted(os.listdir(tmp_path / "exp")) == ["data"]
