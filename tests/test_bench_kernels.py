"""benchmarks/bench_kernels.py's timing rules, on the CPU: inputs rotated past the L2, many
calls per synchronisation, and per-call numbers in the summary."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import load_script


def _bench():
    return load_script("benchmarks/bench_kernels.py")


def test_bandwidth_inputs_exceed_the_l2_three_times_over():
    bench = _bench()
    assert bench.l2_bytes(torch.device("cpu")) == 60 * 2**20  # the H200's, when unknown
    made = []
    sets = bench.input_sets(lambda i: made.append(i) or (i,), 32 * 2**20, torch.device("cpu"), True)
    assert len(sets) == 6 and len(sets) * 32 * 2**20 >= 3 * 60 * 2**20 and made == list(range(6))
    assert len(bench.input_sets(lambda i: (i,), 2**10, torch.device("cpu"), True)) == 256  # cap
    assert bench.input_sets(lambda i: (i,), 2**10, torch.device("cpu"), False) == [(0,)]


class FakeBenchmark:
    """pytest-benchmark's fixture as far as time_calls uses it: ``rounds`` rounds of ``fn``."""

    def __init__(self, rounds: int = 3) -> None:
        self.rounds, self.extra_info = rounds, {}
        self.stats = None

    def __call__(self, fn):
        for _ in range(self.rounds):
            fn()
        self.stats = SimpleNamespace(stats=SimpleNamespace(median=0.01))


def test_a_round_is_many_calls_over_the_rotation_and_one_sync(monkeypatch):
    bench = _bench()
    events: list = []
    sets = [("a",), ("b",), ("c",)]

    def fn(name):
        events.append(name)

    def sync():
        events.append("sync")

    monkeypatch.setattr(bench, "calls_per_round", lambda fn, sets, sync: 4)
    benchmark = FakeBenchmark(rounds=3)
    per_call = bench.time_calls(benchmark, fn, sets, sync)
    rounds = [r.split() for r in " ".join(events).split("sync") if r.strip()]
    assert rounds == [["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"]]
    assert events.count("sync") == 3  # one per round, not one per call
    assert benchmark.extra_info["calls_per_round"] == 4 and per_call == 0.01 / 4
    assert benchmark.extra_info["input_sets"] == 3


def test_calls_per_round_fill_about_a_millisecond(monkeypatch):
    bench = _bench()
    clock = [0.0]
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def quarter_ms(_):
        clock[0] += 2.5e-4

    assert bench.calls_per_round(quarter_ms, [(0,)], lambda: None) == 4
    assert bench.calls_per_round(lambda _: None, [(0,)], lambda: None) == bench.MAX_CALLS


def test_the_summary_reports_per_call_times():
    summary = load_script("benchmarks/kernel_bench_summary.py")
    row = {
        "op": "copy",
        "provider": "torch",
        "shape": [32, 128, 64, 64],
        "dtype": "torch.float16",
        "calls_per_round": 10,
    }
    norm = dict(row, op="group_norm_silu", provider="triton", groups=32, stage="large",
                modulated=True, silu=True)  # fmt: skip
    data = {
        "benchmarks": [
            {"extra_info": row, "stats": {"median": 1e-3}},
            {"extra_info": norm, "stats": {"median": 2e-3}},
        ]
    }
    text = summary.summarize(data, {})
    # 32 MiB moved twice in 0.1 ms per call: 671 GB/s, and the norm at half that, 50% of copy
    assert "| 671 | 50% |" in text
