"""``vitpipe bench``: the tutorial's loop against vitpipe's train stage, same data and recipe, one process.

The loop runs first, before the train stage sets its process-wide flags (``runtime.configure``).
Each side's wall time covers training only: building the model and loaders, every epoch with its
validation pass, keeping the best weights (vitpipe: also its feature pass, from an EMPTY cache,
and writing its model and metrics). Both best-val models then score every test image, untimed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from scipy.stats import binomtest

from vitpipe.bench.memory import PeakMemory, release_free_memory
from vitpipe.bench.tutorial import TUTORIAL_WORKERS, evaluate_tutorial, train_tutorial
from vitpipe.cachedir import ENV
from vitpipe.check.datacheck import check_dataset, refused
from vitpipe.data.index import DatasetIndex, Sample
from vitpipe.download.synthetic import generate
from vitpipe.errors import VitpipeError
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.fileio import write_text
from vitpipe.model.features import Extractor, FeatureCache
from vitpipe.params import DataParams, Params, TrainParams, parse_params
from vitpipe.report.markdown import md_header, md_row
from vitpipe.runtime import describe_device, resolve_device
from vitpipe.train.training import TrainOutputs, run_training

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/vitpipe/bench/bench.py
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "butterflies-10"
LOOP, VITPIPE = "tutorial loop", "vitpipe"
COLUMNS = ("date", "device", "data (train/valid/test)", "method", "epochs", "train s", "recipe img/s",
           "backbone img/s", "speedup", "test acc", "test acc 95% CI", "minus loop's (95% CI)", "best val",
           "peak RSS MiB", "peak anon MiB")
HEADER = f"""# Benchmarks

`make bench` (`vitpipe bench`) trains the recipe in `params.yaml` (the tutorial's: frozen backbone,
MLP head, label smoothing, Adam, StepLR) twice, in one process, on the same data, with the same seed:

- **{LOOP}**: the tutorial's per-epoch loop, faithfully (`src/vitpipe/tutorial.py`): one ImageFolder
  per split, batch 128/32, shuffle, 4 DataLoader workers, fp32, every train image through the frozen
  backbone in every epoch;
- **{VITPIPE}**: vitpipe's train stage (`run_training`) with an EMPTY cache folder, so its time
  includes the one backbone pass per image and view (`train.cache_views`, `train.precision`; on
  `train.feature_runtime: onnxruntime`, the backbone's ONNX export too).
  With `train.cache_views: 1` (the default) the head trains on the eval view alone: NO augmentation,
  where the loop draws fresh flips and erasing every epoch; the two sides do not train the same recipe.

Columns: **train s**: wall seconds of training only (model and loaders built, every epoch with its
validation pass, best weights kept; vitpipe also writes its model and metrics), not the test pass.
**recipe img/s**: epochs x train images / train s. **backbone img/s**: images through the backbone per
second: the loop, epochs x (train + valid) / train s; vitpipe, the images of its feature pass / that
pass's seconds (onnxruntime rows: the one-off ONNX export, cached after, is in train s, not here). **speedup**: the loop's train s / this row's. **test acc**: over EVERY test image, with
(correct/images); **test acc 95% CI**: its Wilson score interval (on 50 test images about +-0.13, so
one run tells apart only large differences); **minus loop's (95% CI)**: this row's test accuracy minus
the loop's, with Newcombe's interval for a difference of two proportions (an interval holding 0: no
measurable difference, never "equal accuracy"); **best val**: the best epoch's. **peak RSS MiB**:
this process's peak resident memory while training (VmHWM reset before each side; the second side
starts from what the first left).
**peak anon MiB**: peak anonymous memory (heap, tensors) of the process and its DataLoader workers,
pages shared by fork counted once (sum of Pss_Anon, sampled every second). Rows are appended, newest last.
"""


@dataclass(frozen=True)
class MethodResult:
    """One side of the benchmark."""

    method: str
    epochs: int
    seconds: float
    train_images: int
    backbone_images: int
    backbone_seconds: float
    val_correct: int
    val_images: int
    test_correct: int
    test_images: int
    peak_rss_mib: float
    peak_anon_mib: float

    @property
    def recipe_rate(self) -> float:
        """epochs x train images per second."""
        return self.epochs * self.train_images / self.seconds

    @property
    def backbone_rate(self) -> float:
        """Images through the frozen backbone per second."""
        return self.backbone_images / self.backbone_seconds


@dataclass(frozen=True)
class BenchResult:
    """A benchmark run: where, on what, and each side's figures."""

    date: str
    device: str
    data: str
    results: tuple[MethodResult, ...]

    def speedup(self, result: MethodResult) -> float | None:
        """The loop's seconds / ``result``'s; None without a loop run."""
        loop = next((r for r in self.results if r.method == LOOP), None)
        return None if loop is None else loop.seconds / result.seconds


