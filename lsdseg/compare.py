"""Is weights B better than A, or is the difference noise? Paired comparisons on the same inputs.

Three measurements that decide between two checkpoints, each on identical inputs for both:

- :func:`per_image_scores` + :func:`compare_datasets`: both segment every image with the same
  seeds (several per image), so the per-image difference (of Dice, and of the entropy AUROC
  for the error pixels) cancels what the image itself contributes; resampling images with
  replacement (:func:`bootstrap`) gives a 95% interval for the mean difference per dataset. An
  interval that contains 0 means the images cannot tell the two apart. ``lsdseg evaluate
  --compare`` runs it.
- :func:`sweep`: mean Dice per dataset at each threshold of :data:`THRESHOLDS` for one (steps,
  K), what ``scripts/bundle_weights.py`` picks the bundled sampler defaults from
  (``lsdseg evaluate --sweep``).
- :func:`interleaved_ms`: latency of two models alternated in one process, round by round,
  because benchmarks run one after the other drift on a shared machine (up to 35% between runs
  on the VMs here). ``lsdseg bench --compare`` runs it.

Samples are ``(pair, image, mask)`` triples (:func:`lsdseg.data.load_sample`), the pair's group
prefixed with its dataset (``kvasir-seg:12``, :func:`lsdseg.data.load_pairs`): results are per
dataset, named by :func:`lsdseg.data.dataset_of`. Masks are ``(H, W)`` bool at the image's
original size; a prediction is ``Result.mask`` at that size (``mean > threshold``, empty when
the presence head judges the frame polyp-free).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lsdseg.data import dataset_of

if TYPE_CHECKING:
    import torch

    from lsdseg.data import Pair
    from lsdseg.model import LatentSegmenter
    from lsdseg.segmenter import Segmenter

    Sample = tuple[Pair, np.ndarray, np.ndarray]

THRESHOLDS = (0.3, 0.4, 0.5, 0.6)  # what the sweep scores (and the bundled threshold is one of)
LOW_DICE = 0.6  # images below this Dice are counted for each side of a comparison
EMA_SUFFIX = ":ema"  # FOLDER:ema: the EMA weights kept in a last/ checkpoint's training state
SEED_STRIDE = 1000  # image i draws seeds seed + i * SEED_STRIDE + s, s < seeds


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks of one image; 1.0 when both are empty.

    Shapes:
        pred, gt: (H, W) bool.
    """
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else 2.0 * float((pred & gt).sum()) / float(s)


def load_model(spec: str | Path, device: str | torch.device = "cpu") -> LatentSegmenter:
    """The model of a checkpoint folder; ``FOLDER:ema`` loads the EMA weights that a run's
    ``last/`` keeps in its training state instead of the live ones.

    Raises:
        CheckpointError: the folder is not a checkpoint.
        FileNotFoundError / ValueError: ``:ema`` of a folder without a training state or EMA.
    """
    from lsdseg.checkpoint import load_checkpoint
    from lsdseg.trainstate import ema_weights

    folder = str(spec).removesuffix(EMA_SUFFIX)
    model = load_checkpoint(folder, device)
    if folder != str(spec):
        model.load_state_dict(ema_weights(folder))
    return model


def load_segmenter(
    spec: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    cuda_graph: bool = False,
    precision: str = "fp32",
) -> Segmenter:
    """:func:`lsdseg.load`, plus ``FOLDER:ema`` (:func:`load_model`) for the backends that run
    the model itself (an export backend exports a folder's own weights).

    Raises:
        ValueError: ``FOLDER:ema`` with an export backend.
        CheckpointError / RuntimeError: as :func:`lsdseg.load`.
    """
    import lsdseg
    from lsdseg import backends
    from lsdseg.segmenter import Segmenter, resolve_device

    if not str(spec).endswith(EMA_SUFFIX):
        return lsdseg.load(spec, device, backend, cuda_graph, precision)  # type: ignore[arg-type]
    dev = resolve_device(device)
    name = backends.resolve_backend(backend, dev, ("cuda_graph",))  # the model in memory
    if backends.get(name).plugin is not None:
        raise ValueError(
            f"{spec}: the EMA of a last/ checkpoint runs on the backends that run the model "
            f"itself ({', '.join(backends.able('cuda_graph'))}), not {name}, which exports the "
            "folder's own weights"
        )
    return Segmenter(load_model(spec, dev), dev, name, None, cuda_graph, precision)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageScores:
    """Per-image scores of one weights and sampler setting, each averaged over the seeds."""

    dice: np.ndarray  # (images,) float64 in [0, 1]
    # (images,) float64: the per-image AUROC of the entropy of the mean for the error pixels
    # (``mean > threshold`` against the mask), as ``lsdseg evaluate``'s ``uncertainty_auroc``,
    # over the seeds that have both error and correct pixels; NaN where none has
    entropy_auroc: np.ndarray


