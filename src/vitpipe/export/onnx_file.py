"""ONNX export: the classifier as one self-contained graph (the backbone alone, fp32 or int8, is
:func:`vitpipe.model.onnx_backbone.export_backbone`: the train stage's onnxruntime feature pass uses it).

The classifier graph computes what :class:`vitpipe.evaluate.inference.Predictor` computes, in
fp32: ``head(round_bf16(backbone(image)))``. A head trained on cached features saw them rounded
to bf16 (``card.feature_dtype``), so the graph rounds them the same way (a Cast to bfloat16 and
back). The backbone runs in fp32 even when the model was evaluated under bf16 autocast
(``card.precision``): ONNX Runtime's CPU kernels have no bf16 Conv/MatMul, and fp32 is the more
exact of the two. The batch axis is dynamic; everything else is fixed by the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from vitpipe.model.classifier import Classifier
from vitpipe.model.features import STORAGE_DTYPE
from vitpipe.model.model_file import ModelCard
from vitpipe.model.onnx_backbone import INPUT_NAME, OPSET, export_backbone, to_onnx

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "ExportedLogits", "export_backbone", "export_classifier",
           "max_abs_difference", "onnx_metadata"]

logger = logging.getLogger(__name__)

OUTPUT_NAME = "logits"


class ExportedLogits(nn.Module):
    """``head(backbone(image))``, with the features rounded to bf16 when the head was trained on such."""

    def __init__(self, model: Classifier, *, round_features: bool):
        super().__init__()
        self.backbone, self.head, self.round_features = model.backbone, model.head, round_features

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)  # (B, 3, H, W) -> (B, D)
        if self.round_features:
            features = features.to(STORAGE_DTYPE).float()
        return self.head(features)  # (B, n_classes)


def onnx_metadata(card: ModelCard, *, source_sha256: str) -> dict[str, str]:
    """``metadata_props``: the vitpipe card (what predict reads), and the same facts spelled out for anyone."""
    spec = card.eval_transform
    preprocessing = {
        "input": "RGB image -> resize (shorter side) -> center crop -> float32 in [0, 1] -> (x - mean) / std, NCHW",
        "resize": spec.resize, "crop": spec.crop, "interpolation": spec.interpolation,
        "mean": list(spec.mean), "std": list(spec.std),
    }
    return {
        **card.to_metadata(),
        "class_names": json.dumps(list(card.classes), ensure_ascii=False),
        "preprocessing": json.dumps(preprocessing),
        "architecture": card.model.name,
        "graph_precision": "float32",
        "feature_rounding": card.feature_dtype or "none",
        "source_sha256": source_sha256,
    }


def export_classifier(model: Classifier, card: ModelCard, path: Path, *, source_sha256: str) -> None:
    """Writes ``model`` as a self-contained ONNX file (weights inside) with :func:`onnx_metadata`."""
    module = ExportedLogits(model.eval(), round_features=bool(card.feature_dtype)).eval()
    crop = card.eval_transform.crop
    to_onnx(module, crop, path, output_name=OUTPUT_NAME, metadata=onnx_metadata(card, source_sha256=source_sha256),
            what=card.model.name, fix="use --format timm")


def max_abs_difference(path: Path, module: nn.Module, images: torch.Tensor) -> float:
    """max |onnxruntime(path)(images) - module(images)|, both in fp32 on the CPU."""
    from vitpipe.export.onnx_predictor import open_session

    session = open_session(path)
    got = session.run(None, {INPUT_NAME: images.float().numpy()})[0]
    with torch.no_grad():
        expected = module(images.float())
    return float((torch.from_numpy(got) - expected).abs().max())
