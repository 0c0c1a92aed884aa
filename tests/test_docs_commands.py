"""Every command of README.md and docs/*.md that can run on a CPU runs, so the docs cannot drift.

The fenced ``bash`` blocks (and README's ``python`` block) are read line by line; each command
either runs here, in one shared folder with its placeholders filled (``video.mp4``, ``frames/``,
``Kvasir-SEG/``, ``CVC-ClinicDB/``, ``normal-colon/``, ``frame.png``: tiny inputs made once;
``runs/train/mine``: made by README's own train command), limited to seconds
(``--max-frames 2``, ``--max-images 2``, one epoch of one step, one timed call), or matches
one of :data:`SKIP`, which says why it cannot run on a CPU test machine. A command in neither
fails the test: a new doc command gets a rule.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lsdseg.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# what cannot run on a CPU test machine, and why (a regex on the command line)
SKIP: list[tuple[str, str]] = [
    (r"^make\b", "a make target installs into .venv (make test runs the suite itself)"),
    (r"^(pip|python3? -m venv|\.)\b|^\. ", "installs packages"),
    (r"^pytest\b|^OMP_WAIT_POLICY=\S+ pytest\b", "a benchmark suite: minutes, on an idle machine"),
    (
        r"^\.venv-serve/|^tritonserver\b",
        "a server: PyTriton lives in its own venv (make test-serve)",
    ),
    (r"--server\b", "needs a running lsdseg serve"),
    (r"--backend (torch,)?triton|--cuda-graph|--half|fp16|--trt\b", "needs an NVIDIA GPU"),
    (r"\[--", "a synopsis of the options, not a command"),
    (r"scripts/gpu_checks\.py --smoke", "minutes; tests/test_gpu_checks.py runs it"),
    (r"scripts/gpu_checks\.py|scripts/gpu_train\.py --data", "runs on an NVIDIA GPU"),
    (r"scripts/gpu_train\.py --join", "joins what gpu_train.py wrote on a GPU machine"),
]


def doc_commands() -> list[tuple[str, str, str]]:
    """(where, language, command) of every command line in the docs' fenced blocks."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
            lang, body = block.group(1), block.group(2)
            line_no = text[: block.start()].count("\n") + 2
            where = f"{path.relative_to(ROOT)}:{line_no}"
            if lang == "python":
                found.append((where, lang, body))
                continue
            if lang not in ("bash", "sh", "console"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                command = line.split("  #")[0].split(" # ")[0].strip()
                if command and not command.startswith("#"):
                    found.append((where, lang, command))
    return found


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIP if re.search(pattern, command)), None)


TINY = {
    "image_size": 64,
    "image_ae": {"channels": [8, 16, 16], "context_channels": [16], "latent_channels": 4,
                 "groups": 4},
    "mask_vae": {"encoder_channels": [8, 8, 8], "decoder_channels": [8, 8], "groups": 4},
    "unet": {"channels": [8, 16], "attention_levels": [1], "head_dim": 8, "groups": 4,
             "time_embed_dim": 16},
}  # fmt: skip


