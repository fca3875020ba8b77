"""``train.class_weights``: the weighted loss checked by hand, and both engines training with it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import history, tiny_params, train_outputs
from timm.loss import LabelSmoothingCrossEntropy

from vitpipe.data.index import DatasetIndex
from vitpipe.errors import VitpipeError
from vitpipe.model.model_file import load_model
from vitpipe.params import TrainParams, parse_params
from vitpipe.train.recipe import build_loss, class_weights
from vitpipe.train.training import run_training


def _nll(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target]."""
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]


def test_balanced_weights_are_images_over_classes_times_class_images():
    labels = torch.tensor([0, 0, 0, 1])  # 3 images of class 0, 1 of class 1
    weights = class_weights(TrainParams(class_weights="balanced"), labels, 2)
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert class_weights(TrainParams(), labels, 2) is None


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_weighted_loss_by_hand(smoothing):
    w = [2 / 3, 2.0]  # balanced weights of the labels above
    logits = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.5]]
    targets = [0, 1, 0]
    # Each image's loss: (1 - s) * w[y] * nll(y) + s / C * sum_c w[c] * nll(c); the batch mean divides
    # by the sum of the targets' weights (torch's weighted mean), so a batch of one class is unweighted.
    total = sum((1 - smoothing) * w[y] * _nll(z, y) + smoothing / 2 * sum(w[c] * _nll(z, c) for c in range(2))
                for z, y in zip(logits, targets))
    expected = total / sum(w[y] for y in targets)
    loss = build_loss(TrainParams(class_weights="balanced", label_smoothing=smoothing), mixup=False,
                      weight=torch.tensor(w))(torch.tensor(logits), torch.tensor(targets))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Without weights the recipe's loss is unchanged: timm's label smoothing CE, the plain mean.
    plain = build_loss(TrainParams(label_smoothing=smoothing), mixup=False)
    assert isinstance(plain, LabelSmoothingCrossEntropy if smoothing else torch.nn.CrossEntropyLoss)
    unweighted = sum((1 - smoothing) * _nll(z, y) + smoothing / 2 * sum(_nll(z, c) for c in range(2))
                     for z, y in zip(logits, targets)) / 3
    assert float(plain(torch.tensor(logits), torch.tensor(targets))) == pytest.approx(unweighted, rel=1e-6)


def test_class_weights_with_mixup_or_cutmix_is_refused_in_one_line():
    for mix in ("mixup", "cutmix"):
        with pytest.raises(VitpipeError) as info:
            parse_params({"train": {"class_weights": "balanced", mix: 0.2, "freeze": "none"}})
        assert "train.class_weights" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(VitpipeError, match="train.class_weights must be one of none | balanced"):
        parse_params({"train": {"class_weights": "inverse"}})


def _imbalanced(index: DatasetIndex) -> DatasetIndex:
    """The tiny index with train classes of 10, 3 and 2 images."""
    keep = {0: 10, 1: 3, 2: 2}
    seen: dict[int, int] = {}
    train = []
    for s in index.samples("train"):
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] <= keep[s.label]:
            train.append(s)
    return dataclasses.replace(index, splits={**index.splits, "train": tuple(train)})


def _first_train_loss(tmp_path: Path, index: DatasetIndex, **train: object) -> tuple[float, dict]:
    out = train_outputs(tmp_path)
    metrics = run_training(tiny_params(epochs=1, **train), index, out)
    rows = history(tmp_path)
    assert load_model(out.model)[1].provenance["class_weights"] == metrics["class_weights"]
    return float(rows[0]["train_loss_smoothed"]), metrics


@pytest.mark.parametrize(("engine", "train"), [("feature-cache", {}), ("images", {"freeze": "none"})])
def test_both_engines_train_with_the_weights_and_record_them(tmp_path, tiny_index, engine, train):
    index = _imbalanced(tiny_index)
    plain, plain_metrics = _first_train_loss(tmp_path / "none", index, **train)
    weighted, metrics = _first_train_loss(tmp_path / "balanced", index, class_weights="balanced", **train)
    assert (plain_metrics["engine"], metrics["engine"]) == (engine, engine)
    assert (plain_metrics["class_weights"], metrics["class_weights"]) == ("none", "balanced")
    assert weighted != pytest.approx(plain, rel=1e-4)  # same seed and data: only the loss weights differ
    assert plain_metrics["params_hash"] != metrics["params_hash"]  # a checkpoint of one never resumes the other