def per_image_scores(
    seg: Segmenter,
    samples: Sequence[Sample],
    steps: int | None = None,
    threshold: float | None = None,
    seeds: int = 3,
    hypotheses: int | None = None,
    seed: int = 0,
    eta: float | None = None,
    auroc: bool = True,
) -> ImageScores:
    """Dice (and, with ``auroc``, the entropy AUROC) of every image, averaged over ``seeds``
    seeds per image. The mask scored is the one a user sees: empty when the presence head
    judges the frame polyp-free (Dice 0 on a polyp frame).

    Image ``i`` is sampled with seeds ``seed + i * 1000 + s`` for ``s < seeds``, so two
    checkpoints given the same arguments see the same initial noise wherever their latents have
    the same shape. Each None is the checkpoint's default. Without ``auroc`` the AUROCs are NaN.
    """
    import torch

    from lsdseg.metrics.calibration import uncertainty_auroc

    s = seg.settings(hypotheses, steps, eta, threshold)
    out = np.zeros(len(samples))
    aurocs = np.full((len(samples), seeds), np.nan)  # (images, seeds)
    for i, (_, image, mask) in enumerate(samples):
        for j in range(seeds):
            r = seg(
                image,
                hypotheses=s.hypotheses,
                steps=s.steps,
                eta=s.eta,
                seed=seed + i * SEED_STRIDE + j,
                threshold=s.threshold,
                order="rgb",
            )
            pred = r.mask  # mean > threshold, empty on a frame judged polyp-free
            out[i] += dice(pred, mask) / seeds
            if auroc:  # NaN when every pixel, or none, is wrong
                u = torch.from_numpy(r.entropy)[None]  # (1, H, W)
                error = torch.from_numpy(pred != mask)[None]
                aurocs[i, j] = float(uncertainty_auroc(u, error)[0])
    counted = np.isfinite(aurocs).sum(axis=1)  # (images,)
    sums = np.where(np.isfinite(aurocs), aurocs, 0.0).sum(axis=1)
    mean_auroc = np.divide(sums, counted, out=np.full(len(samples), np.nan), where=counted > 0)
    return ImageScores(out, mean_auroc)


