"""``--cuda-graph``, ``--half`` and ``--precision`` on segment, evaluate, bench and serve.

On a CPU every one of them is refused in one line naming the fix. Where the CUDA checks are
lifted (monkeypatched) the graph runs through the stand-in capture of test_accel, so the
command line's wiring (warm-up captures, --temporal, what summary.json records) is tested too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_accel import EagerCapture

from lsdseg import accel
from lsdseg.cli import bench_cmd
from lsdseg.cli.errors import UserError
from lsdseg.cli.main import main
from lsdseg.cli.options import PRECISIONS


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(4):
        f = np.full((48, 64, 3), 70, np.uint8)
        cv2.circle(f, (20 + 4 * i, 24), 10, (40, 40, 210), -1)
        vw.write(f)
    vw.release()
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        img = np.full((40, 50, 3), 60, np.uint8)
        m = np.zeros((40, 50), np.uint8)
        cv2.circle(m, (25, 20), 8 + i, 255, -1)
        img[m > 0] = (90, 90, 220)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), m)
    return root


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lsdseg {argv[0]}: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cuda-graph"],
            "--cuda-graph needs a CUDA device, not cpu: run on an NVIDIA GPU (device cuda), or "
            "drop --cuda-graph",
        ),
        (["--half"], "--half needs a CUDA device, not cpu"),
        (["--precision", "bf16"], "--precision bf16 needs a CUDA device, not cpu"),
        (["--half", "--precision", "bf16"], "--half is --precision fp16, but --precision bf16"),
        (["--cuda-graph", "--backend", "onnx"], "--cuda-graph is for the torch and triton"),
        (["--half", "--backend", "trt"], "the trt backend runs its engines' precision"),
    ],
)
@pytest.mark.parametrize("command", ["segment", "evaluate", "serve"])
def test_what_cannot_run_here_is_one_line(
    capsys, tiny, video, data, tmp_path, command, args, message
):
    if command == "segment":
        argv = ["segment", str(video), "--weights", tiny, "--project", str(tmp_path / "runs")]
    elif command == "evaluate":
        argv = ["evaluate", "--data", str(data), "--weights", tiny]
        argv += ["--project", str(tmp_path / "runs")]
    else:
        argv = ["serve", "--weights", tiny]
    err = _one_line_error(capsys, [*argv, "--device", "cpu", *args])
    assert message in err
    assert not (tmp_path / "runs").exists()  # refused before any output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cuda-graph"], "--cuda-graph needs a CUDA device, not cpu"),
        (["--cuda-graph", "both"], "--cuda-graph needs a CUDA device, not cpu"),
        (["--half"], "--half needs a CUDA device, not cpu"),
        (["--precision", "fp32,bf16"], "--precision bf16 needs a CUDA device, not cpu"),
        (["--precision", "fp32,fp8"], "--precision 'fp32,fp8': 'fp8' is not one of fp32, fp16"),
        (["--half", "--precision", "bf16"], "--half is --precision fp16; give one of"),
        (["--backend", "onnx", "--cuda-graph"], "--cuda-graph is for the torch and triton"),
    ],
)
def test_bench_refuses_in_one_line_before_timing(capsys, tiny, args, message):
    assert message in _one_line_error(
        capsys, ["bench", "--weights", tiny, "--device", "cpu", *args]
    )


def test_segment_with_a_server_refuses_the_local_model_options(capsys, tiny, video, tmp_path):
    for option in (["--cuda-graph"], ["--half"], ["--precision", "fp16"]):
        argv = ["segment", str(video), "--server", "127.0.0.1:1", *option]
        err = _one_line_error(capsys, [*argv, "--project", str(tmp_path)])
        assert f"{option[0]} sets up a local model" in err


@pytest.fixture
def graphs_on_the_cpu(monkeypatch) -> list:
    """Lift the CUDA checks and give every Segmenter's graph the stand-in capture; the list
    collects the GraphRunners made."""
    made = []

    def graph_runner(inner):
        runner = accel.GraphRunner(inner, EagerCapture())
        made.append(runner)
        return runner

    monkeypatch.setattr("lsdseg.accel.check_supported", lambda *args: None)
    monkeypatch.setattr("lsdseg.segmenter.check_supported", lambda *args: None)
    monkeypatch.setattr("lsdseg.segmenter.GraphRunner", graph_runner)
    return made


def test_cuda_graph_refuses_eta_given_or_from_the_checkpoint(
    capsys, tiny, video, tmp_path, graphs_on_the_cpu
):
    project = ["--project", str(tmp_path / "runs"), "--device", "cpu"]
    argv = ["segment", str(video), "--weights", tiny, "--cuda-graph", *project]
    err = _one_line_error(capsys, [*argv, "--eta", "0.5"])
    assert "--cuda-graph needs --eta=0 (deterministic DDIM), got 0.5" in err
    assert "set --eta to 0, or drop --cuda-graph" in err
    # a checkpoint whose default eta is > 0, and no --eta
    folder = Path(tmp_path / "eta")
    config = json.loads((Path(tiny) / "config.json").read_text())
    config["model"]["sampler"]["eta"] = 0.3
    folder.mkdir()
    for f in Path(tiny).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    argv = ["segment", str(video), "--weights", str(folder), "--cuda-graph", *project]
    assert "got 0.3" in _one_line_error(capsys, argv)
    assert not graphs_on_the_cpu[-1].graphs  # nothing was captured
    assert not (tmp_path / "runs").exists()


def _rows(folder: Path) -> list[dict]:
    with open(folder / "records.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if "latency" not in k} for r in rows]


def test_segment_through_the_graph_records_what_ran(
    capsys, tiny, video, tmp_path, graphs_on_the_cpu, monkeypatch
):
    common = [
        "segment",
        str(video),
        "--weights",
        tiny,
        "-k",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]
    common += ["--temporal", "--temporal-t", "499"]
    assert main([*common, "--project", str(tmp_path / "eager")]) == 0
    assert not graphs_on_the_cpu
    from lsdseg.cli import pipeline

    at_the_first_frame = []
    run_pipeline = pipeline.run_pipeline

    def spy(*args, **kwargs):
        at_the_first_frame.append(graphs_on_the_cpu[0].captures)
        return run_pipeline(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_pipeline", spy)
    assert main([*common, "--project", str(tmp_path / "graph"), "--cuda-graph"]) == 0
    err = capsys.readouterr().err
    assert "backend torch, CUDA graph, device cpu" in err
    (runner,) = graphs_on_the_cpu
    # the fresh start and the warm start: both captured in the warm-up, replayed per frame
    assert at_the_first_frame == [2]
    assert sorted(key[3] or 0 for key in runner.graphs) == [0, 499] and runner.captures == 2
    assert _rows(tmp_path / "graph" / "exp") == _rows(tmp_path / "eager" / "exp")
    settings = json.loads((tmp_path / "graph" / "exp" / "summary.json").read_text())["settings"]
    assert settings["cuda_graph"] is True and settings["precision"] == "fp32"
    eager = json.loads((tmp_path / "eager" / "exp" / "summary.json").read_text())["settings"]
    assert eager["cuda_graph"] is False and eager["precision"] == "fp32"


def test_evaluate_records_the_precision_and_the_graph(
    capsys, tiny, data, tmp_path, graphs_on_the_cpu
):
    argv = ["evaluate", "--data", str(data), "--weights", tiny, "--device", "cpu"]
    argv += ["--backend", "torch"]  # the same backend with and without the graph
    assert main([*argv, "--project", str(tmp_path / "a")]) == 0
    assert main([*argv, "--project", str(tmp_path / "b"), "--cuda-graph"]) == 0
    # the settings that ran, apart from the metrics (precision is also a metric)
    a = json.loads((tmp_path / "a" / "exp" / "summary.json").read_text())["settings"]
    b = json.loads((tmp_path / "b" / "exp" / "summary.json").read_text())["settings"]
    assert (a["precision"], a["cuda_graph"], b["precision"], b["cuda_graph"]) == (
        "fp32",
        False,
        "fp32",
        True,
    )
    dice = [json.loads((tmp_path / r / "exp" / "summary.json").read_text())["dice"] for r in "ab"]
    assert dice[0] == dice[1] and graphs_on_the_cpu[0].captures == 1


def test_bench_plans_graph_and_half_rows_per_backend() -> None:
    cuda = torch.device("cuda")
    skipped: dict[str, str] = {}
    rows = bench_cmd.plan_rows(
        ["torch", "onnx"], ["fp32", "fp16"], [False, True], cuda, True, skipped
    )
    assert rows == [
        ("torch", "fp32", False),
        ("torch", "fp32", True),
        ("torch", "fp16", False),
        ("torch", "fp16", True),
        ("onnx", "fp32", False),
    ]
    assert set(skipped) == {"onnx + CUDA graph", "onnx fp16", "onnx fp16 + CUDA graph"}
    assert "--precision fp16 is autocast for the torch and triton" in skipped["onnx fp16"]
    with pytest.raises(UserError, match="--half is autocast for the torch and triton backends"):
        bench_cmd.plan_rows(["onnx"], ["fp16"], [False], cuda, False, {}, half=True)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):  # the CPU: never skipped
        bench_cmd.plan_rows(["torch"], ["fp32"], [True], torch.device("cpu"), True, {})


def test_bench_json_has_each_rows_settings_and_is_written_as_it_goes(
    capsys, tiny, tmp_path, monkeypatch
):
    out = tmp_path / "bench.json"
    argv = ["bench", "--weights", tiny, "--backend", "torch", "--device", "cpu", "--json", str(out)]
    argv += ["--hypotheses", "1,2", "--steps", "1", "--warmup", "0", "--repeats", "1"]
    measure = bench_cmd.measure
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a run cut short, as a slot's timeout would
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_cmd, "measure", second_fails)
    assert main(argv) == 130
    rows = json.loads(out.read_text())["results"]
    assert [(r["hypotheses"], r["precision"], r["cuda_graph"]) for r in rows] == [
        (1, "fp32", False)
    ]


def test_the_clis_precisions_are_the_librarys() -> None:
    assert PRECISIONS == accel.PRECISIONS


def test_bench_rows_with_the_graph_come_from_a_graphed_segmenter(
    capsys, tiny, tmp_path, graphs_on_the_cpu
):
    out = tmp_path / "bench.json"
    argv = ["bench", "--weights", tiny, "--backend", "torch", "--device", "cpu", "--json", str(out)]
    argv += ["--hypotheses", "2", "--steps", "1", "--warmup", "1", "--repeats", "2"]
    assert main([*argv, "--cuda-graph", "both"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["backend"], r["cuda_graph"]) for r in rows] == [("torch", False), ("torch", True)]
    (runner,) = graphs_on_the_cpu
    assert runner.captures == 1 and runner.capture.replays == 3  # warm-up + 2 timed calls
    table = [line for line in capsys.readouterr().out.splitlines() if "│ torch" in line]
    assert [line.split("│")[3].strip() for line in table] == ["-", "CUDA"]
