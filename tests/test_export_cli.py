"""``lsdseg export`` end to end with a tiny checkpoint: the files it writes, the trtexec command
it prints (and runs, with a stand-in trtexec), and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lsdseg.checkpoint import checkpoint_hash
from lsdseg.cli.main import main
from lsdseg.export.check import check_graph
from lsdseg.export.onnx import read_metadata

FAKE_TRTEXEC = """#!/bin/sh
# stands in for TensorRT's trtexec: logs its arguments, writes an "engine", prints the banner
echo "$@" > "$(dirname "$0")/args.txt"
for arg in "$@"; do
  case "$arg" in --saveEngine=*) printf 'engine bytes' > "${arg#--saveEngine=}" ;; esac
done
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
echo "[I] Selected Device: Orin"
echo "[I] Compute Capability: 8.7"
echo "&&&& PASSED TensorRT.trtexec [TensorRT v100300]"
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSDSEG_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "trtexec"
    script.write_text(FAKE_TRTEXEC)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_onnx_fp16_and_trtexec_run(capsys, tiny, tmp_path, fake_trtexec):
    out = tmp_path / "export"
    argv = ["export", "--onnx", "--half", "--trt", "--trtexec", "--run", "--weights", tiny]
    argv += ["--steps", "2", "--imgsz", "64", "--out", str(out), "--hypotheses-range", "2,4,8"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    stem = "tiny-s2-64px"
    assert sorted(p.name for p in out.iterdir()) == [
        f"{stem}-fp16.engine",
        f"{stem}-fp16.engine.json",
        f"{stem}-fp16.onnx",
        f"{stem}-fp32.onnx",
    ]
    for precision in ("fp32", "fp16"):
        graph = out / f"{stem}-{precision}.onnx"
        check_graph(graph)
        meta = read_metadata(graph)
        assert (meta["precision"], meta["steps"], meta["image_size"]) == (precision, "2", "64")
        assert meta["checkpoint_hash"] == checkpoint_hash(tiny)
    # the printed command, as trtexec received it (engine written to a temporary name first)
    command = next(line for line in printed.splitlines() if line.startswith("trtexec "))
    for part in (
        f"--onnx={out / stem}-fp16.onnx",  # strongly typed: the FP16 graph makes the FP16 engine
        f"--saveEngine={out / stem}-fp16.engine",
        "--stronglyTyped",
        "--minShapes=image:1x3x64x64,noise:1x2x4x8x8",
        "--optShapes=image:1x3x64x64,noise:1x4x4x8x8",
        "--maxShapes=image:4x3x64x64,noise:4x8x4x8x8",
        "--memPoolSize=workspace:4096",
        f"--timingCacheFile={out / 'timing.cache'}",
    ):
        assert part in command.split(), part
    assert "--fp16" not in command.split()  # deprecated in TensorRT 10.12, removed in 11
    received = (fake_trtexec / "args.txt").read_text()
    assert f"--saveEngine={out}/.{stem}-fp16.engine." in received
    sidecar = json.loads((out / f"{stem}-fp16.engine.json").read_text())
    assert sidecar["tensorrt"] == "10.3.0" and sidecar["gpu"] == "Orin"
    assert sidecar["compute_capability"] == "8.7" and sidecar["precision"] == "fp16"
    assert sidecar["hypotheses_range"] == [2, 4, 8] and sidecar["batch_range"] == [1, 1, 4]
    assert sidecar["onnx_metadata"]["steps"] == "2" and sidecar["onnx"] == f"{stem}-fp16.onnx"
    assert sidecar["profiles"][0]["noise"]["max"] == [4, 8, 4, 8, 8]


def _tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return True
    return False


def _old_checkpoint(tiny: str, tmp_path: Path) -> str:
    folder = tmp_path / "old"
    folder.mkdir()
    for f in Path(tiny).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "onxx"], "unknown export format 'onxx'; choose one of onnx, trt (did you"),
        ([], "nothing to export: add --onnx or --trt"),
        (["--onnx", "--eta", "0.5"], "--eta 0.5: the exported graph runs deterministic DDIM"),
        (["--onnx", "--steps", "0"], "--steps 0 must be between 1 and 1000"),
        (["--onnx", "--imgsz", "40"], "--imgsz 40: image_size=40 must be a multiple of 16"),
        (["--trt", "--trtexec", "--hypotheses-range", "8,1,16"], "1 <= MIN <= OPT <= MAX"),
        (["--trt", "--trtexec", "--batch-range", "a,b"], "--batch-range 'a,b': expected MIN,OPT"),
        (["--onnx", "--trtexec"], "--trtexec and --run go with --trt"),
        (["--trt", "--trtexec", "--workspace", "inf"], "--workspace inf must be between 0 and"),
        (["--trt", "--run"], "--run runs the trtexec command: add --trtexec"),
        (["--onnx", "--weights", "OLD"], "format_version=99; this lsdseg"),
        (["--onnx", "--weights", "MISSING"], "does not exist or is not a folder"),
        (["--onnx", "--out", "FILE"], "is a file, not a folder"),
        pytest.param(
            ["--trt"],
            'TensorRT is not installed: pip install "lsdseg[trt]"',
            marks=pytest.mark.skipif(not _tensorrt_missing(), reason="TensorRT is installed"),
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tiny, tmp_path, argv, message):
    out = tmp_path / "out"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    names = {"OLD": _old_checkpoint(tiny, tmp_path), "MISSING": str(tmp_path / "nope")}
    names["FILE"] = str(blocker)
    argv = [names.get(a, a) for a in argv]
    if "--weights" not in argv:
        argv += ["--weights", tiny]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    assert main(["export", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("lsdseg export: error:") and err.count("\n") == 1, err
    assert not out.exists()  # nothing written, not even a folder
    assert blocker.read_text() == "not a folder"


def test_misspelt_option_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--onxx"])
    assert exit_info.value.code == 2
    assert "did you mean --onnx?" in capsys.readouterr().err


def test_trtexec_that_fails_leaves_no_engine(capsys, tiny, tmp_path, fake_trtexec):
    (fake_trtexec / "trtexec").write_text("#!/bin/sh\necho 'ERROR: Parsing failed' >&2\nexit 3\n")
    out = tmp_path / "out"
    argv = ["export", "--trt", "--trtexec", "--run", "--weights", tiny, "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "trtexec failed with status 3: ERROR: Parsing failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["tiny-s1-32px-fp32.onnx"]


# ---------------------------------------------------------------- --backend onnx / trt elsewhere


def test_segment_evaluate_and_bench_run_the_onnx_backend(capsys, tiny, tmp_path):
    import cv2
    import numpy as np

    images = tmp_path / "data" / "images"
    masks = tmp_path / "data" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(2):
        image = np.full((40, 48, 3), 60, np.uint8)
        cv2.circle(image, (24, 20), 9, (90, 90, 220), -1)
        cv2.imwrite(str(images / f"{i}.png"), image)
        cv2.imwrite(str(masks / f"{i}.png"), (image[..., 2] > 200).astype(np.uint8) * 255)
    where = ["--project", str(tmp_path / "runs"), "--device", "cpu"]
    seg = ["segment", str(images), "--weights", tiny, "--backend", "onnx", "-k", "3", *where]
    assert main(seg) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    assert summary["settings"]["backend"] == "onnx" and summary["frames"] == 2
    evaluate = ["evaluate", "--data", str(tmp_path / "data"), "--weights", tiny, *where]
    assert main([*evaluate, "--backend", "onnx"]) == 0, capsys.readouterr().err
    bench = ["bench", "--weights", tiny, "--backend", "onnx", "--device", "cpu"]
    assert main([*bench, "--hypotheses", "2", "--steps", "1", "--repeats", "1"]) == 0
    assert "onnx" in capsys.readouterr().out
    graphs = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(graphs) == 1  # exported once, by the first command; the others found it


def test_temporal_with_an_exported_backend_is_one_line(capsys, tiny, tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    argv = ["segment", str(tmp_path), "--weights", tiny, "--backend", "onnx", "--temporal"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--temporal needs the previous frame's latents, which the onnx backend" in err
    assert err.count("\n") == 1 and not (tmp_path / "cache").exists()  # nothing exported