def bootstrap(diff: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``diff`` over images resampled with replacement.

    Args:
        diff: (images,) per-image differences, B - A.
        n: number of resamples.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``, the 2.5th and 97.5th percentiles of the resampled means.
    """
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(axis=1)  # (n,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass(frozen=True)
class DatasetComparison:
    """A against B on the images of one dataset, for one per-image score (``metric``)."""

    dataset: str  # the group prefix (the dataset folder's name)
    images: int
    mean_a: float  # mean per-image score of A
    mean_b: float
    difference: float  # mean_b - mean_a
    low: float  # 95% bootstrap interval of the difference
    high: float
    below_a: int | None  # images where A's Dice < LOW_DICE (None for another metric)
    below_b: int | None
    metric: str = "Dice"

    def line(self) -> str:
        """``kvasir-seg (90 images): Dice 0.8546 -> 0.8956, difference +0.0411, 95% interval
        ...``."""
        text = (
            f"{self.dataset} ({self.images} images): {self.metric} {self.mean_a:.4f} -> "
            f"{self.mean_b:.4f}, difference {self.difference:+.4f}, 95% interval "
            f"[{self.low:+.4f}, {self.high:+.4f}]"
        )
        if self.below_a is None:
            return text
        return text + f"; images below {LOW_DICE}: {self.below_a} -> {self.below_b}"


def compare_datasets(
    dice_a: np.ndarray,
    dice_b: np.ndarray,
    datasets: Sequence[str],
    resamples: int = 10_000,
    metric: str = "Dice",
) -> list[DatasetComparison]:
    """Per dataset (in sorted order): both means, the difference and its bootstrap interval.

    Images where either score is NaN (an image without an AUROC) are left out of both means;
    a dataset left with none is left out. Only for ``metric="Dice"`` are the images below
    :data:`LOW_DICE` counted.

    Args:
        dice_a, dice_b: (images,) per-image scores (Dice, or ``metric``) of A and B on the
            same images.
        datasets: (images,) the dataset of each image.
        resamples: bootstrap resamples per dataset.
        metric: the score's name, as ``DatasetComparison.line`` prints it.

    Raises:
        ValueError: the three do not have one entry per image each.
    """
    if not len(dice_a) == len(dice_b) == len(datasets):
        raise ValueError(
            f"dice_a ({len(dice_a)}), dice_b ({len(dice_b)}) and datasets ({len(datasets)}) "
            "must have one entry per image each"
        )
    names = np.asarray(datasets)
    scored = np.isfinite(dice_a) & np.isfinite(dice_b)  # (images,)
    counts = metric == "Dice"  # images below LOW_DICE
    out = []
    for name in sorted(set(datasets)):
        idx = (names == name) & scored
        if not idx.any():
            continue
        a, b = dice_a[idx], dice_b[idx]
        lo, hi = bootstrap(b - a, resamples)
        out.append(
            DatasetComparison(
                dataset=name,
                images=int(idx.sum()),
                mean_a=float(a.mean()),
                mean_b=float(b.mean()),
                difference=float(b.mean() - a.mean()),
                low=lo,
                high=hi,
                below_a=int((a < LOW_DICE).sum()) if counts else None,
                below_b=int((b < LOW_DICE).sum()) if counts else None,
                metric=metric,
            )
        )
    return out


def sweep(
    seg: Segmenter, samples: Sequence[Sample], steps: int, k: int, seed: int = 0
) -> dict[str, float]:
    """Mean Dice per dataset and threshold for one (steps, K), one run per image (seed + i).

    Returns:
        ``{"steps": steps, "hypotheses": k, "dice/<dataset>@<threshold>": mean Dice, ...}``
        for every dataset of ``samples`` and threshold of :data:`THRESHOLDS`.
    """
    per: dict[str, list[list[float]]] = {}
    for i, (pair, image, mask) in enumerate(samples):
        r = seg(image, hypotheses=k, steps=steps, seed=seed + i, order="rgb")
        per.setdefault(dataset_of(pair.group), []).append(  # nothing on a polyp-free verdict
            [dice((r.mean > th) & r.present, mask) for th in THRESHOLDS]
        )
    out: dict[str, float] = {"steps": steps, "hypotheses": k}
    for src, rows in per.items():
        for j, th in enumerate(THRESHOLDS):
            out[f"dice/{src}@{th}"] = float(np.mean([r[j] for r in rows]))
    return out


def _median_ms(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return statistics.median(times)


def interleaved_ms(
    calls: Sequence[Mapping[str, Callable[[], object]]],
    rounds: int = 30,
    repeats: int = 5,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, float]]:
    """Median latency of each named call of each model, the models alternated in one process.

    Every call is first run ``warmup`` times untimed. Then each round times every call of
    model 0, then of model 1 (of model 1 first on odd rounds, so neither always runs on a
    machine the other warmed or heated), each as the median of ``repeats`` calls.

    Args:
        calls: per model, the calls to time by name (the same names for every model).
        rounds, repeats, warmup: as above; rounds and repeats at least 1.
        clock: seconds (tests pass a fake one).

    Returns:
        Per model, each name's median over rounds of the per-round medians, in ms.

    Raises:
        ValueError: rounds or repeats below 1, warmup below 0, or models whose calls differ.
    """
    if rounds < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"rounds={rounds}, repeats={repeats}, warmup={warmup}: rounds and repeats must be "
            "at least 1, warmup at least 0"
        )
    names = [list(c) for c in calls]
    if any(n != names[0] for n in names):
        raise ValueError(f"every model must have the same calls; got {names}")
    for c in calls:
        for fn in c.values():
            for _ in range(warmup):
                fn()
    res: list[dict[str, list[float]]] = [{k: [] for k in c} for c in calls]
    for r in range(rounds):
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            for name, fn in calls[i].items():
                res[i][name].append(_median_ms(fn, repeats, clock))
    return [{k: statistics.median(v) for k, v in per.items()} for per in res]
