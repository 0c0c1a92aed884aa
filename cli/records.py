"""Per-frame records and the run summary of ``lsdseg segment``.

Each processed frame gives one record (a CSV row and a JSON line, written and flushed together,
so a run stopped at any point leaves both files complete up to the last frame written):

=================  ==================================================================
frame              index of the frame in the source (before --vid-stride); image number
timestamp_s        seconds: frame / fps for files, since start for live sources; empty
                   for images
source             the image's path as found (the folder, file or glob given, expanded),
                   or the source's name
latency_ms         wall time of the Segmenter call for this frame
area_fraction      fraction of the frame's pixels inside the mask (mean > threshold)
components         number of connected regions of the mask (8-connectivity)
unc_mean, unc_max  mean and max of the uncertainty map inside the mask (empty if the mask
                   is empty); the map is ``--uncertainty`` (default: mutual information
                   of the K hypotheses, bits), named in summary.json
unc_frame_mean     mean of the uncertainty map over the whole frame
agreement          mean pairwise Dice of the K hypothesis masks (Result.agreement)
unsure             per-frame unsure score in [0, 1] (Result.unsure): mean entropy of the
                   mean over the candidate region (mean > 0.1, dilated); 0 when the model
                   sees no polyp at all
unsure_flag        unsure > --unsure-threshold (empty without --unsure-threshold)
(K = 1)            with one hypothesis the unc_* fields, agreement, unsure and unsure_flag
                   are empty: one sample has no spread to measure
score              the presence score: the probability that the frame holds a polyp
                   (Result.score; 1 for weights without a presence head)
polyp_frame        the frame's own decision: score >= the presence threshold
polyp_shown        whether a polyp is shown: polyp_frame filtered over time for videos and
                   streams (--presence-filter), polyp_frame itself for still images; the
                   mask, area_fraction and components are empty when it is false
seed               the seed that reproduces this frame's result
=================  ==================================================================
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsdseg.cli.errors import output_error
from lsdseg.files import json_ready, printable_name, write_text_atomic

COLUMNS = (
    "frame",
    "timestamp_s",
    "source",
    "latency_ms",
    "area_fraction",
    "components",
    "unc_mean",
    "unc_max",
    "unc_frame_mean",
    "agreement",
    "unsure",
    "unsure_flag",
    "score",
    "polyp_frame",
    "polyp_shown",
    "seed",
)


# what a spreadsheet reads as the start of a formula (OWASP, "CSV Injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> Any:
    """A text cell of a CSV file, safe to open in a spreadsheet: text that starts like a
    formula (``=``, ``+``, ``-``, ``@``, tab, carriage return) gets a leading ``'`` as OWASP
    recommends, so ``=HYPERLINK(...)`` in a file name stays text; a name's bytes that are not
    UTF-8 are written as ``\\xNN`` (:func:`lsdseg.files.printable_name`). Other values pass.
    """
    if not isinstance(value, str):
        return value
    value = printable_name(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, strict JSON (non-finite floats as null), atomically: a
    failed write (a full disk) leaves no truncated file.

    Raises:
        OutputError: the file could not be written, named.
    """
    text = json.dumps(json_ready(data), indent=2, allow_nan=False)
    try:
        write_text_atomic(path, text + "\n")
    except OSError as e:
        raise output_error(path, e) from None


def _rounded(x: float, digits: int) -> float | None:
    """``x`` rounded, or None when it is NaN or infinite (no value)."""
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def frame_record(
    index: int,
    timestamp: float | None,
    source: str,
    latency_ms: float,
    mask: np.ndarray,
    uncertainty: np.ndarray,
    agreement: float,
    seed: int,
    unsure: float = math.nan,
    unsure_threshold: float | None = None,
    score: float = math.nan,
    polyp_frame: bool | None = None,
    polyp_shown: bool | None = None,
) -> dict:
    """The record of one frame (see the module docstring for each field).

    Shapes:
        mask (H, W) bool; uncertainty (H, W) float.
    """
    import cv2

    area = int(mask.sum())
    n_labels, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    inside = uncertainty[mask] if area else None
    # a value that is not a finite number (a model that produced NaN) is recorded as no value
    return {
        "frame": index,
        "timestamp_s": None if timestamp is None else _rounded(timestamp, 4),
        "source": printable_name(source),
        "latency_ms": _rounded(latency_ms, 2),
        "area_fraction": _rounded(area / mask.size, 6),
        "components": int(n_labels) - 1,  # label 0 is the background
        "unc_mean": None if inside is None else _rounded(inside.mean(), 6),
        "unc_max": None if inside is None else _rounded(inside.max(), 6),
        "unc_frame_mean": _rounded(uncertainty.mean(), 6),
        "agreement": _rounded(agreement, 6),
        "unsure": _rounded(unsure, 6),
        "unsure_flag": unsure_flag(unsure, unsure_threshold),
        "score": _rounded(score, 6),
        "polyp_frame": polyp_frame,
        "polyp_shown": polyp_shown,
        "seed": int(seed),
    }


