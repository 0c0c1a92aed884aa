"""``lsdseg bench --compare`` and :func:`lsdseg.compare.interleaved_ms`: two weights timed
alternately in one process. Nothing here asserts a timing of the machine: the clock is fake, or
only the structure of the output is checked."""

from __future__ import annotations

import json

import pytest

from lsdseg.cli.bench_compare import ENCODER, _steps
from lsdseg.cli.main import main
from lsdseg.compare import interleaved_ms


def test_interleaved_ms_alternates_the_models_and_takes_medians() -> None:
    clock, order = [0.0], []

    def call(model: str, ms: list[float]):
        left = iter(ms * 100)

        def fn() -> None:
            order.append(model)
            clock[0] += next(left) / 1e3

        return fn

    calls = [{"x": call("a", [1.0, 3.0, 2.0])}, {"x": call("b", [5.0])}]
    out = interleaved_ms(calls, rounds=4, repeats=3, warmup=2, clock=lambda: clock[0])
    # warm-up a a b b, then rounds a b | b a | a b | b a of three calls each
    assert order[:4] == ["a", "a", "b", "b"]
    blocks = [order[i] for i in range(4, len(order), 3)]
    assert blocks == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert out[1] == {"x": pytest.approx(5.0)}
    assert 1.0 <= out[0]["x"] <= 3.0
    with pytest.raises(ValueError, match="rounds=0"):
        interleaved_ms(calls, rounds=0)
    with pytest.raises(ValueError, match="same calls"):
        interleaved_ms([{"x": calls[0]["x"]}, {"y": calls[1]["x"]}], rounds=1)


def test_steps_default_means_each_checkpoints_own() -> None:
    assert _steps("1,default") == [1, None]
    assert _steps("2,4") == [2, 4]
    assert _steps("default") == [None]


def test_bench_compare_times_both_weights_and_writes_json(capsys, tiny, twin, tmp_path) -> None:
    out = tmp_path / "cmp.json"
    argv = ["bench", "--weights", tiny, "--compare", twin, "--device", "cpu", "--json", str(out)]
    code = main([*argv, "--rounds", "2", "--repeats", "1", "--warmup", "0", "--hypotheses", "1,2"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "2 rounds x 1 calls, Segmenter backend torch" in printed
    assert "default steps: each checkpoint's own (A 1, B 1)" in printed
    data = json.loads(out.read_text())
    names = [r["call"] for r in data["results"]]
    assert names == [
        ENCODER,
        "Segmenter call, K = 1, 1 step",
        "Segmenter call, K = 2, 1 step",
        "Segmenter call, K = 1, default steps",
        "Segmenter call, K = 2, default steps",
    ]
    for r in data["results"]:
        assert r["a_ms"] > 0 and r["b_ms"] > 0
        assert r["b_over_a"] == pytest.approx(r["b_ms"] / r["a_ms"])
    assert (data["weights"], data["compare"], data["backend"]) == (tiny, twin, "torch")
    assert (data["rounds"], data["repeats"]) == (2, 1)


@pytest.mark.parametrize(
    "args",
    [
        ["--compare", "{tiny}"],  # the same weights
        ["--compare", "{tmp}/missing"],
        ["--compare", "{twin}", "--backend", "all"],
        ["--compare", "{twin}", "--backend", "torch,onnx"],
        ["--compare", "{twin}", "--backend", "trt"],  # needs CUDA
        ["--compare", "{twin}", "--precision", "fp32,fp16"],
        ["--compare", "{twin}", "--rounds", "0"],
        ["--compare", "{twin}", "--repeats", "0"],
        ["--compare", "{twin}", "--steps", "0"],
        ["--compare", "{twin}", "--server", "localhost:8000"],
        ["--compare", "{twin}:ema"],  # no training state
        ["--rounds", "3"],  # an option of --compare without it
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(cli_error, tiny, twin, tmp_path, args) -> None:
    argv = ["bench", "--weights", tiny, "--device", "cpu", "--rounds", "1", "--repeats", "1"]
    argv = argv[:-4] if "--rounds" in args or "--repeats" in args else argv
    cli_error(argv + [a.format(tmp=tmp_path, tiny=tiny, twin=twin) for a in args])
