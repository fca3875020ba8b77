"""A timm / Hugging Face Hub folder: ``config.json`` + ``model.safetensors`` in timm's own layout.

timm's classifier is one Linear (after the model's own dropout). vitpipe's head is that too when
``model.head_hidden: 0`` (``Dropout -> Linear``): the Linear becomes timm's classifier and the
dropout, a no-op at inference, is dropped. The MLP head (``head_hidden > 0``) has no place in
timm's layout, so this format refuses it in one line. The folder is written by timm itself
(``timm.models.save_for_hf``), with vitpipe's class names and eval preprocessing in its config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import timm
from timm.models import save_for_hf
from torch import nn

from vitpipe.errors import VitpipeError
from vitpipe.model.classifier import Classifier
from vitpipe.model.model_file import ModelCard
from vitpipe.model.transforms import EvalSpec


def check_timm_compatible(card: ModelCard, model_path: Path) -> None:
    """Refuses, in one line, a model whose head is not timm's single Linear."""
    if card.model.head_hidden:
        raise VitpipeError(
            f"{model_path}: model.head_hidden is {card.model.head_hidden} (an MLP head); the timm format holds "
            f"timm's single Linear classifier. Train with model.head_hidden: 0, or use --format onnx.")


def to_timm(model: Classifier, card: ModelCard) -> nn.Module:
    """A plain timm model with vitpipe's backbone weights and its Linear as timm's classifier, in eval mode."""
    kwargs: dict[str, Any] = {"img_size": card.model.img_size} if card.model.img_size else {}
    net = timm.create_model(card.model.name, pretrained=False, num_classes=len(card.classes), **kwargs)
    classifier = net.pretrained_cfg.get("classifier")
    linear = model.head[-1]
    if not isinstance(classifier, str) or not isinstance(linear, nn.Linear):
        raise VitpipeError(f"{card.model.name}: its classifier is {classifier!r}, not one Linear layer; "
                           f"the timm format cannot hold it. Use --format onnx.")
    state = {**model.backbone.state_dict(), f"{classifier}.weight": linear.weight, f"{classifier}.bias": linear.bias}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VitpipeError(f"{card.model.name}: vitpipe's weights do not fit timm's layout "
                           f"({str(exc).splitlines()[0]}). Use --format onnx.") from None
    return net.eval()


def crop_pct(spec: EvalSpec) -> float:
    """timm's ``crop_pct`` for vitpipe's resize/crop: timm resizes to ``floor(crop / crop_pct)``, exactly ``resize``."""
    pct = spec.crop / spec.resize
    while math.floor(spec.crop / pct) < spec.resize:  # crop / (crop / resize) may land a hair below resize
        pct = math.nextafter(pct, 0.0)
    if math.floor(spec.crop / pct) != spec.resize:
        raise VitpipeError(f"eval transform resize {spec.resize} / crop {spec.crop} has no timm crop_pct.")
    return pct


def data_config(spec: EvalSpec) -> dict[str, Any]:
    """The eval preprocessing as timm's data config: ``timm.data.create_transform`` rebuilds vitpipe's transform."""
    return {"input_size": (3, spec.crop, spec.crop), "crop_pct": crop_pct(spec), "crop_mode": "center",
            "interpolation": spec.interpolation, "mean": tuple(spec.mean), "std": tuple(spec.std)}


def write_timm_folder(model: Classifier, card: ModelCard, folder: Path) -> None:
    """Writes ``config.json`` and ``model.safetensors`` into ``folder`` (an empty directory)."""
    net = to_timm(model, card)
    # tag: these are vitpipe's weights, not the architecture's default pretrained ones (e.g. fb_in1k)
    config = {"label_names": list(card.classes), "pretrained_cfg": {"tag": "vitpipe"}}
    save_for_hf(net, str(folder), model_config=config, safe_serialization=True,
                data_config=data_config(card.eval_transform))
