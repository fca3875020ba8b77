"""ONNX export: the classifier as one self-contained graph, or the backbone alone (fp32 or int8).

The classifier graph computes what :class:`vitpipe.evaluate.inference.Predictor` computes, in
fp32: ``head(round_bf16(backbone(image)))``. A head trained on cached features saw them rounded
to bf16 (``card.feature_dtype``), so the graph rounds them the same way (a Cast to bfloat16 and
back). The backbone runs in fp32 even when the model was evaluated under bf16 autocast
(``card.precision``): ONNX Runtime's CPU kernels have no bf16 Conv/MatMul, and fp32 is the more
exact of the two. The batch axis is dynamic; everything else is fixed by the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vitpipe.errors import VitpipeError
from vitpipe.fileio import atomic_path
from vitpipe.model.classifier import Classifier
from vitpipe.model.features import STORAGE_DTYPE
from vitpipe.model.model_file import ModelCard

logger = logging.getLogger(__name__)

OPSET = 18  # ai.onnx opset: ONNX Runtime >= 1.14 runs it
MAX_WEIGHT_BYTES = 2**31 - 2**26  # protobuf's 2 GiB cap on one file, less room for the graph itself
INPUT_NAME = "image"
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
    _to_onnx(module, crop, path, output_name=OUTPUT_NAME,
             metadata=onnx_metadata(card, source_sha256=source_sha256), what=card.model.name)


def export_backbone(backbone: nn.Module, path: Path, *, input_size: int, int8: bool = False) -> Path:
    """The backbone alone, ``image (B, 3, S, S) -> features (B, D)``, as ONNX.

    Args:
        backbone: a timm model without classifier (``num_classes=0``), on the CPU.
        path: the ``.onnx`` file to write (atomically).
        input_size: S, the side of the square input.
        int8: ``onnxruntime.quantization.quantize_dynamic``: int8 weights (per output channel),
            activations quantized per batch at run time. Faster on CPUs with VNNI; the features are
            not bit-equal to fp32 (DeiT-tiny, random init: cosine 0.9995 on average, 0.9992 at worst).
    """
    if not int8:
        _to_onnx(backbone.eval(), input_size, path, output_name="features", metadata={}, what="backbone")
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="vitpipe-onnx-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _to_onnx(backbone.eval(), input_size, fp32, output_name="features", metadata={}, what="backbone")
        with atomic_path(path) as out, _quiet_exporter(""):  # the quantizer logs each tensor to the root logger
            quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)
    return path


def _to_onnx(module: nn.Module, size: int, path: Path, *, output_name: str, metadata: dict[str, str],
             what: str) -> None:
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if weight_bytes > MAX_WEIGHT_BYTES:
        raise VitpipeError(f"{what}: {weight_bytes / 2**30:.1f} GiB of weights is over the 2 GiB a single-file "
                           f"ONNX model can hold; use --format timm.")
    example = torch.zeros(2, 3, size, size)  # (B, 3, H, W); values do not matter, B becomes dynamic
    with _quiet_exporter():
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[output_name],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
        except (torch.onnx.errors.OnnxExporterError, torch.onnx.errors.UnsupportedOperatorError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise VitpipeError(f"{what}: torch.onnx.export cannot export this model ({first}); "
                               f"use --format timm or another model.name.") from None
        program.model.metadata_props.update(metadata)
        with atomic_path(path) as tmp:
            program.save(str(tmp), external_data=False)  # one file: weights inside the graph


@contextlib.contextmanager
def _quiet_exporter(*names: str) -> Iterator[None]:
    """The exporter's graph passes log every step at INFO (hundreds of lines): show only their warnings."""
    loggers = [logging.getLogger(name or None) for name in names or ("onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def max_abs_difference(path: Path, module: nn.Module, images: torch.Tensor) -> float:
    """max |onnxruntime(path)(images) - module(images)|, both in fp32 on the CPU."""
    from vitpipe.export.onnx_predictor import open_session

    session = open_session(path)
    got = session.run(None, {INPUT_NAME: images.float().numpy()})[0]
    with torch.no_grad():
        expected = module(images.float())
    return float((torch.from_numpy(got) - expected).abs().max())
