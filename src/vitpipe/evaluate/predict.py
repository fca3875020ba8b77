"""``vitpipe predict``: class probabilities for image files, computed exactly as the evaluate stage does.

The model file carries the eval transform it was validated with (``card.eval_transform``), and
:class:`vitpipe.evaluate.inference.Predictor` is the code path evaluate uses, so a test image gets the same
probabilities here as in ``metrics/predictions.csv``. An unreadable or missing file is reported
and skipped; the others are still predicted. ``--model`` may also be the ``.onnx`` file of
``vitpipe export`` (onnxruntime, fp32; same output format).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitpipe.data.images import BadImageError, is_image_file, load_rgb
from vitpipe.errors import VitpipeError
from vitpipe.evaluate import inference
from vitpipe.evaluate.inference import Predictor
from vitpipe.finite import first_non_finite_row
from vitpipe.model.transforms import build_eval_transform

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePrediction:
    """The top classes of one image, most probable first: ``((class, probability), ...)``."""

    path: str
    top: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"path", "predictions": [{"class", "probability"}]}``."""
        return {"path": self.path, "predictions": [{"class": c, "probability": p} for c, p in self.top]}

    def format(self) -> str:
        """``path: CLASS 0.873, OTHER 0.051``."""
        return f"{self.path}: " + ", ".join(f"{c} {p:.3f}" for c, p in self.top)


@dataclass(frozen=True)
class ImageError:
    """A path that could not be predicted, and why in a few words."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON form: ``{"path", "error"}``."""
        return {"path": self.path, "error": self.reason}

    def format(self) -> str:
        """``path: error: reason``."""
        return f"{self.path}: error: {self.reason}"


Result = ImagePrediction | ImageError


def collect_images(paths: Sequence[Path | str]) -> list[Path | ImageError]:
    """Expands directories (recursively, image suffixes only, sorted); keeps files as given.

    Returns:
        In argument order, the files to predict and an :class:`ImageError` for each path that
        does not exist or is a directory without images.
    """
    entries: list[Path | ImageError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            entries.extend(found or [ImageError(str(path), "directory holds no image files (.jpg, .png, ...)")])
        elif path.is_file():
            entries.append(path)
        elif path.exists():  # never opened: a FIFO would block, /dev/zero never ends
            entries.append(ImageError(str(path), "not a regular file (a FIFO, socket or device); give an image file"))
        else:
            entries.append(ImageError(str(path), "no such file or directory"))
    return entries


def predict_files(predictor: Predictor, files: Sequence[Path | ImageError], *, top_k: int,
                  batch_size: int, model: Path | str = "the model") -> Iterator[Result]:
    """Yields one result per entry, in order; an unreadable file yields an :class:`ImageError`.

    Images are decoded one by one and scored ``batch_size`` at a time.

    Raises:
        VitpipeError: ``model`` (the predictor's file) gives NaN or inf for an image.
    """
    transform = build_eval_transform(predictor.card.eval_transform)
    pending: list[tuple[str, torch.Tensor | str]] = []
    n_tensors = 0
    for entry in files:
        if isinstance(entry, ImageError):
            pending.append((entry.path, entry.reason))
            continue
        item = _load(entry, transform)
        pending.append((str(entry), item))
        n_tensors += isinstance(item, torch.Tensor)
        if n_tensors == batch_size:
            yield from _flush(predictor, pending, top_k, model)
            pending, n_tensors = [], 0
    yield from _flush(predictor, pending, top_k, model)


def _load(path: Path, transform: Callable[[Any], torch.Tensor]) -> torch.Tensor | str:
    """The transformed image (3, H, W), or the reason it cannot be read."""
    try:
        return transform(load_rgb(path))
    except BadImageError as exc:
        return str(exc)
    except OSError as exc:  # permission denied, vanished since it was listed, ...
        return exc.strerror or type(exc).__name__


def _flush(predictor: Predictor, pending: list[tuple[str, torch.Tensor | str]], top_k: int,
           model: Path | str) -> Iterator[Result]:
    tensors = [item for _, item in pending if isinstance(item, torch.Tensor)]
    if tensors:
        probs = predictor.probabilities(torch.stack(tensors)).float().cpu()  # (B, n_classes)
        bad = first_non_finite_row(probs)
        if bad is not None:
            path = [p for p, item in pending if isinstance(item, torch.Tensor)][bad]
            raise VitpipeError(f"{model}: gives non-finite logits (NaN or inf) for {path}; its "
                               f"probabilities would be meaningless. Train or export the model again.")
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)  # (B, k), sorted
    classes = predictor.card.classes
    row = 0
    for path, item in pending:
        if isinstance(item, str):
            yield ImageError(path, item)
            continue
        top = tuple((classes[int(j)], float(p)) for p, j in zip(values[row].tolist(), indices[row].tolist()))
        yield ImagePrediction(path, top)
        row += 1


def load_predictor(model_path: Path, *, device: str = "auto", tta: bool = False) -> Predictor:
    """:func:`vitpipe.evaluate.inference.load_predictor`, with a bad device named as the ``--device`` option.

    A ``.onnx`` file from ``vitpipe export`` runs on onnxruntime instead, with the same interface.
    """
    if Path(model_path).suffix == ".onnx":
        from vitpipe.export.onnx_predictor import load_onnx_predictor

        return load_onnx_predictor(model_path, device=device, tta=tta)  # type: ignore[return-value]
    try:
        return inference.load_predictor(model_path, device=device, tta=tta)
    except VitpipeError as exc:
        raise VitpipeError(str(exc).replace("train.device", "--device")) from None


def predict_paths(paths: Sequence[Path | str], model_path: Path, *, top_k: int = 5, batch_size: int = 32,
                  device: str = "auto", tta: bool = False) -> Iterator[Result]:
    """Every image under ``paths``, predicted with the model at ``model_path``; see :func:`predict_files`.

    The arguments are checked and the model is loaded before this returns, so a bad model file or
    option is a :class:`VitpipeError` here, not half-way through the output.
    """
    if top_k < 1 or batch_size < 1:
        raise VitpipeError(f"--top-k and --batch-size must be at least 1 (got {top_k} and {batch_size}).")
    entries = collect_images(paths)
    predictor = load_predictor(model_path, device=device, tta=tta)
    logger.info("predicting %d image file(s)", sum(isinstance(e, Path) for e in entries))
    return predict_files(predictor, entries, top_k=top_k, batch_size=batch_size, model=model_path)