def bench_params(params: Params, *, epochs: int | None = None, model: str | None = None,
                 img_size: int | None = None) -> Params:
    """``params`` with the command line's overrides, validated like params.yaml."""
    raw = dataclasses.asdict(params)
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    if model is not None:
        raw["model"]["name"] = model
    if img_size is not None:
        raw["model"]["img_size"] = img_size
    return parse_params(raw)


def resolve_data(data: Path | None, params: DataParams, scratch: Path) -> tuple[Path, str]:
    """(dataset root, its name): ``data``, else butterflies-10 beside the repo, else a synthetic set in ``scratch``."""
    if data is not None:
        if not Path(data).is_dir():
            raise VitpipeError(f"--data {data}: not a folder; give a dataset root holding train/, valid/, test/.")
        return Path(data), Path(data).resolve().name
    if DEFAULT_DATA.is_dir():
        return DEFAULT_DATA, DEFAULT_DATA.name
    root = scratch / "synthetic"
    root.mkdir(parents=True)
    generate(root, params.synthetic, seed=params.seed)
    s = params.synthetic
    return root, f"synthetic ({s.classes} classes, {s.image_size} px)"


class _TimedCache(FeatureCache):
    """A feature cache that adds up the seconds its requests take (``computed`` counts the images), less
    an onnxruntime backbone's one-off export (``export_seconds``)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.seconds = self.export_seconds = 0.0

    def features(self, extractor: Extractor, root: Path, samples: Sequence[Sample], **kwargs: Any) -> torch.Tensor:
        exported = extractor.onnx.export_seconds if extractor.onnx else 0.0
        start = time.perf_counter()
        out = super().features(extractor, root, samples, **kwargs)
        export = (extractor.onnx.export_seconds if extractor.onnx else 0.0) - exported
        self.seconds += time.perf_counter() - start - export
        self.export_seconds += export
        return out


@contextlib.contextmanager
def _cold_cache_folder(work: Path) -> Iterator[None]:
    """vitpipe's cache folder (features, ONNX backbones, decoded images) is ``work/cache`` in the block."""
    before = os.environ.get(ENV)
    os.environ[ENV] = str(work / "cache")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def _run_loop(params: Params, root: Path, *, workers: int) -> MethodResult:
    logger.info("bench: %s, %d epochs, %d workers", LOOP, params.train.epochs, workers)
    with PeakMemory() as mem:
        start = time.perf_counter()
        run = train_tutorial(params, root, workers=workers)
        seconds = time.perf_counter() - start
    test_correct, test_images = evaluate_tutorial(run, workers=workers)
    epochs, sizes = params.train.epochs, run.sizes
    return MethodResult(method=LOOP, epochs=epochs, seconds=seconds, train_images=sizes["train"],
                        backbone_images=epochs * (sizes["train"] + sizes["valid"]), backbone_seconds=seconds,
                        val_correct=run.best_correct, val_images=sizes["valid"], test_correct=test_correct,
                        test_images=test_images, peak_rss_mib=mem.rss_mib, peak_anon_mib=mem.anon_mib)


