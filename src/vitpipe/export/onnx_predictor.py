"""``vitpipe predict`` on an exported ``.onnx`` file: the same interface as ``Predictor``, on onnxruntime.

The file's metadata carries the vitpipe card (class names, eval transform), so predict applies
exactly evaluate's transform and prints exactly the same format. The graph runs in fp32 (see
:mod:`vitpipe.export.onnx_file`): probabilities match the PyTorch model in fp32, and differ from
its bf16-autocast run (``card.precision: bf16``) by that autocast's rounding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from vitpipe.errors import VitpipeError
from vitpipe.export.onnx_file import INPUT_NAME, OUTPUT_NAME
from vitpipe.model.model_file import ModelCard

logger = logging.getLogger(__name__)


def open_session(path: Path, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path``; a missing or unreadable file is one line."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise VitpipeError(f"{path}: no ONNX file. Write one with `vitpipe export --format onnx` or pass --model.")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings go to stderr and are not ours
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises InvalidProtobuf, Fail, InvalidGraph...
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise VitpipeError(f"{path}: onnxruntime cannot load it ({first}).") from None


class OnnxPredictor:
    """``card`` and ``probabilities`` like :class:`vitpipe.evaluate.inference.Predictor`, on an ONNX session."""

    def __init__(self, session: Any, card: ModelCard, *, tta: bool = False):
        self.session, self.card, self.tta = session, card, tta

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, n_classes) fp32 logits."""
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: images.float().cpu().numpy()})[0]
        return torch.from_numpy(out)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, n_classes) class probabilities (flip-averaged with ``tta``)."""
        views = [images, images.flip(-1)] if self.tta else [images]
        return torch.stack([self.logits(view).softmax(-1) for view in views]).mean(0)


def load_onnx_predictor(path: Path, *, device: str = "auto", tta: bool = False) -> OnnxPredictor:
    """The ``.onnx`` file written by ``vitpipe export``, ready for ``vitpipe predict``.

    ``device``: ``auto`` or ``cpu`` (onnxruntime's CPU provider); ``cuda`` needs onnxruntime-gpu.
    """
    import onnxruntime as ort

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise VitpipeError(f"--device {device}: this onnxruntime has no CUDA provider; "
                               f"use --device cpu, or the .safetensors model on the GPU.")
        providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    elif device not in ("auto", "cpu"):
        raise VitpipeError(f"--device {device!r}: use auto, cpu or cuda.")
    session = open_session(path, providers)
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map, Path(path))
    _check_signature(session, card, Path(path))
    logger.info("model %s: %s (ONNX, %s), %d classes, on onnxruntime %s", path, card.model.name,
                session.get_providers()[0], len(card.classes), ort.__version__)
    return OnnxPredictor(session, card, tta=tta)


def _check_signature(session: Any, card: ModelCard, path: Path) -> None:
    """Refuses a graph that does not take the card's images or give one logit per class name (a card
    copied onto another graph): predict would fail mid-run, or pair probabilities with wrong names."""
    fix = "export the model again with `vitpipe export --format onnx`"
    inputs, outputs = session.get_inputs(), {o.name: o.shape for o in session.get_outputs()}
    crop = card.eval_transform.crop
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape[1:]) != [3, crop, crop]:
        shown = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise VitpipeError(f"{path}: the graph's inputs ({shown}) are not vitpipe's one {INPUT_NAME!r} of "
                           f"[batch, 3, {crop}, {crop}] images its metadata describes; {fix}.")
    if OUTPUT_NAME not in outputs:
        raise VitpipeError(f"{path}: the graph has no output {OUTPUT_NAME!r} (it has {', '.join(outputs)}), so "
                           f"its metadata belongs to another graph; {fix}.")
    width = outputs[OUTPUT_NAME][-1] if outputs[OUTPUT_NAME] else None
    if width != len(card.classes):
        raise VitpipeError(f"{path}: the graph gives {width} logits per image but its metadata has "
                           f"{len(card.classes)} class names; {fix}.")
