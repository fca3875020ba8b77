"""Image transforms: the tutorial's exact recipe (``train.augment: seed``) or timm's (``timm``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from timm.data import create_transform
from torchvision import transforms as T

from vitpipe.model.classifier import ModelInfo

# The tutorial resized to 256 for a 224 crop: crop_pct 0.875.
RECIPE_CROP_PCT = 0.875
INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class EvalSpec:
    """Resize the shorter side, centre-crop, normalise: the eval transform, saved with the model."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, stored in the model file so that predict uses exactly evaluate's transform."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})


def eval_spec(augment: str, info: ModelInfo) -> EvalSpec:
    """The eval transform for ``train.augment``: the tutorial's Resize(256)/CenterCrop(224) or timm's."""
    size = info.input_size
    if augment == "seed":
        return EvalSpec(resize=math.floor(size / RECIPE_CROP_PCT), crop=size, interpolation="bilinear",
                        mean=info.mean, std=info.std)
    crop_pct = float(info.data_config.get("crop_pct", RECIPE_CROP_PCT))
    interpolation = info.data_config.get("interpolation", "bicubic")
    return EvalSpec(resize=math.floor(size / crop_pct), crop=size,
                    interpolation=interpolation if interpolation in INTERPOLATION else "bicubic",
                    mean=info.mean, std=info.std)


def build_eval_transform(spec: EvalSpec) -> Callable[[Any], torch.Tensor]:
    """PIL RGB image -> normalised (3, crop, crop) float tensor."""
    return T.Compose([
        T.Resize(spec.resize, interpolation=INTERPOLATION[spec.interpolation]),
        T.CenterCrop(spec.crop),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])


def build_train_transform(augment: str, spec: EvalSpec, info: ModelInfo) -> Callable[[Any], torch.Tensor]:
    """The training augmentation.

    ``seed`` is the tutorial's, exactly: flips, ColorJitter() (its defaults change nothing) applied
    with p=0.25, Resize(256), CenterCrop(224), ToTensor, Normalize, RandomErasing(p=0.2, value='random').
    ``timm`` is ``timm.data.create_transform(is_training=True)`` for the model's data config.
    """
    if augment == "timm":
        return create_transform(**info.data_config, is_training=True)
    return T.Compose([
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomApply([T.ColorJitter()], p=0.25),
        T.Resize(spec.resize, interpolation=INTERPOLATION[spec.interpolation]),
        T.CenterCrop(spec.crop),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
        T.RandomErasing(p=0.2, value="random"),
    ])
