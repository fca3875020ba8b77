"""Logits for images from a saved model: one code path for evaluate and predict."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vitpipe.model.classifier import Classifier
from vitpipe.model.features import STORAGE_DTYPE
from vitpipe.model.model_file import ModelCard, load_model
from vitpipe.runtime import autocast, configure, resolve_device

logger = logging.getLogger(__name__)


def load_predictor(model_path: Path, *, device: str, tta: bool) -> Predictor:
    """The saved model on ``device`` (``auto`` | ``cpu`` | ``cuda[:N]``), set up as evaluate and predict use it."""
    resolved = resolve_device(device)
    model, card = load_model(model_path, device=resolved)
    configure(resolved, card.precision)  # scored as it was validated: no TF32 for an fp32 model
    logger.info("model %s: %s, %d classes, on %s", model_path, card.model.name, len(card.classes), resolved)
    return Predictor(model, card, resolved, tta=tta)


class Predictor:
    """Applies a saved model exactly as it was validated during training.

    A head trained on cached features saw them rounded to bf16, so the features are rounded the
    same way here. With ``tta`` the softmax of the image and of its horizontal flip are averaged.
    """

    def __init__(self, model: Classifier, card: ModelCard, device: torch.device, *, tta: bool = False):
        self.model, self.card, self.device, self.tta = model.eval(), card, device, tta

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) backbone features -> (B, n_classes) logits, in fp32."""
        if self.card.feature_dtype:
            features = features.to(STORAGE_DTYPE)
        return self.model.head(features.float())

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, n_classes) class probabilities."""
        images = images.to(self.device, non_blocking=True)
        views = [images, images.flip(-1)] if self.tta else [images]
        probs = []
        for view in views:
            with autocast(self.device, self.card.precision):
                features = self.model.backbone(view)  # (B, D)
            probs.append(self.head_logits(features).softmax(-1))
        return torch.stack(probs).mean(0)
