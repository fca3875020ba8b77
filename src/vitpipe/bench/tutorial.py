"""The tutorial's training loop, reproduced faithfully: the baseline that ``vitpipe bench`` times.

"Train Vision Transformers in PyTorch" (January 2022) trains a frozen DeiT-tiny with an MLP head
in the classic per-epoch loop: one torchvision ``ImageFolder`` per split, DataLoaders of batch
128 (train) and 32 (valid, test) with ``shuffle=True`` and 4 workers everywhere, fp32, and every
train image through the frozen backbone in every epoch. The recipe's parts (transforms, model,
loss, optimizer, scheduler) come from vitpipe's own builders, so this loop and the train stage
train literally the same recipe; only the way the epochs run differs.

Two departures, both for honest numbers: the run is seeded (``train.seed``), and the test pass
scores every image, where the original counted only full batches of 32 (224 of its 250 images).
The loop keeps the tutorial's own defect of one class map per split; it only warns about it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets

from vitpipe.model.classifier import Classifier, build_model, set_backbone_trainable
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.params import Params
from vitpipe.progress import batch_images, track
from vitpipe.runtime import resolve_device, seed_everything
from vitpipe.train.recipe import (
    build_loss,
    build_optimizer,
    build_scheduler,
    current_lr,
)

logger = logging.getLogger(__name__)

TUTORIAL_WORKERS = 4  # the tutorial's num_workers, on every loader


@dataclass
class Recipe:
    """The tutorial's model and training parts, built by vitpipe's builders from ``params``."""

    model: Classifier
    transforms: dict[str, Any]  # split -> transform
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm StepLRScheduler: the tutorial's StepLR(3, 0.97), stepped once per epoch


@dataclass
class TrainedLoop:
    """What :func:`train_tutorial` leaves: the best-val model (in memory only, as the tutorial)."""

    model: Classifier
    params: Params
    root: Path
    device: torch.device
    classes: list[str]
    test_transform: Any
    best_accuracy: float = 0.0
    best_correct: int = 0
    best_epoch: int = -1
    sizes: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def build_recipe(params: Params, num_classes: int, device: torch.device) -> Recipe:
    """The frozen backbone + MLP head, the tutorial's transforms, label smoothing, Adam and StepLR."""
    t = params.train
    model, info = build_model(params.model, num_classes, seed=t.seed)
    set_backbone_trainable(model, False)  # the tutorial froze every parameter, then replaced the head
    model.to(device)
    spec = eval_spec("seed", info)
    eval_tf = build_eval_transform(spec)
    transforms = {"train": build_train_transform("seed", spec, info), "valid": eval_tf, "test": eval_tf}
    optimizer = build_optimizer(model.head, t)  # Adam(model.head.parameters(), lr=0.001)
    return Recipe(model=model, transforms=transforms, criterion=build_loss(t, mixup=False),
                  optimizer=optimizer, scheduler=build_scheduler(optimizer, t))