def unsure_flag(unsure: float, threshold: float | None) -> bool | None:
    """``unsure > threshold``; None without a threshold or without a score (a server that
    does not send one)."""
    if threshold is None or math.isnan(unsure):
        return None
    return bool(unsure > threshold)


class RecordWriter:
    """Writes records to ``records.csv`` and ``records.jsonl``; each row flushed at once.

    The files' length after every row is kept, so :meth:`close` can cut them back to whole
    rows (after a failed write) or to fewer rows (a video that holds fewer frames).

    Raises:
        OutputError: from any method, naming the file that could not be written.
    """

    def __init__(self, folder: Path) -> None:
        self.csv_path, self.jsonl_path = folder / "records.csv", folder / "records.jsonl"
        try:
            self._csv_file = open(self.csv_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._jsonl = open(self.jsonl_path, "w", encoding="utf-8")  # noqa: SIM115
            self._csv = csv.DictWriter(self._csv_file, fieldnames=COLUMNS)
            self._csv.writeheader()
            self._csv_file.flush()
        except OSError as e:
            raise output_error(self.csv_path, e) from None
        self._ends = [(self._csv_file.tell(), 0)]  # file lengths after the header, each row
        self.rows = 0
        self.failed = False

    def write(self, record: dict) -> None:
        """Append one record to both files (flushed)."""
        if self.failed:
            raise RuntimeError("RecordWriter.write after a failed write")
        try:
            self._csv.writerow(
                {k: "" if record[k] is None else csv_text(record[k]) for k in COLUMNS}
            )
            self._csv_file.flush()
        except OSError as e:
            self.failed = True
            raise output_error(self.csv_path, e) from None
        try:
            self._jsonl.write(json.dumps(json_ready(record), allow_nan=False) + "\n")
            self._jsonl.flush()
        except OSError as e:
            self.failed = True
            raise output_error(self.jsonl_path, e) from None
        self._ends.append((self._csv_file.tell(), self._jsonl.tell()))
        self.rows += 1

    def close(self, keep: int | None = None) -> None:
        """Close both files, cut to their first ``keep`` rows (default: every whole row, so a
        row a failed write left half-written goes)."""
        for f in (self._csv_file, self._jsonl):
            with contextlib.suppress(OSError):  # its unflushed part is the failed row, cut below
                f.close()
        n = self.rows if keep is None else max(0, min(keep, self.rows))
        for path, size in zip((self.csv_path, self.jsonl_path), self._ends[n], strict=True):
            try:
                os.truncate(path, size)  # frees space: works on a full disk
            except OSError as e:
                raise output_error(path, e) from None
        self.rows = n


@dataclass
class Summary:
    """What a run did; printed as one line and written as summary.json."""

    source: str
    frames: int = 0  # frames processed and written
    dropped: int = 0  # frames a live source delivered while the model was busy
    mean_latency_ms: float = math.nan
    p95_latency_ms: float = math.nan
    fps: float = math.nan  # processed frames per second of wall time, end to end
    elapsed_s: float = 0.0
    # None (ran to the end), SIGINT, SIGTERM, stall, error, server, or the --show window (q)
    stopped_by: str | None = None
    warning: str = ""
    unsure_frames: int | None = None  # frames flagged unsure (None without --unsure-threshold)
    polyp_frames: int = 0  # frames on which a polyp was shown (polyp_shown)
    skipped: int = 0  # images of a folder or glob that could not be decoded
    skipped_files: list = field(default_factory=list)  # [path, reason] each, as evaluate's
    settings: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    def finish(self, latencies_ms: list[float], elapsed_s: float) -> Summary:
        """Fill in the latency and throughput figures."""
        self.frames = len(latencies_ms)
        self.elapsed_s = round(elapsed_s, 3)
        if latencies_ms:
            lat = np.asarray(latencies_ms)
            self.mean_latency_ms = round(float(lat.mean()), 2)
            self.p95_latency_ms = round(float(np.percentile(lat, 95)), 2)
            self.fps = round(self.frames / elapsed_s, 3) if elapsed_s > 0 else math.nan
        return self

    def line(self, still: bool = False) -> str:
        """The one-line summary printed at the end; ``still``: the source was still images,
        which have no frame rate to keep up with and nothing to drop."""
        stop = f", stopped by {self.stopped_by}" if self.stopped_by else ""
        unsure = "" if self.unsure_frames is None else f", {self.unsure_frames} flagged unsure"
        unsure = f", {self.polyp_frames} with a polyp{unsure}"
        latency = f"latency mean {self.mean_latency_ms:.1f} ms p95 {self.p95_latency_ms:.1f} ms"
        if still:
            images = f"{self.frames} image{'' if self.frames == 1 else 's'}"
            skipped = f", {self.skipped} skipped" if self.skipped else ""
            return f"{images}{skipped}, {latency}{unsure}{stop}"
        return (
            f"{self.frames} frames, {self.dropped} dropped, {latency}, "
            f"{self.fps:.2f} fps{unsure}{stop}"
        )

    def save(self, path: Path) -> None:
        """Write summary.json (a figure that is not a finite number, such as the latency of
        a run that processed nothing, as null)."""
        write_json(path, asdict(self))
