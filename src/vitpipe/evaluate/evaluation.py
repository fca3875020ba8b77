"""The evaluate stage: score EVERY test image and write the metrics, per class and per image.

``test.json`` holds the headline numbers DVC reads as metrics (accuracy with its count, loss, top-5,
macro-F1); the per-class numbers go to ``per_class.csv`` and ``per_class.json`` (the same rows, with
null for a class absent from the test split), DVC plots but not DVC metrics: hundreds of classes
would otherwise be hundreds of columns in ``dvc exp show``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitpipe.data.index import DatasetIndex
from vitpipe.errors import VitpipeError
from vitpipe.evaluate.inference import Predictor, load_predictor
from vitpipe.fileio import write_csv, write_json
from vitpipe.finite import first_non_finite_row
from vitpipe.model.features import Extractor, FeatureCache, device_images
from vitpipe.model.transforms import build_eval_transform
from vitpipe.params import Params

logger = logging.getLogger(__name__)

PER_CLASS_COLUMNS = ("class", "accuracy", "precision", "recall", "f1", "correct", "support")
PREDICTION_COLUMNS = ("path", "actual", "predicted", "confidence", "top5")
TOP_K = 5
HEADLINE = ("accuracy", "correct", "n_images", "loss", f"top{TOP_K}_accuracy", "macro_f1")


@dataclass(frozen=True)
class EvalOutputs:
    """Where the evaluate stage writes."""

    metrics: Path  # the headline numbers (DVC metrics)
    per_class: Path  # CSV, one row per class
    predictions: Path  # CSV, one row per test image
    per_class_json: Path | None = None  # the per-class rows as JSON (not DVC metrics); None: not written


def _probabilities(params: Params, index: DatasetIndex, predictor: Predictor, cache: FeatureCache) -> torch.Tensor:
    """(N, C) probabilities for the test split, from cached features when the head was trained on them."""
    samples = index.samples("test")
    card, device = predictor.card, predictor.device
    eval_tf = build_eval_transform(card.eval_transform)
    workers = params.train.loader_workers
    if card.feature_dtype and not predictor.tta:
        backbone = predictor.model.backbone
        extractor = Extractor.for_backbone(backbone, device, card.precision, num_workers=workers,
                                           runtime=card.feature_runtime)
        feats = cache.features(extractor, index.root, samples, transform=eval_tf, view_seed=None,
                               desc="test view 0")
        with torch.inference_mode():
            return predictor.head_logits(feats.to(device)).softmax(-1).cpu()
    probs = [predictor.probabilities(images)
             for images in device_images(index.root, samples, eval_tf, device, batch_size=params.evaluate.batch_size,
                                         num_workers=workers, desc="test")]
    return torch.cat(probs).cpu()  # one copy back at the end: no wait on the device per batch


def score(probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> tuple[dict[str, Any], list[dict]]:
    """Overall and per-class metrics from (N, C) probabilities and (N,) labels (scikit-learn).

    A class with no test image is *absent*: its accuracy, precision, recall and F1 are None (null in
    JSON, empty in CSV), it is left out of ``macro_f1`` and listed in ``absent_classes``. Accuracy,
    top-5 and the loss are over every test image.
    """
    # Imported here, after the pass: sklearn.metrics costs 0.8 s of imports (2-core Xeon, idle), a
    # quarter of the stage's start-up before its first image.
    from sklearn.metrics import f1_score, precision_recall_fscore_support, top_k_accuracy_score

    n, n_classes = probs.shape
    pred = probs.argmax(1)
    ids = np.arange(n_classes)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=ids, zero_division=0)
    present = ids[support > 0]
    correct = np.bincount(labels[pred == labels], minlength=n_classes)
    metrics = {
        "accuracy": float((pred == labels).mean()),
        "correct": int((pred == labels).sum()),
        "n_images": int(n),
        "loss": float(-np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean()),
        # With TOP_K or fewer classes the true class is always among the top TOP_K.
        f"top{TOP_K}_accuracy": float(top_k_accuracy_score(labels, probs, k=TOP_K, labels=ids))
        if n_classes > TOP_K else 1.0,
        "macro_f1": float(f1_score(labels, pred, labels=present, average="macro", zero_division=0)),
        "absent_classes": [classes[c] for c in ids if not support[c]],
        "per_class": {},
    }
    rows = []
    for c, name in enumerate(classes):
        scored = bool(support[c])
        row = {"class": name, "accuracy": float(recall[c]) if scored else None,
               "precision": float(precision[c]) if scored else None, "recall": float(recall[c]) if scored else None,
               "f1": float(f1[c]) if scored else None, "correct": int(correct[c]), "support": int(support[c])}
        rows.append(row)
        metrics["per_class"][name] = {k_: v for k_, v in row.items() if k_ != "class"}
    return metrics, rows


def run_evaluation(params: Params, index: DatasetIndex, model_path: Path, outputs: EvalOutputs, *,
                   cache: FeatureCache | None = None, started: float | None = None) -> dict[str, Any]:
    """Scores every test image with the saved model; writes test.json, per_class.csv, predictions.csv
    and per_class.json. Returns all of it as one dict, with ``tta``. ``started``: when the stage's process
    started (perf_counter), for the start-up line."""
    started = time.perf_counter() if started is None else started
    predictor = load_predictor(model_path, device=params.train.device, tta=params.evaluate.tta)
    card = predictor.card
    if tuple(card.classes) != tuple(index.classes):
        raise VitpipeError(f"{model_path} was trained on classes {list(card.classes)[:5]}..., but the dataset "
                           f"index has {list(index.classes)[:5]}...; rerun the train stage (`dvc repro`).")
    samples = index.samples("test")
    if not samples:
        raise VitpipeError("the test split has no images; nothing to evaluate. Check data.source.")
    logger.info("start-up: %.1f s before the first image (imports, %s, the model loaded)",
                time.perf_counter() - started, predictor.device)
    probs = _probabilities(params, index, predictor, cache or FeatureCache()).double().numpy()
    if probs.shape[0] != len(samples):
        raise VitpipeError(f"scored {probs.shape[0]} test images but the index lists {len(samples)}.")
    bad = first_non_finite_row(torch.from_numpy(probs))
    if bad is not None:
        raise VitpipeError(f"{model_path}: gives non-finite logits (NaN or inf) for test image {samples[bad].path}; "
                           f"nothing written. Train it again (`dvc repro --force train`), with train.precision: fp32 "
                           f"if it was trained in bf16.")
    labels = np.array([s.label for s in samples])
    metrics, rows = score(probs, labels, index.classes)
    if metrics["absent_classes"]:
        logger.warning("%d class(es) have no test image and are left out of the per-class and macro scores "
                       "(empty in %s): %s", len(metrics["absent_classes"]), outputs.per_class.name,
                       ", ".join(metrics["absent_classes"]))
    metrics["tta"] = params.evaluate.tta
    write_json(outputs.metrics, {k: metrics[k] for k in HEADLINE})
    if outputs.per_class_json is not None:
        write_json(outputs.per_class_json, rows)
    write_csv(outputs.per_class, rows, columns=PER_CLASS_COLUMNS)
    write_csv(outputs.predictions, _prediction_rows(samples, probs, index.classes), columns=PREDICTION_COLUMNS)
    logger.info("test accuracy %.4f (%d/%d images), top-%d %.4f, macro F1 %.4f; %s, backbone weights %s",
                metrics["accuracy"], metrics["correct"], metrics["n_images"], TOP_K, metrics[f"top{TOP_K}_accuracy"],
                metrics["macro_f1"], card.model.name, card.weights_source)
    return metrics


def _prediction_rows(samples, probs: np.ndarray, classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per image; ``top5`` is a JSON list of class names (any character may be in a name)."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K]
    return [{"path": s.path, "actual": classes[s.label], "predicted": classes[top[i, 0]],
             "confidence": float(probs[i, top[i, 0]]), "top5": json.dumps([classes[j] for j in top[i]], ensure_ascii=False)}
            for i, s in enumerate(samples)]