def _loader(dataset: datasets.ImageFolder, *, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def _image_folder(root: Path, split: str, classes: list[str] | None = None) -> datasets.ImageFolder:
    # One ImageFolder per split, each with its own class map: the tutorial's defect 1, kept.
    dataset = datasets.ImageFolder(str(root / split))
    if classes is not None and dataset.classes != classes:
        logger.warning("tutorial loop: %s/ has other class folders than train/; its labels point at the "
                       "wrong classes (the tutorial's defect 1), so its accuracy means nothing", split)
    return dataset


def _run_phase(model: Classifier, loader: DataLoader, recipe: Recipe, *, train: bool,
               device: torch.device, desc: str) -> tuple[float, int]:
    """One pass over ``loader``, as the tutorial's ``train_model``: (summed loss, correct)."""
    model.train(train)  # Classifier keeps a frozen backbone in eval mode; DeiT has no dropout there anyway
    running_loss, running_corrects = 0.0, 0
    for inputs, labels in track(loader, desc=desc, total=len(loader.dataset), count=batch_images):
        inputs, labels = inputs.to(device), labels.to(device)  # (B, 3, H, W), (B,)
        recipe.optimizer.zero_grad()
        with torch.set_grad_enabled(train):
            outputs = model(inputs)  # (B, n_classes); every image through the backbone, every epoch
            loss = recipe.criterion(outputs, labels)
            if train:
                loss.backward()
                recipe.optimizer.step()
        running_loss += loss.item() * inputs.size(0)
        running_corrects += int((outputs.argmax(1) == labels).sum())
    return running_loss, running_corrects


def train_tutorial(params: Params, root: Path, *, workers: int = TUTORIAL_WORKERS) -> TrainedLoop:
    """Trains the recipe on ``root/{train,valid}/<class>/`` with the tutorial's loop (fp32).

    Args:
        params: the recipe (``model`` and ``train`` sections); ``train.precision``,
            ``train.cache_views`` and ``train.num_workers`` are ignored, as the tutorial had none.
        root: the dataset root.
        workers: DataLoader workers of every loader (the tutorial's 4).
    """
    t = params.train
    device = resolve_device(t.device)
    seed_everything(t.seed)
    train_set = _image_folder(root, "train")
    image_sets = {"train": train_set, "valid": _image_folder(root, "valid", train_set.classes)}
    recipe = build_recipe(params, len(train_set.classes), device)
    loaders = {}
    for split, batch in (("train", t.batch_size), ("valid", t.val_batch_size)):
        image_sets[split].transform = recipe.transforms[split]
        loaders[split] = _loader(image_sets[split], batch_size=batch, workers=workers)
    run = TrainedLoop(model=recipe.model, params=params, root=root, device=device, classes=train_set.classes,
                      test_transform=recipe.transforms["test"],
                      sizes={split: len(dataset) for split, dataset in image_sets.items()})
    best_wts = copy.deepcopy(run.model.state_dict())
    for epoch in range(t.epochs):
        row: dict[str, float] = {"epoch": epoch, "lr": current_lr(recipe.optimizer)}
        for phase in ("train", "valid"):
            loss, correct = _run_phase(run.model, loaders[phase], recipe, train=phase == "train",
                                       device=device, desc=f"{phase} {epoch}")
            if phase == "train":
                recipe.scheduler.step(epoch + 1)
            name = "val" if phase == "valid" else phase  # the train stage's history columns
            row[f"{name}_loss_smoothed"] = loss / run.sizes[phase]  # the criterion: label-smoothed
            row[f"{name}_accuracy"] = correct / run.sizes[phase]
            if phase == "valid" and row["val_accuracy"] > run.best_accuracy:
                run.best_accuracy, run.best_correct, run.best_epoch = row["val_accuracy"], correct, epoch
                best_wts = copy.deepcopy(run.model.state_dict())
        run.history.append(row)
        logger.info("tutorial loop epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f", epoch,
                    row["train_loss_smoothed"], row["train_accuracy"], row["val_loss_smoothed"], row["val_accuracy"])
    run.model.load_state_dict(best_wts)
    return run


@torch.no_grad()
def evaluate_tutorial(run: TrainedLoop, *, workers: int = TUTORIAL_WORKERS) -> tuple[int, int]:
    """Scores the best-val model on ``root/test``: (correct, images), over EVERY test image.

    The tutorial counted a batch only ``if len(target) == 32``, dropping the last partial batch.
    """
    test_set = _image_folder(run.root, "test", run.classes)
    test_set.transform = run.test_transform
    loader = _loader(test_set, batch_size=run.params.evaluate.batch_size, workers=workers)
    run.model.eval()
    correct = total = 0
    for data, target in track(loader, desc="test", total=len(loader.dataset), count=batch_images):
        data, target = data.to(run.device), target.to(run.device)
        pred = run.model(data).argmax(1)  # (B,)
        correct += int((pred == target).sum())
        total += target.shape[0]
    logger.info("tutorial loop: test accuracy %.4f (%d/%d images)", correct / max(total, 1), correct, total)
    return correct, total
