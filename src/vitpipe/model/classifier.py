"""The classifier: a timm backbone (its own head removed) and the recipe's MLP head."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from vitpipe.errors import VitpipeError
from vitpipe.model.packaged import is_packaged, load_packaged
from vitpipe.model.weights import create_backbone, load_backbone_weights
from vitpipe.params import ModelParams
from vitpipe.runtime import default_dtype

logger = logging.getLogger(__name__)


class Classifier(nn.Module):
    """``head(backbone(x))``; ``backbone(x)`` is the pooled feature vector the feature cache stores."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, C, H, W) -> (B, D) -> (B, n_classes)

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone parameter takes gradients."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> Classifier:
        """Like :meth:`nn.Module.train`, but a frozen backbone stays in eval mode (dropout, norms)."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


@dataclass(frozen=True)
class ModelInfo:
    """What the backbone needs from the data side, and where its weights came from."""

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_config: dict[str, Any]
    weights_source: str  # random-init | timm:NAME | file:NAME | package:NAME
    weights_origin: str = ""  # packaged weights: the package, its file and license (the model card's provenance)


def build_head(in_features: int, num_classes: int, *, hidden: int, dropout: float) -> nn.Module:
    """The recipe's head ``Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, n)``; ``hidden=0``: one Linear."""
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def build_model(params: ModelParams, num_classes: int, *, seed: int,
                exact_init: bool = False) -> tuple[Classifier, ModelInfo]:
    """Creates the backbone (random, pretrained or from ``params.weights``) and a fresh head.

    Args:
        params: the ``model`` section.
        num_classes: number of classes of the head.
        seed: seeds the random initialisation, so the same seed gives the same weights.
        exact_init: draw the random initialisation in float64 and round it to fp32 once
            (``train.precision: exact``): timm's ``trunc_normal_`` calls ``erfinv_``, whose fp32
            result differs between instruction sets; its float64 one, rounded, does not.
    """
    torch.manual_seed(seed)
    if params.pretrained and params.weights:
        raise VitpipeError("model.pretrained and model.weights are both set; choose one "
                           "(model.pretrained: false to load model.weights).")
    with default_dtype(torch.float64 if exact_init else torch.get_default_dtype()):
        backbone = create_backbone(params)
        head = build_head(backbone.num_features, num_classes, hidden=params.head_hidden, dropout=params.dropout)
    backbone, head = backbone.float(), head.float()
    source, origin = f"timm:{params.name}" if params.pretrained else "random-init", ""
    if is_packaged(params.weights):
        origin, source = load_packaged(backbone, params.weights, params.name).origin, params.weights
    elif params.weights:
        load_backbone_weights(backbone, Path(params.weights))
        source = f"file:{Path(params.weights).name}"
    cfg = timm.data.resolve_model_data_config(backbone)
    size = params.img_size or int(cfg["input_size"][-1])
    info = ModelInfo(input_size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     data_config={**cfg, "input_size": (3, size, size)}, weights_source=source,
                     weights_origin=origin)
    return Classifier(backbone, head), info


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def set_backbone_trainable(model: Classifier, trainable: bool) -> None:
    """Freezes (eval mode, no grads) or unfreezes the backbone; the head always trains."""
    model.backbone.requires_grad_(trainable)
    model.train(model.training)
