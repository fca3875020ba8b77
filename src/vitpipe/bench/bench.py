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
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from vitpipe.bench.memory import PeakMemory, release_free_memory
from vitpipe.bench.probe import PROBE, run_probe
from vitpipe.bench.table import (  # noqa: F401 - re-exported: vitpipe.bench.bench is the command's module
    COLUMNS,
    HEADER,
    LOOP,
    VITPIPE,
    BenchResult,
    MethodResult,
    append_rows,
    difference_interval,
    format_table,
    table_header,
    table_rows,
    wilson_interval,
)
from vitpipe.bench.tutorial import TUTORIAL_WORKERS, evaluate_tutorial, train_tutorial
from vitpipe.cachedir import ENV
from vitpipe.check.datacheck import check_dataset, refused
from vitpipe.data.index import DatasetIndex, Sample
from vitpipe.download.synthetic import generate
from vitpipe.errors import VitpipeError
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.model.features import Extractor, FeatureCache
from vitpipe.params import DataParams, Params, TrainParams, parse_params
from vitpipe.runtime import describe_device, resolve_device
from vitpipe.train.training import TrainOutputs, run_training

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/vitpipe/bench/bench.py
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "butterflies-10"


def bench_params(params: Params, *, epochs: int | None = None, model: str | None = None,
                 img_size: int | None = None, weights: str | None = None) -> Params:
    """``params`` with the command line's overrides, validated like params.yaml."""
    given = {"train.epochs": epochs, "model.name": model, "model.img_size": img_size, "model.weights": weights}
    return with_overrides(params, {k: v for k, v in given.items() if v is not None})


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """``params`` with ``{"section.key": value}`` set, validated like params.yaml."""
    raw = dataclasses.asdict(params)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = raw
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise VitpipeError(f"--variant: {key} is not a params key (section.key, e.g. evaluate.tta).")
            target = target[part]
        if leaf not in target:
            raise VitpipeError(f"--variant: {key} is not a params key (section.key, e.g. evaluate.tta).")
        target[leaf] = value
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
              runtimes: Sequence[str] = (), variants: Sequence[dict[str, Any]] = (),
              probe: bool = False) -> BenchResult:
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
        variants: one more vitpipe run each, ``{"section.key": value}`` set on ``params`` (e.g. evaluate.tta).
        probe: add a logistic-regression probe on the frozen features (:mod:`vitpipe.bench.probe`).
    """
    index = checked_index(Path(root), params.data)
    counts = "/".join(str(len(index.samples(split))) for split in ("train", "valid", "test"))
    results = []
    if not skip_loop:
        _warn_if_not_the_recipe(params)
        results.append(_run_loop(params, Path(root), workers=loop_workers))
        release_free_memory()
    runs = [(v, r, p) for v in views or (params.train.cache_views,)
            for r, p in _runtime_precisions(params, precisions, runtimes)]
    checked = [with_overrides(params, overrides) for overrides in variants]  # all refused before any run
    for n_views, runtime, precision in runs:
        variant = dataclasses.replace(params, train=dataclasses.replace(
            params.train, cache_views=n_views, precision=precision, feature_runtime=runtime))  # checked again
        what = precision if runtime == "torch" else f"{runtime} {precision}"
        label = VITPIPE if len(runs) == 1 and not variants else f"{VITPIPE} (cache_views={n_views}, {what})"
        results.append(_in_scratch(_run_vitpipe, variant, index, label=label))
    for overrides, variant in zip(variants, checked):
        label = f"{VITPIPE} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"
        results.append(_in_scratch(_run_vitpipe, variant, index, label=label))
    if probe:
        results.append(_in_scratch(_run_probe, params, index))
    bench = BenchResult(date=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"),
                        device=describe_device(resolve_device(params.train.device)),
                        data=f"{data_name or Path(root).resolve().name} ({counts})", results=tuple(results))
    append_rows(out, table_rows(bench))
    return bench


def _in_scratch(run, params: Params, index: DatasetIndex, **kwargs: Any) -> MethodResult:
    """``run(params, index, work)`` in a fresh temporary folder; the memory it freed returned to the OS after."""
    with tempfile.TemporaryDirectory(prefix="vitpipe-bench-") as work:
        result = run(params, index, Path(work), **kwargs)
    release_free_memory()
    return result


def _run_probe(params: Params, index: DatasetIndex, work: Path) -> MethodResult:
    logger.info("bench: %s, empty feature cache in %s", PROBE, work)
    with PeakMemory() as mem, _cold_cache_folder(work):
        probe = run_probe(params, index, work)
    return MethodResult(method=PROBE, epochs=0, seconds=probe.seconds, train_images=probe.train_images,
                        backbone_images=probe.images, backbone_seconds=probe.feature_seconds,
                        val_correct=probe.val_correct, val_images=probe.val_images, test_correct=probe.test_correct,
                        test_images=probe.test_images, peak_rss_mib=mem.rss_mib, peak_anon_mib=mem.anon_mib)


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
