"""``models/model.safetensors``: the best weights with the class names, model settings and provenance beside them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from vitpipe.errors import VitpipeError
from vitpipe.fileio import write_bytes
from vitpipe.finite import check_weights
from vitpipe.model.classifier import Classifier, ModelInfo, build_model
from vitpipe.model.transforms import EvalSpec
from vitpipe.params import ModelParams


@dataclass(frozen=True)
class ModelCard:
    """What evaluate and predict need to rebuild the model and its eval transform exactly, and what made it."""

    classes: tuple[str, ...]
    model: ModelParams
    eval_transform: EvalSpec
    precision: str
    feature_dtype: str | None  # "bfloat16" when the head was trained on cached, rounded features
    weights_source: str
    # what made the model (engine, epochs, parameter counts, device, library versions, params hash):
    # here, with the weights, instead of a DVC metric that every `dvc metrics diff` would list
    provenance: dict[str, Any] = field(default_factory=dict)
    # "onnxruntime" when those features came from onnxruntime (``precision`` fp32 or int8): evaluate and
    # predict compute them the same way. Cards written before this field read as "torch".
    feature_runtime: str = "torch"

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata: str -> str."""
        return {"vitpipe": json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> ModelCard:
        """Inverse of :meth:`to_metadata`."""
        try:
            raw: dict[str, Any] = json.loads(meta["vitpipe"])
            raw["classes"] = tuple(raw["classes"])
            raw["eval_transform"] = EvalSpec.from_dict(raw["eval_transform"])
            raw["model"] = ModelParams(**raw["model"])
            return cls(**raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise VitpipeError(f"{path}: not a vitpipe model file (metadata: {exc}). "
                               f"Train one with `dvc repro train`.") from None


def save_model(path: Path, model: Classifier, card: ModelCard) -> None:
    """Writes the weights and the card atomically."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    check_weights(state, path, fix="training diverged: nothing written. Lower train.lr, or set train.precision: fp32")
    write_bytes(path, save(state, metadata=card.to_metadata()))  # Python writes: a full disk names ``path``


def load_model(path: Path, *, device: torch.device | str = "cpu") -> tuple[Classifier, ModelCard]:
    """Rebuilds the classifier saved by :func:`save_model`, in eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise VitpipeError(f"{path}: no model file. Train one with `dvc repro train` or pass --model.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            card = ModelCard.from_metadata(f.metadata() or {}, path)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise VitpipeError(f"{path}: not a readable safetensors file ({exc}).") from None
    check_weights(state, path, fix="the file is damaged. Train it again (`dvc repro --force train`)")
    params = ModelParams(**{**asdict(card.model), "pretrained": False, "weights": None})
    model = _unfilled(params, len(card.classes))
    try:
        model.load_state_dict(state, strict=True, assign=True)  # the tensors read, not copies into new ones
    except RuntimeError as exc:
        raise VitpipeError(f"{path}: weights do not match {card.model.name} ({str(exc).splitlines()[0]}).") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer the file does not hold
        model, _ = build_model(params, len(card.classes), seed=0)
        model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.to(device).eval(), card


def _unfilled(params: ModelParams, num_classes: int) -> Classifier:
    """The classifier without initialised weights (built on the meta device, so the file's weights are
    the only ones ever written: a random init of ViT-B took 9 s on 2 cores, for nothing); a model whose
    construction needs real tensors is built and initialised as usual."""
    try:
        with torch.device("meta"):
            return build_model(params, num_classes, seed=0)[0]
    except Exception:  # noqa: BLE001 - e.g. .item() on a meta tensor in a model's __init__: build it for real
        return build_model(params, num_classes, seed=0)[0]


def card_for(classes: tuple[str, ...], params: ModelParams, info: ModelInfo, *, spec: EvalSpec,
             precision: str, feature_dtype: str | None, feature_runtime: str = "torch",
             provenance: dict[str, Any] | None = None) -> ModelCard:
    """The card of a model trained with ``params``."""
    return ModelCard(classes=tuple(classes), model=params, eval_transform=spec, precision=precision,
                     feature_dtype=feature_dtype, weights_source=info.weights_source,
                     feature_runtime=feature_runtime if feature_dtype else "torch",
                     provenance=dict(provenance or {}))
