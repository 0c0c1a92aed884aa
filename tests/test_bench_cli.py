"""``lsdseg bench`` (a user's own latency table) and ``benchmarks/check.py`` (the regression
check), with a tiny checkpoint and synthetic benchmark files: nothing here asserts a timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

from lsdseg.cli.bench_cmd import backend_problem, measure, parse_ints
from lsdseg.cli.errors import UserError
from lsdseg.cli.main import main
from lsdseg.segmenter import load

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    return load_script(f"benchmarks/{name}.py")


def _check_module():
    return _script("check")


def test_bench_writes_a_table_and_json(capsys, tiny, tmp_path):
    out = tmp_path / "sub" / "bench.json"
    argv = ["bench", "--weights", tiny, "--backend", "torch", "--device", "cpu"]
    code = main(
        [*argv, "--hypotheses", "1,3", "--steps", "1,2", "--repeats", "2", "--json", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "mean ms" in printed and "p95 ms" in printed and "fps" in printed
    data = json.loads(out.read_text())
    assert data["machine"]["torch"] == torch.__version__
    configs = [(r["backend"], r["hypotheses"], r["steps"]) for r in data["results"]]
    assert configs == [("torch", 1, 1), ("torch", 3, 1), ("torch", 1, 2), ("torch", 3, 2)]
    for r in data["results"]:
        assert r["calls"] == 2
        assert 0 < r["median_ms"] <= r["p95_ms"] + 1e-9
        assert r["fps"] == pytest.approx(1000.0 / r["mean_ms"])
        assert r["peak_memory_mb"] is None or r["peak_memory_mb"] > 0
    assert not list(out.parent.glob(".*.tmp"))  # written atomically


def test_measure_counts_the_calls(tiny):
    seg = load(tiny, device="cpu")
    calls = []
    original = seg.__call__

    class Counting:
        backend, device, config = seg.backend, seg.device, seg.config
        precision, cuda_graph = seg.precision, seg.cuda_graph

        def __call__(self, *args, **kwargs):
            calls.append(kwargs["hypotheses"])
            return original(*args, **kwargs)

    m = measure(Counting(), hypotheses=2, steps=1, warmup=1, repeats=3)
    assert calls == [2, 2, 2, 2] and m.calls == 3 and m.hypotheses == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hypotheses", "1,x"], "--hypotheses '1,x': expected comma-separated integers"),
        (["--steps", "0"], "--steps '0': 0 must be between 1 and 1000"),
        (["--backend", "tensorrt"], "--backend 'tensorrt': expected one of auto, torch, triton"),
        (["--backend", "trt"], "--backend trt: cannot run here"),
        (["--repeats", "0"], "--repeats 0: must be at least 1"),
    ],
)
def test_bench_bad_input_is_one_line(capsys, tiny, argv, message):
    assert main(["bench", "--weights", tiny, "--device", "cpu", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_json_that_is_a_folder(capsys, tiny, tmp_path):
    assert main(["bench", "--weights", tiny, "--json", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_parse_ints_drops_duplicates_and_keeps_order():
    assert parse_ints("8,1,8,16", "--hypotheses", 1, 256) == [8, 1, 16]
    with pytest.raises(UserError, match="between 1 and 256"):
        parse_ints("300", "--hypotheses", 1, 256)


def test_triton_and_trt_need_cuda_for_timing():
    cpu = torch.device("cpu")
    assert backend_problem("torch", cpu) is None
    assert "CUDA" in backend_problem("triton", cpu)
    assert "CUDA" in backend_problem("trt", cpu)


def _bench_json(path: Path, medians: dict[str, float]) -> Path:
    benchmarks = [{"fullname": name, "stats": {"median": m}} for name, m in medians.items()]
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


def test_check_flags_only_medians_beyond_the_tolerance(tmp_path, capsys):
    check = _check_module()
    base = _bench_json(tmp_path / "base.json", {"a": 0.100, "b": 0.050, "gone": 1.0})
    ok = _bench_json(tmp_path / "ok.json", {"a": 0.124, "b": 0.040, "new": 2.0})
    slow = _bench_json(tmp_path / "slow.json", {"a": 0.126, "b": 0.050})
    assert check.main(["--baseline", str(base), "--from-json", str(ok)]) == 0
    out = capsys.readouterr().out
    assert "new (not in the baseline): new" in out and "not run here: gone" in out
    assert check.main(["--baseline", str(base), "--from-json", str(slow)]) == 1
    captured = capsys.readouterr()
    assert "SLOWER" in captured.out and "1 of 2 benchmarks" in captured.err
    assert (
        check.main(["--baseline", str(base), "--from-json", str(slow), "--tolerance", "0.3"]) == 0
    )


def test_check_without_a_baseline_says_how_to_make_one(tmp_path, capsys):
    check = _check_module()
    missing = tmp_path / "none.json"
    assert check.main(["--baseline", str(missing), "--from-json", str(missing)]) == 2
    assert "--update" in capsys.readouterr().err


def test_check_update_saves_the_run_as_baseline(tmp_path):
    check = _check_module()
    run = _bench_json(tmp_path / "run.json", {"a": 0.1})
    target = tmp_path / "baselines" / "cpu-test.json"
    target.parent.mkdir()
    assert check.main(["--baseline", str(target), "--from-json", str(run), "--update"]) == 0
    assert check.medians(target) == {"a": 0.1}


def test_the_saved_cpu_baselines_cover_the_suites():
    baselines = sorted((ROOT / "benchmarks" / "baselines").glob("cpu-*.json"))
    if not baselines:
        pytest.skip("no CPU baseline saved yet")
    for baseline in baselines:
        names = _check_module().medians(baseline)
        for suite in ("bench_segmenter", "bench_components", "bench_video"):
            assert any(suite in n for n in names), (baseline.name, suite)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Intel(R) Xeon(R) Processor", "intel-xeon"),
        ("AMD EPYC 7763 64-Core Processor", "amd-epyc-7763-64-core"),
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
        ("x86_64", "x86-64"),
    ],
)
def test_machine_classes_are_slugs_of_the_model_name(name, expected):
    assert _check_module().slug(name) == expected


def test_a_cpu_machine_class_names_cores_and_model(monkeypatch):
    check = _check_module()
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("lsdseg.card.cpu_name", lambda: "AMD EPYC 7B13")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert check.machine_class() == "cpu-2core-amd-epyc-7b13"


def _peer_json(path: Path, step_s: float, frame_s: float, timesteps: int = 1000) -> Path:
    benchmarks = [
        {
            "name": "test_peer_denoising_step",
            "stats": {"median": step_s},
            "extra_info": {"timesteps": timesteps},
        },
        {"name": "test_lsdseg_frame", "stats": {"median": frame_s}, "extra_info": {}},
    ]
    path.write_text(json.dumps({"benchmarks": benchmarks, "machine_info": {}}))
    return path


def test_peer_report_extrapolates_the_sample_and_divides(tmp_path, capsys):
    report = _script("peer_report")
    r = report.ratio_rows(json.loads(_peer_json(tmp_path / "p.json", 0.5, 0.08).read_text()))
    assert r["peer_sample_s"] == pytest.approx(500.0)
    assert r["frames_per_peer_sample"] == pytest.approx(500.0 / 0.08)
    r = report.ratio_rows(json.loads(_peer_json(tmp_path / "q.json", 0.5, 0.08, 50).read_text()))
    assert r["peer_sample_s"] == pytest.approx(25.0)
    assert report.main([str(tmp_path / "p.json")]) == 0
    assert "6250" in capsys.readouterr().out


def test_peer_report_without_the_peer_benchmark_says_so(tmp_path, capsys):
    report = _script("peer_report")
    path = tmp_path / "skipped.json"
    path.write_text(json.dumps({"benchmarks": []}))
    assert report.main([str(path)]) == 2
    assert "did the peer suite skip" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.json")]) == 2