def _run_vitpipe(params: Params, index: DatasetIndex, work: Path, *, label: str = VITPIPE) -> MethodResult:
    logger.info("bench: %s, %d epochs, empty feature cache in %s", label, params.train.epochs, work)
    cache = _TimedCache(work / "features")
    outputs = TrainOutputs(model=work / "model.safetensors", metrics=work / "train.json", live=work / "dvclive",
                           checkpoints=work / "checkpoints")  # a killed bench never resumes: timings stay whole
    with PeakMemory() as mem, _cold_cache_folder(work):
        start = time.perf_counter()
        train = run_training(params, index, outputs, cache=cache, started=start)
        seconds = time.perf_counter() - start
    if cache.export_seconds:
        logger.info("bench: %s: the ONNX export took %.1f s (in train s, not in backbone img/s)", label,
                    cache.export_seconds)
    backbone_images, backbone_seconds = cache.computed, cache.seconds
    if not backbone_images:  # train.cache_views: 0, the image engine: every image, every epoch, as the loop
        backbone_images = params.train.epochs * (train["train_images"] + train["val_images"])
        backbone_seconds = seconds
    with _cold_cache_folder(work):  # evaluate loads the ONNX backbone that training exported
        test = run_evaluation(params, index, outputs.model, cache=cache,
                              outputs=EvalOutputs(metrics=work / "test.json", per_class=work / "per_class.csv",
                                                  predictions=work / "predictions.csv"))
    return MethodResult(method=label, epochs=params.train.epochs, seconds=seconds,
                        train_images=train["train_images"], backbone_images=backbone_images,
                        backbone_seconds=backbone_seconds,
                        val_correct=round(train["best_val_accuracy"] * train["val_images"]),
                        val_images=train["val_images"], test_correct=test["correct"], test_images=test["n_images"],
                        peak_rss_mib=mem.rss_mib, peak_anon_mib=mem.anon_mib)


# Train settings the tutorial's loop does not have: where params.yaml sets one, the sides differ.
_LOOP_FIXED = {"freeze": "backbone", "unfreeze_epoch": None, "augment": "seed", "mixup": 0.0, "cutmix": 0.0,
               "ema_decay": 0.0, "grad_clip": 0.0}


def _warn_if_not_the_recipe(params: Params) -> None:
    changed = [f"train.{k}: {getattr(params.train, k)!r}" for k, v in _LOOP_FIXED.items()
               if getattr(params.train, k) != v]
    if changed:
        logger.warning("bench: the tutorial loop ignores %s (it always trains the frozen-backbone recipe with "
                       "its own augmentation), so the two sides train different recipes", ", ".join(changed))


def checked_index(root: Path, data: DataParams) -> DatasetIndex:
    """The split-check's index of ``root``; a refused dataset is a :class:`VitpipeError`."""
    result = check_dataset(root, data)
    if result.index is None:
        raise refused(result)
    return result.index


def run_bench(params: Params, root: Path, *, out: Path, data_name: str | None = None,
              skip_loop: bool = False, loop_workers: int = TUTORIAL_WORKERS,
              views: Sequence[int] = (), precisions: Sequence[str] = (),
              runtimes: Sequence[str] = ()) -> BenchResult:
    """Runs both sides on ``root`` and appends their rows to the markdown file ``out``.

    Args:
        params: the recipe, as in params.yaml; ``params.data`` only rules the split-check of ``root``.
        root: dataset root holding train/, valid/ and test/.
        out: markdown file to append to (created with an explaining header).
        data_name: how the data is named in the table (default: the folder's name).
        skip_loop: run vitpipe's side only (no speedup then).
        loop_workers: DataLoader workers of the tutorial loop (the tutorial's 4).
        views: run vitpipe once per ``train.cache_views`` value given (default: params.yaml's only).
        precisions: ... and per ``train.precision`` given (default: params.yaml's only) on torch ...
        runtimes: ... and per feature runtime given: ``torch`` (with ``precisions``), ``onnxruntime-fp32``,
            ``onnxruntime-int8`` (default: params.yaml's ``train.feature_runtime``).
    """
    index = checked_index(Path(root), params.data)
    counts = "/".join(str(len(index.samples(split))) for split in ("train", "valid", "test"))
    results = []
    if not skip_loop:
        _warn_if_not_the_recipe(params)
        results.append(_run_loop(params, Path(root), workers=loop_workers))
        release_free_memory()
    variants = [(v, r, p) for v in views or (params.train.cache_views,)
                for r, p in _runtime_precisions(params, precisions, runtimes)]
    for n_views, runtime, precision in variants:
        variant = dataclasses.replace(params, train=dataclasses.replace(
            params.train, cache_views=n_views, precision=precision, feature_runtime=runtime))  # checked again
        what = precision if runtime == "torch" else f"{runtime} {precision}"
        label = VITPIPE if len(variants) == 1 else f"{VITPIPE} (cache_views={n_views}, {what})"
        with tempfile.TemporaryDirectory(prefix="vitpipe-bench-") as work:
            results.append(_run_vitpipe(variant, index, Path(work), label=label))
        release_free_memory()
    bench = BenchResult(date=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"),
                        device=describe_device(resolve_device(params.train.device)),
                        data=f"{data_name or Path(root).resolve().name} ({counts})", results=tuple(results))
    append_rows(out, table_rows(bench))
    return bench


