"""Train on a bare GPU machine inside one time slot, and bring back what is worth keeping.

Meant for a lent GPU machine with torch preinstalled, no network and a cap on how long one
command runs and on what comes back (here: 10 minutes, 8 files of at most 16 MiB). The data
travels as a downsized copy (``scripts/pack_data.py``), and ``lsdseg`` is imported through the
same symlink tree as ``scripts/gpu_checks.py`` when it is not installed. Steps:

1. ``lsdseg train ... --time-limit`` into a scratch run folder, so the run stops checkpointed
   before the slot ends (the arguments after ``--`` go to ``lsdseg train`` unchanged);
2. the run's ``best/`` (the EMA with the best in-training validation Dice) and ``last/``'s
   EMA, without the image decoder, in fp16: each about 13.5 MB, what ``lsdseg.load`` reads;
3. their Dice on the copy's validation split (K = 8, one seed per image, thresholds 0.3-0.6,
   ``--probe-steps``), at the copy's reduced size: a guide only, since the numbers that pick
   and describe bundled weights come from ``scripts/val_probe.py`` and
   ``scripts/bundle_weights.py`` on the full data.

Writes under ``--out`` (default ``$OUT``, else ``.benchmarks/gpu_train``): ``summary.json``
(GPU, versions, date, command, exit code, the per-epoch metrics and the probe), ``train.log``,
``progress.png``, ``best/`` and ``last-ema/`` (``model.safetensors`` + ``config.json``).

    python scripts/pack_data.py ../shared/data/kvasir-seg ../shared/data/cvc-clinicdb
    # then, on the GPU machine (carry .cache/packed):
    python3 scripts/gpu_train.py --data .cache/packed/kvasir-seg \\
        --data .cache/packed/cvc-clinicdb --minutes 7 -- \\
        --stage diffusion --init default --epochs 60 --lr 2e-4 --val-every 5 --val-steps 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gpu_checks import ROOT, environment, python_env, run_logged

GRACE_S = 90  # past --minutes, the training process is killed (its last/ survives a kill)


def data_flags(data: list[str]) -> list[str]:
    """``--data D`` for each folder."""
    return [a for d in data for a in ("--data", d)]


def export(run: Path, out: Path, steps: list[int], data: list[str], train_args: list[str]) -> dict:
    """Inference weights of ``best/`` and ``last/``'s EMA under ``out``, and their probe on
    the validation split that training held out (``lsdseg train``'s own parser reads it from
    ``train_args``)."""
    import torch
    from bundle_weights import THRESHOLDS, load_weights, sweep

    from lsdseg.checkpoint import save_checkpoint, without_image_decoder
    from lsdseg.cli.main import build_parser
    from lsdseg.cli.train_cmd import load_pairs
    from lsdseg.data import load_sample
    from lsdseg.segmenter import Segmenter

    device = "cuda" if torch.cuda.is_available() else "cpu"
    given = build_parser().parse_args(["train", *data_flags(data), *train_args])
    _, val = load_pairs(given.data, given.val_data, given.val_fraction, given.seed)
    samples = [(pair, *load_sample(pair)) for pair in val]
    probe: dict[str, list[dict]] = {}
    for name, spec in (("best", run / "best"), ("last-ema", f"{run / 'last'}:ema")):
        if not Path(str(spec).removesuffix(":ema")).exists():
            continue
        model = without_image_decoder(load_weights(spec))
        save_checkpoint(model, out / name, "", dtype=torch.float16)
        (out / name / "card.md").unlink(missing_ok=True)  # the 8-file limit; config.json says it
        seg = Segmenter(model.to(device))
        probe[name] = [sweep(seg, samples, s, 8) for s in steps]
        for row in probe[name]:
            print(name, json.dumps(row), flush=True)
    return {"thresholds": THRESHOLDS, "validation_pairs": len(val), "rows": probe}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = os.environ.get("OUT") or ROOT / ".benchmarks" / "gpu_train"  # git-ignored
    p.add_argument("--out", type=Path, default=Path(default_out))
    p.add_argument("--data", action="append", required=True, help="packed dataset folders")
    p.add_argument("--minutes", type=float, default=7.0, help="training time (--time-limit)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--probe-steps", default="1,2", help="comma-separated DDIM step counts")
    p.add_argument("--export-only", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("train_args", nargs="*", help="after --: arguments of lsdseg train")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.probe_steps.split(",")]
    if args.export_only:  # second half, run in the environment where lsdseg imports
        result = export(args.export_only, out, steps, args.data, args.train_args)
        (out / "probe.json").write_text(json.dumps(result, indent=2))
        return 0

    env, cwd = python_env()
    data = [str(Path(d).resolve()) for d in args.data]
    info = environment(env, cwd)
    print(json.dumps(info, indent=2), flush=True)
    run = Path(tempfile.mkdtemp(prefix="lsdseg-gpu-train-")) / "run"
    cmd = [sys.executable, "-m", "lsdseg.cli.main", "train"]
    cmd += data_flags(data)
    cmd += ["--out", str(run), "--device", args.device, "--workers", str(args.workers)]
    cmd += ["--time-limit", str(args.minutes), *args.train_args]
    code = run_logged(cmd, env, cwd, out / "train.log", timeout=args.minutes * 60 + GRACE_S)
    export_cmd = [sys.executable, str(ROOT / "scripts" / "gpu_train.py"), "--out", str(out)]
    export_cmd += data_flags(data)
    export_cmd += ["--probe-steps", args.probe_steps, "--export-only", str(run)]
    export_cmd += ["--", *args.train_args]
    export_code = subprocess.run(export_cmd, env=env, cwd=cwd).returncode
    probe_file = out / "probe.json"
    summary = {
        "environment": info,
        "train_command": cmd,
        "train_exit_code": code,
        "export_exit_code": export_code,
        "metrics_csv": (run / "metrics.csv").read_text() if (run / "metrics.csv").exists() else "",
        "probe": json.loads(probe_file.read_text()) if probe_file.exists() else None,
    }
    probe_file.unlink(missing_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if (run / "progress.png").exists():
        shutil.copyfile(run / "progress.png", out / "progress.png")
    print(f"wrote {out}: train exit {code}, export exit {export_code}", flush=True)
    return code or export_code


if __name__ == "__main__":
    sys.exit(main())
