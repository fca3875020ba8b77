"""The train stage: build the model, pick the engine, run the epochs with checkpoints, write results.

What it writes: the best model, with what made it in its metadata (engine, epochs, parameter
counts, device, library versions, params hash); ``metrics/train.json``, the headline numbers DVC
reads as metrics (best val accuracy and epoch, epochs run, image counts); and DVCLive's folder
(:mod:`~vitpipe.train.live`), one row per epoch as each epoch ends. The stage's wall time goes to
the log only, so a rerun of the same params leaves dvc.lock as it was.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vitpipe.cachedir import cache_subdir
from vitpipe.data.index import DatasetIndex
from vitpipe.data.torchdata import ImageDataset
from vitpipe.errors import VitpipeError
from vitpipe.fileio import write_json
from vitpipe.model.classifier import (
    Classifier,
    ModelInfo,
    build_model,
    count_parameters,
    set_backbone_trainable,
)
from vitpipe.model.features import (
    Extractor,
    FeatureCache,
    view_seed,
)
from vitpipe.model.model_file import card_for, save_model
from vitpipe.model.packaged import random_init_warning
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.params import Params
from vitpipe.runtime import EXACT, compute_dtype, configure, device_name, host_class, resolve_device, seed_everything
from vitpipe.train import distributed
from vitpipe.train.batches import (
    BatchSource,
    DecodedBatches,
    LoaderBatches,
    uses_decoded_images,
)
from vitpipe.train.checkpoint import (
    Progress,
    checkpoint_path,
    discard_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from vitpipe.train.decoded import DecodedImages, DeviceAugment
from vitpipe.train.engines import Engine, FeatureEngine, ImageEngine
from vitpipe.train.live import LiveLog, check_live_env, check_live_folder
from vitpipe.train.recipe import (
    build_ema,
    build_loss,
    build_mixup,
    build_optimizer,
    build_scheduler,
    class_weights,
    current_lr,
)
from vitpipe.train.resume import key_parts

logger = logging.getLogger(__name__)

# The history of each epoch (the checkpoint's, and DVCLive's rows). train/val_loss_smoothed: the training
# objective (train.label_smoothing, mixup's soft targets); only val_cross_entropy is comparable with
# test.json's loss (plain cross-entropy).
HISTORY_COLUMNS = ("epoch", "train_loss_smoothed", "train_accuracy", "val_loss_smoothed", "val_cross_entropy",
                   "val_accuracy", "lr")


@dataclass(frozen=True)
class TrainOutputs:
    """Where the train stage writes (the resumable checkpoint goes to the cache folder, keyed by the run)."""

    model: Path
    metrics: Path  # headline numbers: DVC metrics
    live: Path  # DVCLive's folder: per-epoch metrics and curves
    checkpoints: Path | None = None  # where runs keep resumable checkpoints; None: the cache's checkpoints/


def _labels(index: DatasetIndex, split: str) -> torch.Tensor:
    return torch.tensor([s.label for s in index.samples(split)], dtype=torch.long)


def _feature_engine(model: Classifier, index: DatasetIndex, params: Params, *, device: torch.device,
                    cache: FeatureCache, train_tf: Any, eval_tf: Any, losses: tuple) -> FeatureEngine:
    t = params.train
    extractor = Extractor.for_backbone(model.backbone.to(device), device, t.precision, num_workers=t.loader_workers,
                                       channels_last=t.channels_last and device.type == "cuda",
                                       runtime=t.feature_runtime)
    train_samples = index.samples("train")
    views = []
    for v in range(t.cache_views):
        tf = eval_tf if v == 0 else train_tf
        views.append(cache.features(extractor, index.root, train_samples, transform=tf,
                                    view_seed=view_seed(t.seed, v), desc=f"train view {v}"))
    val_x = cache.features(extractor, index.root, index.samples("valid"), transform=eval_tf,
                           view_seed=None, desc="valid view 0")
    return FeatureEngine(model.head, train_x=torch.stack(views), train_y=_labels(index, "train"),
                         val_x=val_x, val_y=_labels(index, "valid"), params=t, device=device,
                         loss_fn=losses[0], val_loss_fn=losses[1])


def _image_batches(index: DatasetIndex, t, *, device: torch.device, spec, train_tf, eval_tf) -> BatchSource:
    """Decoded uint8 images augmented on the device (fine-tuning on CUDA by default), or a DataLoader over files."""
    if not uses_decoded_images(t, device):
        return LoaderBatches(ImageDataset(index.root, index.samples("train"), train_tf),
                             ImageDataset(index.root, index.samples("valid"), eval_tf),
                             device=device, num_workers=t.loader_workers)
    root = cache_subdir("decoded")
    try:
        stores = [DecodedImages.build_or_open(root, index.root, index.samples(split), spec,
                                              num_workers=t.loader_workers) for split in ("train", "valid")]
    except VitpipeError as exc:
        raise VitpipeError(f"{exc} Or set train.image_source: loader (no decoded store).") from None
    return DecodedBatches(*stores, train_augment=DeviceAugment(spec, train=True, device=device),
                          eval_augment=DeviceAugment(spec, train=False, device=device), device=device)


def _check_splits(index: DatasetIndex) -> None:
    for split in ("train", "valid"):
        if not index.samples(split):
            raise VitpipeError(f"the {split} split has no images; check data.source "
                               f"(a train-only dataset gets valid/test from data.val_fraction/test_fraction).")


def run_training(params: Params, index: DatasetIndex, outputs: TrainOutputs, *,
                 cache: FeatureCache | None = None, started: float | None = None) -> dict[str, Any]:
    """Trains per ``params`` on ``index``; writes the best model, the metrics and DVCLive's files.

    Returns what train.json holds, the model's provenance, and ``train_seconds`` (logged, not written).
    """
    started = time.perf_counter() if started is None else started
    t = params.train
    _check_splits(index)
    if distributed.is_main():
        check_live_env()
        check_live_folder(outputs.live)  # before any work: DVCLive clears files in its folder
    if distributed.enabled() and t.uses_feature_cache:
        raise VitpipeError("torchrun runs full fine-tuning; with a frozen backbone and train.cache_views > 0 "
                           "the head trains in one process. Run without torchrun, or set train.freeze: none.")
    device = distributed.setup(resolve_device(t.device))
    configure(device, t.precision)
    seed_everything(t.seed)
    model, info = build_model(params.model, len(index.classes), seed=t.seed, exact_init=t.precision == EXACT)
    if info.weights_source == "random-init" and not t.backbone_trains(0) and distributed.is_main():
        logger.warning("%s", random_init_warning(params.model.name))
    spec = eval_spec(t.augment, info)
    train_tf, eval_tf = build_train_transform(t.augment, spec, info), build_eval_transform(spec)
    mixup = build_mixup(t, len(index.classes))  # params refuse mixup where the head trains on features
    weight = class_weights(t, _labels(index, "train"), len(index.classes))
    dtype = compute_dtype(t.precision)
    losses = (build_loss(t, mixup=mixup is not None, weight=weight).to(device, dtype), build_loss(t, mixup=False))
    logger.info("start-up: %.1f s before the first image (imports, %s, %s built)", time.perf_counter() - started,
                device_name(device), params.model.name)
    engine: Engine
    if t.uses_feature_cache:
        engine = _feature_engine(model, index, params, device=device, cache=cache or FeatureCache(),
                                 train_tf=train_tf, eval_tf=eval_tf, losses=losses)
    else:
        batches = _image_batches(index, t, device=device, spec=spec, train_tf=train_tf, eval_tf=eval_tf)
        engine = ImageEngine(model, batches=batches, params=t, device=device, loss_fn=losses[0],
                             val_loss_fn=losses[1], mixup=mixup)
    # The optimizer collects every parameter that trains at some point of the run, then the backbone
    # starts frozen unless it trains from the first epoch (the engine unfreezes it when its epoch comes).
    set_backbone_trainable(model, t.backbone_ever_trains)
    optimizer = build_optimizer(model if t.backbone_ever_trains else model.head, t, fused=device.type == "cuda")
    set_backbone_trainable(model, t.backbone_trains(0))
    scheduler = build_scheduler(optimizer, t)
    ema = build_ema(engine.module, t)
    key = key_parts(params, index, device)
    checkpoint = checkpoint_path(key, outputs.checkpoints)
    progress = _resume_or_start(checkpoint, key, engine.module, optimizer, scheduler, ema)
    live = LiveLog(outputs.live, progress.history) if distributed.is_main() else None
    checkpoint = _run_epochs(t, engine, optimizer, scheduler, ema, progress, live=live, checkpoint=checkpoint, key=key)
    metrics = {}
    if live is not None:
        engine.module.load_state_dict(progress.best_state)
        headline, provenance = _metrics(params, index, model, engine, info, progress, device)
        card = card_for(index.classes, params.model, info, spec=spec, precision=t.precision,
                        feature_dtype=_dtype_name(engine.feature_dtype), feature_runtime=t.feature_runtime,
                        provenance=provenance)
        save_model(outputs.model, model.cpu().float(), card)  # exact: float64 weights rounded to fp32 once
        write_json(outputs.metrics, headline)
        live.close()
        if checkpoint is not None:
            discard_checkpoint(checkpoint)
        metrics = {**headline, **provenance, "train_seconds": round(time.perf_counter() - started, 1)}
        logger.info("best val accuracy %.4f at epoch %d of %d (%d valid images); model in %s; %.1f s",
                    progress.best_accuracy, progress.best_epoch, t.epochs, metrics["val_images"], outputs.model,
                    metrics["train_seconds"])
    distributed.teardown()
    return metrics


def _run_epochs(t, engine: Engine, optimizer, scheduler, ema, progress: Progress, *, live: LiveLog | None,
                checkpoint: Path | None, key: dict[str, Any]) -> Path | None:
    """The epochs from ``progress.next_epoch`` on; each ends with DVCLive's row and (but the last) a
    checkpoint, written by the main process. Returns the checkpoint's path, None if it could not be saved."""
    epochs = tqdm(range(progress.next_epoch, t.epochs), desc="epochs", unit="epoch", initial=progress.next_epoch,
                  total=t.epochs, disable=None if distributed.is_main() else True)
    with logging_redirect_tqdm():  # the per-epoch log lines print above the bars
        for epoch in epochs:
            _run_epoch(epoch, engine, optimizer, scheduler, ema, progress)
            stop = progress.note_validation(progress.history[-1]["val_accuracy"], min_delta=t.min_delta,
                                            patience=t.patience)
            if live is not None:
                live.log_epoch(progress.history[-1])
                if not (stop or epoch == t.epochs - 1):  # the last epoch's state is the outputs themselves
                    checkpoint = _checkpointed(checkpoint, key=key, progress=progress, module=engine.module,
                                               optimizer=optimizer, scheduler=scheduler, ema=ema)
            distributed.barrier()
            if stop:
                logger.info("early stopping after epoch %d: no val accuracy gain above %g for %d epochs "
                            "(train.patience); best epoch %d", epoch, t.min_delta, t.patience, progress.best_epoch)
                break
    return checkpoint