RUNTIMES = ("torch", "onnxruntime-fp32", "onnxruntime-int8")


def _runtime_precisions(params: Params, precisions: Sequence[str], runtimes: Sequence[str]) -> list[tuple[str, str]]:
    """(feature runtime, precision) of each vitpipe run: torch with each of ``precisions``, onnxruntime-P with P."""
    if not runtimes:
        return [(params.train.feature_runtime, p) for p in precisions or (params.train.precision,)]
    torch_default = params.train.precision if params.train.feature_runtime == "torch" else TrainParams().precision
    out = []
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise VitpipeError(f"--runtimes: {runtime!r} is not one of {', '.join(RUNTIMES)}.")
        if runtime == "torch":
            out += [("torch", p) for p in precisions or (torch_default,)]
        else:
            out.append(("onnxruntime", runtime.split("-", 1)[1]))
    return out


def _fraction(correct: int, total: int) -> str:
    return f"{correct / total:.2f} ({correct}/{total})" if total else "-"


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """The 95% Wilson score interval of the proportion ``correct / total`` (scipy)."""
    ci = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def difference_interval(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float, float]:
    """``a``'s proportion minus ``b``'s (each ``(correct, total)``) with Newcombe's 95% interval
    (method 10: from the two Wilson intervals; conservative when both score the same images)."""
    (pa, (la, ua)), (pb, (lb, ub)) = ((k / n, wilson_interval(k, n)) for k, n in (a, b))
    diff = pa - pb
    return diff, diff - math.hypot(pa - la, ub - pb), diff + math.hypot(ua - pa, pb - lb)


def _interval(correct: int, total: int) -> str:
    return "{:.2f}-{:.2f}".format(*wilson_interval(correct, total)) if total else "-"


def _versus_loop(bench: BenchResult, r: MethodResult) -> str:
    loop = next((x for x in bench.results if x.method == LOOP), None)
    if loop is None or r is loop or not r.test_images or not loop.test_images:
        return "-"
    diff, low, high = difference_interval((r.test_correct, r.test_images), (loop.test_correct, loop.test_images))
    return f"{diff:+.2f} ({low:+.2f} to {high:+.2f})"


def _mib(value: float) -> str:
    return f"{value:.0f}" if value > 0 else "-"  # 0: no /proc to read


def table_rows(bench: BenchResult) -> list[str]:
    """The markdown rows of ``bench``, one per side."""
    rows = []
    for r in bench.results:
        speedup = bench.speedup(r)
        cells = (bench.date, bench.device, bench.data, r.method, str(r.epochs), f"{r.seconds:.1f}",
                 f"{r.recipe_rate:.1f}", f"{r.backbone_rate:.1f}", "-" if speedup is None else f"{speedup:.2f}x",
                 _fraction(r.test_correct, r.test_images), _interval(r.test_correct, r.test_images),
                 _versus_loop(bench, r), _fraction(r.val_correct, r.val_images),
                 _mib(r.peak_rss_mib), _mib(r.peak_anon_mib))
        rows.append(md_row(cells))
    return rows


def table_header() -> list[str]:
    """The markdown table's header and alignment lines."""
    return md_header(COLUMNS)


def append_rows(path: Path, rows: list[str], *, header: list[str] | None = None, section: str = "") -> None:
    """Appends ``rows`` to the table of ``path`` that starts with ``header`` (default: the method table's).

    Without such a table, one is started at the end of the file, after ``section`` (a heading and
    its text). A missing file starts with :data:`HEADER`. The file is rewritten atomically.
    """
    path = Path(path)
    header = header or table_header()
    text = (path.read_text(encoding="utf-8") if path.exists() else "") or HEADER
    lines = text.rstrip("\n").splitlines()
    if header[0] in lines:
        end = lines.index(header[0]) + 2
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines[end:end] = rows
    else:
        lines += ["", *([section, ""] if section else []), *header, *rows]
    write_text(path, "\n".join(lines) + "\n")
    logger.info("bench: appended %d rows to %s", len(rows), path)


def format_table(bench: BenchResult) -> str:
    """The run's rows under the table header, for stdout."""
    return "\n".join(table_header() + table_rows(bench))
