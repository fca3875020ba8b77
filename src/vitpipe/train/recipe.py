"""The training recipe's parts, built by timm: loss, optimizer, schedule, mixup and EMA."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import (
    create_optimizer_v2,
    param_groups_layer_decay,
    param_groups_weight_decay,
)
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn

from vitpipe.errors import VitpipeError
from vitpipe.model.classifier import Classifier
from vitpipe.params import TrainParams


def class_weights(params: TrainParams, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """``train.class_weights: balanced``: scikit-learn's n_images / (n_classes x images of the class),
    from the train labels; None for ``none``."""
    if params.class_weights == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight  # 1 s to import: only when asked for

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels.numpy())
    return torch.tensor(weights, dtype=torch.float32)


def build_loss(params: TrainParams, *, mixup: bool, weight: torch.Tensor | None = None) -> nn.Module:
    """Soft-target CE under mixup/cutmix (which smooths the targets itself), else label smoothing CE;
    with ``weight`` (per class; TrainParams refuses it with mixup/cutmix), torch's weighted CE with the
    same smoothing."""
    if mixup:
        return SoftTargetCrossEntropy()
    if weight is not None:
        # Mean over the batch weighted by each target's class weight; the smoothing term is weighted too.
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=params.label_smoothing)
    if params.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=params.label_smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(params: TrainParams, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix when ``train.mixup`` or ``train.cutmix`` is above 0."""
    if params.mixup <= 0 and params.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=params.mixup, cutmix_alpha=params.cutmix,
                 label_smoothing=params.label_smoothing, num_classes=num_classes)


def _param_groups(module: nn.Module, params: TrainParams) -> list[dict[str, Any]]:
    """Weight decay off for biases and norms; the backbone's lr scaled by ``backbone_lr_scale``
    and, with ``layer_decay``, decayed layer by layer (timm reads ``lr_scale`` in its schedulers)."""
    if not isinstance(module, Classifier):  # the head alone (feature-cache training)
        return param_groups_weight_decay(module, params.weight_decay)
    backbone = module.backbone
    skip = set(getattr(backbone, "no_weight_decay", lambda: set())())
    if params.layer_decay is not None and not hasattr(backbone, "group_matcher"):
        raise VitpipeError(f"train.layer_decay: {type(backbone).__name__} has no layer groups (timm's "
                           f"group_matcher) to decay; remove train.layer_decay or pick another model.name.")
    if params.layer_decay is not None:
        groups = param_groups_layer_decay(backbone, params.weight_decay, no_weight_decay_list=skip,
                                          layer_decay=params.layer_decay)
    else:
        groups = param_groups_weight_decay(backbone, params.weight_decay, no_weight_decay_list=skip)
    for group in groups:
        group["lr_scale"] = group.get("lr_scale", 1.0) * params.backbone_lr_scale
    head = [{**g, "lr_scale": 1.0} for g in param_groups_weight_decay(module.head, params.weight_decay)]
    return [g for g in groups + head if g["params"]]


def build_optimizer(module: nn.Module, params: TrainParams, *, fused: bool = False) -> torch.optim.Optimizer:
    """``adam`` (the recipe: Adam, lr 1e-3, no decay) or ``adamw``, over all of ``module``'s
    parameters; frozen ones get no gradient and so are not updated."""
    groups = _param_groups(module, params)
    extra = {"fused": True} if fused else {}
    # Groups start at params.lr; the scheduler's first step applies each group's lr_scale.
    return create_optimizer_v2(groups, opt=params.optimizer, lr=params.lr,
                               weight_decay=params.weight_decay, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, params: TrainParams) -> Scheduler:
    """Per-epoch schedule: ``step`` (the recipe: x gamma every step_size epochs) or ``cosine``,
    both with optional linear warmup. Call ``scheduler.step(epoch + 1)`` after each epoch."""
    if params.scheduler == "step":
        scheduler, _ = create_scheduler_v2(optimizer, sched="step", num_epochs=params.epochs,
                                           decay_epochs=params.step_size, decay_rate=params.gamma,
                                           warmup_epochs=params.warmup_epochs, warmup_lr=params.lr * 0.01)
    else:
        scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=params.epochs,
                                           min_lr=params.min_lr, warmup_epochs=params.warmup_epochs,
                                           warmup_lr=params.lr * 0.01)
    scheduler.step(0)
    return scheduler


def build_ema(module: nn.Module, params: TrainParams) -> ModelEmaV3 | None:
    """An exponential moving average of the trained weights when ``train.ema_decay`` > 0."""
    return ModelEmaV3(module, decay=params.ema_decay) if params.ema_decay > 0 else None


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest learning rate among the groups (the head's), for the history."""
    return max(group["lr"] for group in optimizer.param_groups)
