"""Train on a bare GPU machine within a time limit, and keep what is worth keeping.

Meant for a GPU machine with torch installed, no network and a cap on how long one command runs
and on what is kept (here: 10 minutes, 8 files of at most 16 MiB). The data
travels as a downsized copy (``scripts/pack_data.py``), and ``lsdseg`` is imported through the
symlink tree of ``scripts/gpu_slot.py`` when it is not installed. Steps:

1. ``lsdseg train ... --time-limit`` into a scratch run folder, so the run stops checkpointed
   before the time limit (the arguments after ``--`` go to ``lsdseg train`` unchanged);
2. the run's ``best/`` (the EMA with the best in-training validation Dice) and ``last/``'s
   EMA, without the image decoder, in fp16 (13.5 MB each, 17.3 MB with the MobileNetV2
   branch), cut into ``model.NN.safetensors`` pieces of at most 16 MiB per file;
3. their Dice on the copy's validation split (K = 8, one seed per image, thresholds 0.3-0.6,
   ``--probe-steps``), at the copy's reduced size: a guide only, since the numbers that pick
   and describe bundled weights come from ``lsdseg evaluate --sweep`` and
   ``scripts/bundle_weights.py`` on the full data.

Writes under ``--out`` (default ``.benchmarks/gpu_train`` in the repository) at most 7 files:
``summary.json`` (GPU, versions, date, command, exit code, the per-epoch metrics, the probe and
the checkpoints' ``config.json``), ``train.log``, ``progress.png``, and the weight pieces in
``best/`` and ``last-ema/``. Every file is written as soon as its part is ready and every log
line is flushed, so a command ended part-way still leaves what was done:
``summary.json`` first gets the environment and command, then training's exit code and metrics,
then each checkpoint's config as its pieces are written (before its probe), then each probe row.
Training is killed ``GRACE_S`` past ``--minutes`` and the export step after
``--export-timeout`` seconds. ``--join`` turns what came back into checkpoint folders that
``lsdseg.load`` reads.

    python scripts/pack_data.py ../shared/data/kvasir-seg ../shared/data/cvc-clinicdb
    # then, on the GPU machine (carry .cache/packed):
    python3 scripts/gpu_train.py --data .cache/packed/kvasir-seg \\
        --data .cache/packed/cvc-clinicdb --minutes 7 -- \\
        --stage diffusion --init default --epochs 60 --lr 2e-4 --val-every 5 --val-steps 1
    # then, from the results folder (--out, default .benchmarks/gpu_train):
    python scripts/gpu_train.py --join <files> --to runs/gpu/NAME   # NAME/best, NAME/last-ema
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gpu_slot import ROOT, environment, python_env, run_logged, update_summary

GRACE_S = 90  # past --minutes, the training process is killed (its last/ survives a kill)
MAX_FILE_BYTES = 16 * 2**20  # the largest file kept
CHECKPOINTS = ("best", "last-ema")


def split_weights(folder: Path, max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """Replace ``folder/model.safetensors`` by ``model.00.safetensors``, ``model.01...``, each
    under ``max_bytes``; tensors are kept whole, in file order."""
    from safetensors.torch import load_file, save_file

    from lsdseg.checkpoint import WEIGHTS

    tensors = load_file(str(folder / WEIGHTS))
    budget = max_bytes - 2**20  # room for each piece's JSON header
    pieces: list[dict] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if nbytes > budget:
            raise ValueError(f"tensor {name} ({nbytes} bytes) alone is over {max_bytes} bytes")
        if size + nbytes > budget:
            pieces.append({})
            size = 0
        pieces[-1][name] = t
        size += nbytes
    paths = [folder / f"model.{i:02d}.safetensors" for i in range(len(pieces))]
    for piece, path in zip(pieces, paths, strict=True):
        save_file(piece, str(path), metadata={"format": "pt"})
    (folder / WEIGHTS).unlink()
    return paths


def join_weights(src: Path, dest: Path, config: dict) -> Path:
    """The checkpoint folder ``dest`` (fp16 ``model.safetensors`` + ``config.json``) from the
    pieces that :func:`split_weights` left in ``src``, checked by loading it strictly."""
    import torch
    from safetensors.torch import load_file, save_file

    from lsdseg.checkpoint import CONFIG, WEIGHTS, load_checkpoint, save_checkpoint

    pieces = sorted(src.glob("model.[0-9][0-9].safetensors"))
    if not pieces:
        raise ValueError(f"{src} holds no model.NN.safetensors pieces")
    tensors: dict = {}
    for piece in pieces:
        tensors.update(load_file(str(piece)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".join-", dir=dest.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        model = load_checkpoint(tmp)  # a missing piece or another config fails here
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    card = f"# lsdseg checkpoint\n\nTrained by scripts/gpu_train.py; joined from {src}.\n"
    return save_checkpoint(model, dest, card, dtype=torch.float16)


def join(results: Path, to: Path) -> int:
    """``--join``: checkpoint folders under ``to`` from a results folder of this script."""
    summary_file = results / "summary.json"
    if not summary_file.is_file():
        print(
            f"error: {results} has no summary.json: pass the folder gpu_train.py wrote (its --out)",
            file=sys.stderr,
        )
        return 2
    try:
        config = json.loads(summary_file.read_text()).get("checkpoint_config")
    except json.JSONDecodeError as e:
        print(f"error: {summary_file} is not valid JSON ({e})", file=sys.stderr)
        return 2
    names = [n for n in CHECKPOINTS if (results / n).is_dir()]
    if config is None or not names:
        print(
            f"error: {results} brought back no weights (see its summary.json and train.log)",
            file=sys.stderr,
        )
        return 2
    from safetensors import SafetensorError

    for name in names:
        try:
            print(f"wrote {join_weights(results / name, to / name, config)}", flush=True)
        except (ValueError, OSError, SafetensorError) as e:
            print(f"error: {results / name}: {e}", file=sys.stderr)
            return 2
    to.mkdir(parents=True, exist_ok=True)
    for extra in ("summary.json", "train.log", "progress.png"):
        if (results / extra).is_file():
            shutil.copyfile(results / extra, to / extra)
    return 0


def data_flags(data: list[str]) -> list[str]:
    """``--data D`` for each folder."""
    return [a for d in data for a in ("--data", d)]


def export(run: Path, out: Path, steps: list[int], data: list[str], train_args: list[str]) -> dict:
    """Inference weights of ``best/`` and ``last/``'s EMA under ``out``, and their probe on
    the validation split that training held out (``lsdseg train``'s own parser reads it from
    ``train_args``).

    Each checkpoint's pieces and its config go to ``out`` (the config into ``summary.json``)
    before its probe starts, and each probe row is recorded as it comes: a kill part-way keeps
    everything finished before it.
    """
    import torch
    from bundle_weights import THRESHOLDS, load_weights, sweep

    from lsdseg.checkpoint import CARD, CONFIG, save_checkpoint, without_image_decoder
    from lsdseg.data import load_pairs, load_sample
    from lsdseg.segmenter import Segmenter

    device = "cuda" if torch.cuda.is_available() else "cpu"
    given = split_options([*data_flags(data), *train_args])
    _, val = load_pairs(given.data, given.val_data, given.val_fraction, given.seed)
    probe: dict = {"thresholds": THRESHOLDS, "validation_pairs": len(val), "rows": {}}
    config = None
    samples = None
    for name, spec in zip(CHECKPOINTS, (run / "best", f"{run / 'last'}:ema"), strict=True):
        if not Path(str(spec).removesuffix(":ema")).exists():
            continue
        model = without_image_decoder(load_weights(spec))
        save_checkpoint(model, out / name, "", dtype=torch.float16)
        # the 8-file limit: summary.json carries the config (the same for both), no card
        config = json.loads((out / name / CONFIG).read_text())
        for f in (CONFIG, CARD):
            (out / name / f).unlink()
        split_weights(out / name)
        update_summary(out, checkpoint_config=config)
        print(f"wrote {out / name}", flush=True)
        if samples is None:
            samples = [(pair, *load_sample(pair)) for pair in val]
        seg = Segmenter(model.to(device))
        rows = probe["rows"][name] = []
        for s in steps:
            rows.append(sweep(seg, samples, s, 8))
            print(name, json.dumps(rows[-1]), flush=True)
            update_summary(out, probe=probe)
    return {**probe, "checkpoint_config": config}


# lsdseg train's defaults for the options that decide its validation split
# (tests/test_gpu_train.py checks them against the command's parser)
SPLIT_DEFAULTS = {"val_fraction": 0.1, "seed": 0}


def split_options(train_args: list[str]) -> argparse.Namespace:
    """The options of ``lsdseg train`` arguments that decide its validation split: ``data``,
    ``val_data``, ``val_fraction`` and ``seed`` (the others are ignored)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", action="append", default=[])
    p.add_argument("--val-data", action="append")
    p.add_argument("--val-fraction", type=float, default=SPLIT_DEFAULTS["val_fraction"])
    p.add_argument("--seed", type=int, default=SPLIT_DEFAULTS["seed"])
    return p.parse_known_args(train_args)[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(  # in the repository, git-ignored
        "--out", type=Path, default=ROOT / ".benchmarks" / "gpu_train", help="results folder"
    )
    p.add_argument("--data", action="append", help="packed dataset folders")
    p.add_argument("--minutes", type=float, default=7.0, help="training time (--time-limit)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--probe-steps", default="1,2", help="comma-separated DDIM step counts")
    p.add_argument(
        "--export-timeout",
        type=float,
        default=150,
        help="seconds for writing the weights and probing them, after training",
    )
    p.add_argument("--export-only", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--join",
        type=Path,
        metavar="RESULTS",
        help="the folder gpu_train.py wrote (its --out): its weights become checkpoints in --to",
    )
    p.add_argument("--to", type=Path, help="with --join: where best/ and last-ema/ go")
    p.add_argument("train_args", nargs="*", help="after --: arguments of lsdseg train")
    args = p.parse_args()
    if args.join:
        if args.to is None:
            p.error("--join needs --to DEST (the results folder that came back is read-only)")
        return join(args.join, args.to)
    if not args.data:
        p.error("--data is required (the packed dataset folders), unless --join")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.probe_steps.split(",")]
    if args.export_only:  # second half, run in the environment where lsdseg imports
        export(args.export_only, out, steps, args.data, args.train_args)
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
    (out / "summary.json").unlink(missing_ok=True)  # a stale one would pass for this run's
    update_summary(out, environment=info, train_command=cmd, checkpoint_config=None, probe=None)
    code = run_logged(cmd, env, cwd, out / "train.log", timeout=args.minutes * 60 + GRACE_S)
    metrics = run / "metrics.csv"
    update_summary(
        out,
        train_exit_code=code,
        metrics_csv=metrics.read_text() if metrics.exists() else "",
    )
    if (run / "progress.png").exists():
        shutil.copyfile(run / "progress.png", out / "progress.png")
    export_cmd = [sys.executable, str(ROOT / "scripts" / "gpu_train.py"), "--out", str(out)]
    export_cmd += data_flags(data)
    export_cmd += ["--probe-steps", args.probe_steps, "--export-only", str(run)]
    export_cmd += ["--", *args.train_args]
    # its output goes on in train.log: at most 8 files are kept and 7 are taken
    export_code = run_logged(
        export_cmd, env, cwd, out / "train.log", timeout=args.export_timeout, append=True
    )
    update_summary(out, export_exit_code=export_code)
    print(f"wrote {out}: train exit {code}, export exit {export_code}", flush=True)
    return code or export_code


if __name__ == "__main__":
    sys.exit(main())
