"""Logits for images from a saved model: one code path for evaluate and predict."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from vitpipe.errors import VitpipeError
from vitpipe.model.classifier import Classifier
from vitpipe.model.features import STORAGE_DTYPE, weights_digest
from vitpipe.model.model_file import ModelCard, load_model
from vitpipe.model.onnx_backbone import OnnxBackbone
from vitpipe.runtime import EXACT, autocast, compute_dtype, configure, resolve_device

logger = logging.getLogger(__name__)


def load_predictor(model_path: Path, *, device: str, tta: bool) -> Predictor:
    """The saved model on ``device`` (``auto`` | ``cpu`` | ``cuda[:N]``), set up as evaluate and predict use it.

    A model whose head was trained on onnxruntime features runs on the CPU (``auto`` picks it).
    """
    resolved = resolve_device(device)
    model, card = load_model(model_path)
    if card.feature_runtime == "onnxruntime" and resolved.type != "cpu":
        if device.strip() != "auto":
            raise VitpipeError(f"{model_path}: its head was trained on onnxruntime features, computed on the CPU; "
                               f"use train.device cpu or auto.")
        resolved = torch.device("cpu")
    model = model.to(resolved)
    configure(resolved, card.precision)  # scored as it was validated: no TF32 for an fp32 model
    logger.info("model %s: %s, %d classes, on %s", model_path, card.model.name, len(card.classes), resolved)
    return Predictor(model, card, resolved, tta=tta)


class Predictor:
    """Applies a saved model exactly as it was validated during training.

    A head trained on cached features saw them rounded to bf16, so the features are rounded the
    same way here, and computed on onnxruntime when they were (``card.feature_runtime``). With ``tta`` the softmax of the image and of its horizontal flip are averaged.
    """

    def __init__(self, model: Classifier, card: ModelCard, device: torch.device, *, tta: bool = False):
        self.model, self.card, self.device, self.tta = model.eval(), card, device, tta
        self._onnx: OnnxBackbone | None = None
        # precision exact: the model ran in float64 when it was validated (the saved weights are rounded to
        # fp32); a float64 copy scores it the same way, softmax included, so every x86-64 CPU gives the same bytes
        self.dtype = compute_dtype(card.precision)
        self._exact = copy.deepcopy(self.model).to(torch.float64) if card.precision == EXACT else None

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D), computed as the head's training features were: the card's runtime and precision."""
        if self.card.feature_runtime == "onnxruntime":
            if self._onnx is None:
                backbone = self.model.backbone
                self._onnx = OnnxBackbone(backbone, digest=weights_digest(backbone), precision=self.card.precision)
            return self._onnx(images).to(self.device)
        if self._exact is not None:
            return self._exact.backbone(images.to(torch.float64))  # (B, D)
        with autocast(self.device, self.card.precision):
            return self.model.backbone(images)  # (B, D)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) backbone features -> (B, n_classes) logits, in fp32 (float64 for ``precision: exact``)."""
        if self.card.feature_dtype:
            features = features.to(STORAGE_DTYPE)
        head = self._exact.head if self._exact is not None else self.model.head
        return head(features.to(self.dtype))

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, n_classes) class probabilities."""
        images = images.to(self.device, non_blocking=True)
        views = [images, images.flip(-1)] if self.tta else [images]
        probs = []
        for view in views:
            probs.append(self.head_logits(self.backbone_features(view)).softmax(-1))
        return torch.stack(probs).mean(0)
