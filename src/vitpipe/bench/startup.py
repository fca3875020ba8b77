"""``vitpipe bench``'s start-up rows: each stage's fixed cost in seconds, as DVC runs it.

Each stage script runs as its own process (as ``dvc repro`` runs it) on a synthetic set of 2 classes
and a handful of images, with the params' model and device and an empty cache folder, so its wall
time is what the stage costs besides its work: the interpreter, imports, CUDA's initialisation, building
the model, DataLoader workers, writing the outputs (and, for train and evaluate, one padded batch per split
through the backbone). **before the first image** is what train and evaluate log as their start-up (the
process's seconds until the model is ready for its first image); **imports s** is the stage script's
imports alone (``python -X importtime``: the sum of its top-level imports). With
``against``, another checkout's stage scripts (its ``stages/`` with its ``src/`` first on the path)
run in turn with this one's, in the same rounds, so the two columns share the host's load.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from vitpipe.errors import VitpipeError
from vitpipe.params import Params

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/vitpipe/bench/startup.py
# (name, script, arguments), in pipeline order: each reads what the one before wrote.
STAGES = (
    ("check-params", "check_params.py", ()),
    ("download", "download.py", ("data/raw",)),
    ("split-check", "split_check.py", ("data/raw", "--index", "data/index.json", "--report", "metrics/data.json",
                                       "--totals", "metrics/data_totals.json")),
    ("train", "train.py", ("--index", "data/index.json", "--model", "models/model.safetensors", "--metrics",
                           "metrics/train.json", "--live", "dvclive")),
    ("evaluate", "evaluate.py", ("--index", "data/index.json", "--model", "models/model.safetensors", "--metrics",
                                 "metrics/test.json", "--per-class", "metrics/per_class.csv", "--per-class-json",
                                 "metrics/per_class.json", "--predictions", "metrics/predictions.csv")),
)
TINY_SET = {"classes": 2, "train_per_class": 4, "valid_per_class": 2, "test_per_class": 2, "image_size": 64}


@dataclass(frozen=True)
class StageStartup:
    """One stage: median wall seconds over the rounds (this checkout, and ``against``'s), and its imports."""

    stage: str
    seconds: float
    imports: float
    ready: float | None = None  # the stage's own start-up line (train, evaluate)
    against_seconds: float | None = None
    against_imports: float | None = None
    against_ready: float | None = None


_READY = re.compile(r"start-up: ([0-9.]+) s before the first image")


def _project(work: Path, params: Params) -> Path:
    """A folder with a params.yaml of ``params``' model and device, 1 epoch, and the tiny synthetic set;
    every other key left out, so each checkout reads its own defaults (an older one knows fewer keys)."""
    work.mkdir(parents=True, exist_ok=True)
    for folder in ("metrics", "models"):
        (work / folder).mkdir(exist_ok=True)
    model = {k: v for k, v in dataclasses.asdict(params.model).items() if v != getattr(type(params.model)(), k)}
    train = {"epochs": 1, **({"device": params.train.device} if params.train.device != "auto" else {})}
    raw = {"data": {"synthetic": TINY_SET}, "model": model, "train": train}
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return work


def _env(checkout: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "VITPIPE_CACHE_DIR": str(cache), "PYTHONPATH": str(checkout / "src"), "DVC_NO_ANALYTICS": "1"}


def _run(checkout: Path, script: str, args: Sequence[str], work: Path, cache: Path) -> tuple[float, float | None]:
    """Wall seconds of one stage process, and the start-up it logged (None: none); a failure is a
    :class:`VitpipeError` with its last line."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(checkout / "stages" / script), *args], cwd=work,
                          env=_env(checkout, cache), capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise VitpipeError(f"bench start-up: {checkout / 'stages' / script} failed in {work}: {last}")
    ready = _READY.search(proc.stderr)
    return seconds, float(ready.group(1)) if ready else None


def import_seconds(checkout: Path, script: str, work: Path) -> float:
    """The stage script's imports: the top-level entries of ``python -X importtime`` (its ``--help``)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(checkout / "stages" / script), "--help"],
                          cwd=work, env=_env(checkout, work / "cache-imports"), capture_output=True, text=True,
                          timeout=300)
    total = 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not name[1:].startswith(" "):  # depth 0: a module the script (or the interpreter) imported itself
            total += int(cumulative)
    return total / 1e6


def measure_startup(params: Params, work: Path, *, rounds: int = 3, against: Path | None = None,
                    checkout: Path = REPO_ROOT) -> list[StageStartup]:
    """Each stage's median wall seconds and imports over ``rounds`` (after one unmeasured round that warms the
    disk cache), this checkout and ``against`` in turn within each round."""
    if not (checkout / "stages").is_dir():
        raise VitpipeError(f"bench start-up: {checkout} has no stages/ folder; run it from a vitpipe checkout.")
    if against is not None and not (Path(against) / "stages").is_dir():
        raise VitpipeError(f"--startup-against {against}: no stages/ folder there; give a vitpipe checkout.")
    sides = {"this": checkout, **({"against": Path(against)} if against is not None else {})}
    projects = {side: _project(work / side, params) for side in sides}
    times: dict[tuple[str, ...], list[float]] = {}
    for round_ in range(rounds + 1):
        for side, root in sides.items():
            cache = work / f"cache-{side}-{round_}"  # empty: the features, ONNX and decoded stores computed anew
            for name, script, args in STAGES:
                seconds, ready = _run(root, script, args, projects[side], cache)
                if round_ > 0:
                    times.setdefault((side, name), []).append(seconds)
                    if ready is not None:
                        times.setdefault((side, name, "ready"), []).append(ready)
                    times.setdefault((side, name, "imports"), []).append(import_seconds(root, script, projects[side]))
        logger.info("bench start-up: round %d of %d done", round_, rounds)

    def median(*key: str) -> float | None:
        return statistics.median(times[key]) if key in times else None

    return [StageStartup(stage=name, seconds=median("this", name), imports=median("this", name, "imports"),
                         ready=median("this", name, "ready"), against_seconds=median("against", name),
                         against_imports=median("against", name, "imports"),
                         against_ready=median("against", name, "ready"))
            for name, _, _ in STAGES]