def _resume_or_start(checkpoint: Path, key: dict[str, Any], module, optimizer, scheduler, ema) -> Progress:
    payload = load_checkpoint(checkpoint, key=key)
    progress = None if payload is None else restore(payload, module=module, optimizer=optimizer,
                                                    scheduler=scheduler, ema=ema)
    if progress is None:
        return Progress()
    logger.info("resuming from %s: epochs 0-%d done, best val accuracy %.4f (epoch %d)", checkpoint,
                progress.next_epoch - 1, progress.best_accuracy, progress.best_epoch)
    return progress


def _checkpointed(path: Path | None, **state: Any) -> Path | None:
    """Saves the checkpoint at ``path``; returns None (no more checkpoints this run) when the cache
    folder cannot take it: training goes on, a kill would then start it over."""
    if path is None:
        return None
    try:
        save_checkpoint(path, **state)
    except VitpipeError as exc:
        logger.warning("%s; no checkpoints this run (a killed run starts over)", str(exc).split(". ")[0])
        return None
    return path


def _run_epoch(epoch: int, engine, optimizer, scheduler, ema, progress: Progress) -> None:
    lr = current_lr(optimizer)
    train_loss, train_acc = engine.train_epoch(epoch, optimizer, ema)
    scored = ema.module if ema is not None else engine.module
    val_loss, val_ce, val_acc = engine.evaluate(scored)
    for name, value in (("train loss", train_loss), ("val loss", val_loss), ("val cross-entropy", val_ce)):
        if not math.isfinite(value):  # NaN's argmax is class 0: nothing after this epoch would mean anything
            raise VitpipeError(f"epoch {epoch}: the {name} is {value} (training diverged); the run stops here, "
                               f"no model written. Lower train.lr (this epoch ran at {lr:g}), or set train.precision: fp32.")
    scheduler.step(epoch + 1)
    progress.history.append({"epoch": epoch, "train_loss_smoothed": train_loss, "train_accuracy": train_acc,
                             "val_loss_smoothed": val_loss, "val_cross_entropy": val_ce, "val_accuracy": val_acc,
                             "lr": lr})
    if val_acc > progress.best_accuracy:
        progress.best_accuracy, progress.best_epoch = val_acc, epoch
        progress.best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
    progress.next_epoch = epoch + 1
    logger.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f (cross-entropy %.4f) acc %.4f | lr %.3g",
                epoch, train_loss, train_acc, val_loss, val_ce, val_acc, lr)


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _metrics(params: Params, index: DatasetIndex, model: Classifier, engine: Engine, info: ModelInfo,
             progress: Progress, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics/train.json: the best epoch and what was trained on; the model card's provenance: how)."""
    t = params.train
    set_backbone_trainable(model, t.backbone_ever_trains)  # count what the run trained, not the last state
    trainable, total = count_parameters(model)
    headline = {
        "best_val_accuracy": progress.best_accuracy,
        "best_epoch": progress.best_epoch,
        "epochs_run": len(progress.history),
        "stopped_early": progress.stopped_early,
        "train_images": len(index.samples("train")),
        "val_images": len(index.samples("valid")),
        # Where the numbers were computed, as far as it decides their bytes ("x86_64 exact" on any x86-64
        # CPU with precision exact): the PR report compares it between base and head.
        "host": host_class(device, t.precision),
        "weights": info.weights_source,  # random-init | package:NAME | file:NAME | timm:NAME: a `dvc exp show` column
    }
    return headline, {
        "epochs": t.epochs,
        "engine": engine.name,
        "cache_views": t.cache_views if engine.feature_dtype is not None else 0,
        "class_weights": t.class_weights,
        "precision": t.precision,
        "feature_runtime": t.feature_runtime,
        "model": params.model.name,
        "weights": info.weights_source,
        **({"weights_origin": info.weights_origin} if info.weights_origin else {}),
        "pretrained": params.model.pretrained,
        "trainable_params": trainable,
        "total_params": total,
        "device": device_name(device),
        "host": headline["host"],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "params_hash": params.training_hash(),
    }
