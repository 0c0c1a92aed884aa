"""Markdown tables from ``benchmarks/bench_kernels.py``'s pytest-benchmark JSON, and the targets.

Used by ``scripts/gpu_checks.py``; also on its own::

    python3 benchmarks/kernel_bench_summary.py bench_kernels.json [env.json] > summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "NOT met")


def summarize(data: dict, env_info: dict) -> str:
    """Markdown tables of bench_kernels.py results and the issue's four targets."""
    by_op: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info", {}))
        # a round of bench_kernels.py runs calls_per_round calls and one sync: per call
        info["median"] = b["stats"]["median"] / info.get("calls_per_round", 1)
        by_op.setdefault(info.get("op", "?"), []).append(info)

    gpu = env_info.get("gpu") or data.get("machine_info", {}).get("gpu") or "?"
    lines = [
        f"GPU: {gpu}; torch {env_info.get('torch', '?')}, triton {env_info.get('triton', '?')}, "
        f"CUDA {env_info.get('cuda', '?')}, Python {env_info.get('python', '?')}; "
        f"{env_info.get('date', '?')}; commit {env_info.get('git', '?')}. Medians per call of "
        "pytest-benchmark rounds of many calls and one sync each; bandwidth cases cycle "
        "through inputs three times the L2's size.",
        "",
    ]
    targets: list[str] = []

    # GroupNorm + SiLU
    norms: dict[tuple, dict[str, float]] = {}
    meta: dict[tuple, dict] = {}
    for r in by_op.get("group_norm_silu", []):
        key = (
            r.get("stage"),
            tuple(r["shape"]),
            r["groups"],
            r.get("modulated"),
            r.get("silu"),
            r.get("dtype"),
        )
        norms.setdefault(key, {})[r["provider"]] = r["median"]
        meta[key] = r
    copies = {(tuple(r["shape"]), r["dtype"]): r["median"] for r in by_op.get("copy", [])}
    model_rows, large_rows, speedups, fractions = [], [], [], []
    for key, t in norms.items():
        stage, shape, groups, modulated, silu, dtype = key
        nbytes = 2 * _numel(shape) * (4 if dtype == "torch.float32" else 2)
        gbps = _ratio(nbytes / 1e9, t.get("triton"))
        vs_torch = _ratio(t.get("torch"), t.get("triton"))
        vs_ops = _ratio(t.get("torch_ops"), t.get("triton"))
        name = f"{'x'.join(map(str, shape))} g{groups}" + (" +scale/shift" if modulated else "")
        name += "" if silu else " (no SiLU)"
        timings = [_us(t.get(p)) for p in ("torch", "torch_ops", "triton", "triton_split")]
        if stage == "large":
            copy = copies.get((shape, dtype))
            copy_gbps = _ratio(nbytes / 1e9, copy)
            best = min(v for p, v in t.items() if p.startswith("triton"))
            frac = _ratio(copy, best)
            fractions.append((frac, f"{name} {dtype}"))
            large_rows.append(
                [
                    name,
                    str(dtype),
                    *timings,
                    _fmt(gbps, ".0f"),
                    _fmt(copy_gbps, ".0f"),
                    _fmt(frac and 100 * frac, ".0f", "%"),
                ]
            )
        else:
            speedups.append((vs_torch, f"{stage} {name}"))
            calls = str(meta[key].get("calls_per_frame", "-"))
            model_rows.append(
                [
                    stage,
                    name,
                    calls,
                    *timings,
                    _fmt(gbps, ".1f"),
                    _fmt(vs_torch, ".2f", "x"),
                    _fmt(vs_ops, ".2f", "x"),
                ]
            )
    head = ["torch eager us", "torch ops us", "triton us", "triton split us"]
    if model_rows:
        lines += ["### GroupNorm+SiLU at the model's shapes (float32, K=8)", ""]
        lines += _table(
            [
                "stage",
                "shape",
                "calls/frame",
                *head,
                "triton GB/s",
                "vs torch eager",
                "vs torch ops",
            ],
            model_rows,
        )
        lines.append("")
        measured = [s for s in speedups if s[0] is not None]
        worst = min(measured) if measured else None
        ok = None if worst is None else worst[0] >= 1.5
        targets.append(
            f"- GroupNorm+SiLU >= 1.5x torch eager at the model's shapes: "
            f"{_verdict(ok)} (lowest {_fmt(worst and worst[0], '.2f', 'x')}"
            f"{', ' + worst[1] if worst else ''})"
        )
    if large_rows:
        lines += ["### GroupNorm+SiLU at large shapes (with timestep scale/shift)", ""]
        lines += _table(
            ["shape", "dtype", *head, "triton GB/s", "copy GB/s", "best triton / copy"], large_rows
        )
        lines.append("")
        measured = [f for f in fractions if f[0] is not None]
        worst = min(measured) if measured else None
        ok = None if worst is None else worst[0] >= 0.7
        targets.append(
            f"- GroupNorm+SiLU >= 70% of copy bandwidth at large shapes: {_verdict(ok)} "
            f"(lowest {_fmt(worst and 100 * worst[0], '.0f', '%')}"
            f"{', ' + worst[1] if worst else ''})"
        )

    # attention
    attn: dict[tuple, dict[str, float]] = {}
    sweep_rows = []
    for r in by_op.get("attention", []):
        shape = (r["batch"], r["heads"], r["l_q"], r["l_k"], r["head_dim"])
        if r.get("stage") == "config sweep":
            cfg = (
                f"{r.get('block_m')}x{r.get('block_n')}, {r.get('num_warps')} warps, "
                f"{r.get('num_stages')} stages"
            )
            sweep_rows.append([cfg, _ms(r["median"]), _fmt(_tflops(shape, r["median"]), ".0f")])
            continue
        attn.setdefault((r.get("stage"), shape, r["dtype"]), {})[r["provider"]] = r["median"]
    rows, target_ratio = [], None
    for (stage, shape, dtype), t in attn.items():
        ratio = _ratio(t.get("triton"), t.get("sdpa_flash"))
        if stage == "large" and shape[2:] == (1024, 1024, 64) and dtype == "torch.float16":
            target_ratio = ratio
        rows.append(
            [
                stage,
                "x".join(map(str, shape[:3])) + f" d{shape[4]}",
                dtype,
                *[_ms(t.get(p)) for p in ("torch", "sdpa", "sdpa_flash", "triton")],
                _fmt(_tflops(shape, t.get("triton")), ".0f"),
                _fmt(_tflops(shape, t.get("sdpa_flash")), ".0f"),
                _fmt(ratio, ".2f", "x"),
            ]
        )
    if rows:
        lines += ["### Attention (B x heads x L, head dim)", ""]
        lines += _table(
            [
                "stage",
                "shape",
                "dtype",
                "torch eager ms",
                "sdpa ms",
                "sdpa flash ms",
                "triton ms",
                "triton TFLOP/s",
                "flash TFLOP/s",
                "triton / flash",
            ],
            rows,
        )
        lines.append("")
        ok = None if target_ratio is None else target_ratio <= 1.25
        targets.append(
            f"- attention within 1.25x of SDPA flash at L=1024, d=64, fp16: "
            f"{_verdict(ok)} ({_fmt(target_ratio, '.2f', 'x')} its time)"
        )
    if sweep_rows:
        lines += ["### Triton attention launch configurations (16x16x1024, d64, fp16)", ""]
        lines += _table(["BLOCK_M x BLOCK_N, warps, stages", "ms", "TFLOP/s"], sweep_rows)
        lines.append("")

    # end to end
    e2e: dict[int, dict[str, float]] = {}
    for r in by_op.get("segmenter", []):
        e2e.setdefault(r["steps"], {})[r["backend"]] = r["median"]
    if e2e:
        rows, oks = [], []
        for steps, t in sorted(e2e.items()):
            ratio = _ratio(t.get("torch"), t.get("triton"))
            oks.append(None if ratio is None else ratio > 1.0)
            rows.append(
                [str(steps), _ms(t.get("torch")), _ms(t.get("triton")), _fmt(ratio, ".2f", "x")]
            )
        lines += ["### Segmenter, one 256x256 frame, K=8 (bundled weights)", ""]
        lines += _table(["DDIM steps", "torch ms", "triton ms", "triton speedup"], rows)
        lines.append("")
        ok = None if None in oks else all(oks)
        targets.append(f"- end-to-end Segmenter latency with triton below torch: {_verdict(ok)}")
    return "\n".join([*lines, "### Targets (issue 4, stated for an H100)", "", *targets, ""])


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _tflops(shape: tuple[int, ...], seconds: float | None) -> float | None:
    b, h, l_q, l_k, d = shape
    return _ratio(4 * b * h * l_q * l_k * d / 1e12, seconds)


if __name__ == "__main__":
    env = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else {}
    print(summarize(json.loads(Path(sys.argv[1]).read_text()), env))