def _dataset(root: Path, n: int, seed: int) -> None:
    """A Kvasir-style folder of n 64x64 frames, each with a bright disc and its mask."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(40, 90, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        cv2.circle(mask, tuple(int(v) for v in rng.integers(20, 44, 2)), 10, 255, -1)
        img[mask > 0] = (200, 120, 140)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask)


TINY_RUN = "runs/train/mine/best"  # made by README's train command (the fixture `mine`)


def limited(argv: list[str]) -> list[str]:
    """The command cut to seconds: a few frames or images, one short epoch, one timed call."""
    command = argv[0] if argv else ""
    extra: list[str] = []
    if command == "segment":
        extra = ["--max-frames", "2"]
    elif command == "evaluate":
        if "--sweep" in argv:
            extra = []  # the validation split of the tiny datasets: a few images
        elif "--compare" in argv:
            extra = ["--seeds", "1", "--resamples", "100"]
        else:
            extra = ["--max-images", "2"]
    elif command == "train" and "presence" in argv:  # the head alone: one view of each image
        extra = ["--presence-views", "1"]
    elif command == "train":
        extra = ["--ae-epochs", "1", "--epochs", "1", "--max-steps-per-epoch", "1"]
        extra += ["--batch-size", "2", "--imgsz", "64", "--val-steps", "1", "--workers", "0"]
        if "--init" not in argv:
            extra += ["--model-config", "tiny.json"]
    elif command == "bench":
        extra = ["--repeats", "1", "--warmup", "0", "--hypotheses", "1", "--steps", "2"]
        extra += ["--rounds", "1"] if "--compare" in argv else []
    elif command == "export":  # the tiny run's weights: an export in seconds, not a minute
        extra = ["--steps", "2"] + ([] if "--weights" in argv else ["--weights", TINY_RUN])
    return argv + extra


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The placeholders, and runs/train/mine made by README's train command."""
    ws = tmp_path_factory.mktemp("docs")
    (ws / "assets").symlink_to(ROOT / "assets")
    (ws / "scripts").symlink_to(ROOT / "scripts")
    shutil.copy(ROOT / "assets" / "demo" / "cvc_seq5.mp4", ws / "video.mp4")
    (ws / "frames").mkdir()
    frame16 = cv2.imread(str(ROOT / "assets" / "demo" / "frame16.png"))
    for i in range(2):
        cv2.imwrite(str(ws / "frames" / f"{i}.png"), cv2.resize(frame16, (96, 72)))
    cv2.imwrite(str(ws / "frame.png"), cv2.resize(frame16, (96, 72)))
    _dataset(ws / "Kvasir-SEG", 12, 0)
    _dataset(ws / "CVC-ClinicDB", 12, 1)
    (ws / "normal-colon").mkdir()  # polyp-free frames: mucosa without a disc
    for i in range(8):
        cv2.imwrite(str(ws / "normal-colon" / f"{i}.jpg"), cv2.resize(frame16[:60, :60], (64, 64)))
    for name in ("kvasir-seg", "cvc-clinicdb"):  # docs/gpu.md's spelling
        (ws / name).symlink_to(ws / ("Kvasir-SEG" if name == "kvasir-seg" else "CVC-ClinicDB"))
    (ws / "tiny.json").write_text(json.dumps(TINY))
    return ws


def _run(argv: list[str], monkeypatch, workspace: Path) -> int:
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(sys, "argv", ["lsdseg", *argv])  # command.txt records sys.argv
    try:
        return main(argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)


COMMANDS = doc_commands()


def test_every_doc_command_runs_here_or_says_why_not():
    assert len(COMMANDS) > 20  # the docs were read
    runnable = [c for _, lang, c in COMMANDS if lang != "python" and not skip_reason(c)]
    odd = [
        c for c in runnable if not c.startswith(("lsdseg ", "python scripts/", "python3 scripts/"))
    ]
    assert not odd, f"commands with no rule (run them here, or add a SKIP reason): {odd}"


@pytest.fixture(scope="module")
def mine(workspace) -> Path:
    """runs/train/mine, from README's train command (limited), as the docs' later commands
    expect it."""
    readme = next(c for w, _, c in COMMANDS if w.startswith("README") and "--name mine" in c)
    mp = pytest.MonkeyPatch()
    try:
        assert _run(limited(shlex.split(readme)[1:]), mp, workspace) == 0
    finally:
        mp.undo()
    return workspace / "runs" / "train" / "mine"


@pytest.mark.slow
@pytest.mark.parametrize(
    "where,command",
    [(w, c) for w, lang, c in COMMANDS if lang != "python" and not skip_reason(c)],
    ids=lambda v: v if ".md:" in v else None,
)
def test_doc_command_runs(where, command, workspace, mine, monkeypatch, tmp_path):
    monkeypatch.setenv("LSDSEG_CACHE", str(workspace / ".cache"))  # one export per setting
    argv = shlex.split(command)
    if argv[0] in ("python", "python3"):  # a repository script, in this interpreter
        import subprocess

        proc = subprocess.run([sys.executable, *argv[1:]], cwd=workspace, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{where}: {command}\n{proc.stderr[-2000:]}"
        return
    assert argv[0] == "lsdseg"
    code = _run(limited(argv[1:]), monkeypatch, workspace)
    assert code == 0, f"{where}: {command}"


@pytest.mark.slow
def test_readme_python_example_runs(workspace, monkeypatch):
    (where, _, code) = next(c for c in COMMANDS if c[1] == "python")
    monkeypatch.chdir(workspace)
    namespace: dict[str, object] = {}
    exec(compile(code, where, "exec"), namespace)  # the README's example, as written
    r = namespace["r"]
    assert r.hypotheses.shape[0] == 8 and r.mask.shape == (72, 96)
