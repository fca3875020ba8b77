"""The frozen-backbone feature cache: one backbone pass per image and view, reused across runs.

With the backbone frozen only the head learns, so the backbone's output for an image under a
given transform never changes. The train stage computes it once per image and *view* (view 0:
the eval transform; views 1..V-1: the training augmentation, each drawn with its own seed) and
trains the head on the stored features; evaluate reads view 0 of the test images the same way.
Each image is one entry, keyed by its content hash and everything else that determines its
feature: the backbone's weights (hashed) and architecture, the transform, the view's seed, the
precision, the runtime (torch, or onnxruntime with its versions and settings), device type and batch
size, and the library versions and vitpipe code that shape it (:func:`feature_environment`). So a grown dataset computes only its new images, and any other
change computes new features instead of reusing stale ones. Entries live in one SQLite file
(:mod:`vitpipe.model.featurestore`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import PIL.features
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from vitpipe.cachedir import cache_subdir
from vitpipe.data.index import Sample
from vitpipe.data.torchdata import ImageDataset
from vitpipe.errors import VitpipeError
from vitpipe.model.devicetransform import collate_host, split_for
from vitpipe.model.featurestore import FeatureStore
from vitpipe.model.onnx_backbone import OnnxBackbone
from vitpipe.progress import batch_images, track
from vitpipe.runtime import EXACT, autocast, code_digest, cpu_isa, derive_seed, device_name

logger = logging.getLogger(__name__)

STORAGE_DTYPE = torch.bfloat16  # features are stored (and fed to the head) rounded to bf16
# vitpipe's modules whose code shapes a feature (decode, dataset and per-image seeds, transforms,
# backbone creation and weight loading, the extraction itself, autocast and seeding): their source
# is hashed into every cache key (see feature_environment).
FEATURE_MODULES = ("vitpipe.data.images", "vitpipe.data.torchdata", "vitpipe.model.transforms",
                   "vitpipe.model.devicetransform", "vitpipe.model.weights", "vitpipe.model.features",
                   "vitpipe.runtime")


def extraction_batch_size(device: torch.device) -> int:
    """Images per backbone pass: small batches stay in a CPU's caches (measured: 32 beats 64-128
    by 10-20% for DeiT-tiny on 2 cores); a GPU wants large ones."""
    return 256 if device.type == "cuda" else 32


def loader_workers(workers: int, images: int, batch_size: int) -> int:
    """DataLoader workers for ``images`` in batches of ``batch_size``: at most one per batch (a worker
    loads whole batches, so more would start for nothing)."""
    return min(workers, -(-images // batch_size))


def device_images(root: Path, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor],
                  device: torch.device, *, batch_size: int, num_workers: int, seed: int | None = None,
                  desc: str) -> Iterator[torch.Tensor]:
    """``samples`` under ``transform``, in order, a batch at a time on ``device`` (B, 3, H, W), with progress.

    On a GPU the loader's workers decode and crop each image to uint8 and the batch is scaled and
    normalised there (:mod:`vitpipe.model.devicetransform`: a quarter of the bytes pinned and moved); on
    the CPU the workers run the whole transform. The feature pass and evaluate's image pass both read this way.
    """
    split = split_for(transform, device)
    dataset = ImageDataset(root, samples, split.host if split else transform, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=loader_workers(num_workers, len(samples), batch_size),
                        pin_memory=device.type == "cuda", collate_fn=collate_host if split else None)
    for batch in track(loader, desc=desc, total=len(dataset), count=batch_images):
        images = batch[0].to(device, non_blocking=True)
        yield split.tail(images, batch[2]) if split is not None else images  # uint8 -> normalised float


def default_cache_dir() -> Path:
    """``features/`` in vitpipe's cache folder (:func:`vitpipe.cachedir.cache_root`)."""
    return cache_subdir("features")


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the module's parameters and buffers (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return digest.hexdigest()


def _code_digest(modules: Sequence[str]) -> str:
    """SHA-256 over the syntax trees of ``modules`` (vitpipe's dotted names), as the checkpoint key reads
    its code: an edited comment or blank line recomputes nothing, a changed statement does."""
    return code_digest(*(name.removeprefix("vitpipe.").replace(".", "/") + ".py" for name in modules))


@functools.lru_cache(maxsize=None)
def feature_environment() -> dict[str, str]:
    """The library versions and the hash of vitpipe's modules that shape a feature: part of every key,
    so a new decoder, transform library, model library or vitpipe change recomputes features instead
    of serving ones a teammate with an empty cache would not get."""
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "pillow": PIL.__version__, "libjpeg": str(PIL.features.version("jpg")), "numpy": np.__version__,
            "code": _code_digest(FEATURE_MODULES)}


def host_numerics(extractor: Extractor) -> dict[str, Any]:
    """What on this host, beyond the code and libraries, decides a feature's bytes: on a GPU its model and
    CUDA/cuDNN versions; on a CPU its instruction-set class, caps and thread count
    (:func:`vitpipe.runtime.cpu_isa`), except with ``precision: exact``, whose bytes are the same on
    every CPU of an architecture: then the architecture alone, so hosts share their features."""
    device = extractor.device
    if device.type == "cuda":
        return {"gpu": device_name(device), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if extractor.exact is not None:
        return {"exact": cpu_isa()["arch"]}
    return cpu_isa()


def attention_kernels(backbone: nn.Module) -> list[str]:
    """The attention kernels the backbone's blocks use (timm's ``fused_attn``, which ``TIMM_FUSED_ATTN``
    sets: fused scaled-dot-product attention or the explicit softmax; they round differently)."""
    return sorted({f"fused_attn={m.fused_attn}" for m in backbone.modules() if hasattr(m, "fused_attn")})


RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Extractor:
    """How features are computed: the frozen backbone, its runtime and precision, the device and the loader.

    On torch every batch goes through the backbone padded to ``batch_size`` (the last image repeated),
    so an image's feature never depends on how many others were computed with it: an incremental pass
    gives the bytes a cold pass gives (some CPU kernels round differently for a smaller batch). On
    onnxruntime (``onnx``) each image runs alone (:mod:`vitpipe.model.onnx_backbone`), which gives
    the same guarantee; ``batch_size`` is then the loader's batch only.
    """

    backbone: nn.Module
    backbone_digest: str
    device: torch.device
    precision: str
    batch_size: int
    num_workers: int
    channels_last: bool = False
    onnx: OnnxBackbone | None = None
    exact: nn.Module | None = None  # precision exact: a float64 copy of the backbone that computes the features

    @classmethod
    def for_backbone(cls, backbone: nn.Module, device: torch.device, precision: str, *, num_workers: int,
                     channels_last: bool = False, runtime: str = "torch") -> Extractor:
        """An extractor for ``backbone`` on ``device`` (``runtime`` torch or onnxruntime), its weights hashed
        and its batch size chosen."""
        if runtime not in RUNTIMES:
            raise VitpipeError(f"train.feature_runtime: {runtime!r} is not a feature runtime; use torch or "
                               f"onnxruntime.")
        digest = weights_digest(backbone)
        onnx = None
        if runtime == "onnxruntime":
            if device.type != "cpu":
                raise VitpipeError(f"train.feature_runtime: onnxruntime runs the feature pass on the CPU, but the "
                                   f"device is {device}; set train.device: cpu, or train.feature_runtime: torch.")
            onnx = OnnxBackbone(backbone, digest=digest, precision=precision)
        exact = copy.deepcopy(backbone).to(torch.float64).eval() if precision == EXACT else None
        return cls(backbone, digest, device, precision, batch_size=extraction_batch_size(device),
                   num_workers=num_workers, channels_last=channels_last, onnx=onnx, exact=exact)

    @property
    def runtime(self) -> str:
        """``torch`` or ``onnxruntime``."""
        return "torch" if self.onnx is None else "onnxruntime"

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, D) in :data:`STORAGE_DTYPE` on the CPU."""
        n = images.shape[0]
        if self.onnx is not None:
            return self.onnx(images).to(STORAGE_DTYPE)  # one image at a time: no padding needed
        if n < self.batch_size:
            images = torch.cat([images, images[-1:].expand(self.batch_size - n, -1, -1, -1)])
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=memory_format)
        if self.exact is not None:  # float64, rounded once to bf16: the same bytes on any x86-64 CPU
            return self.exact(images.to(torch.float64))[:n].to(STORAGE_DTYPE).cpu()  # (n, D)
        with autocast(self.device, self.precision):
            return self.backbone(images)[:n].to(STORAGE_DTYPE).cpu()  # (n, D)

    def batches(self, root: Path, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor],
                *, seed: int | None, desc: str) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, features)`` per batch, in order: (B, D) in :data:`STORAGE_DTYPE`, on the CPU; the
        images read by :func:`device_images`."""
        self.backbone.eval()
        start = 0
        with torch.inference_mode():
            for images in device_images(root, samples, transform, self.device, batch_size=self.batch_size,
                                        num_workers=self.num_workers, seed=seed, desc=desc):
                yield start, self._forward(images)
                start += images.shape[0]

    def __call__(self, root: Path, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor],
                 *, seed: int | None, desc: str) -> torch.Tensor:
        """Features of ``samples`` under ``transform``: (N, D) in :data:`STORAGE_DTYPE`, on the CPU."""
        out = [feats for _, feats in self.batches(root, samples, transform, seed=seed, desc=desc)]
        return torch.cat(out) if out else torch.empty(0, 0, dtype=STORAGE_DTYPE)


class FeatureCache:
    """Per-image feature entries in a :class:`~vitpipe.model.featurestore.FeatureStore` under ``root``.

    ``computed`` and ``reused`` count the features this object computed and served from the store.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.store = FeatureStore(self.root)
        self.computed = 0
        self.reused = 0

    @staticmethod
    def key_parts(extractor: Extractor, transform: Callable[[Any], torch.Tensor],
                  view_seed: int | None) -> dict[str, Any]:
        """Everything besides the image that determines a feature. The transform is identified by its
        ``repr``, which torchvision and timm transforms spell out with every setting."""
        backbone = extractor.backbone
        return {"format": 3, "backbone": extractor.backbone_digest,
                "architecture": hashlib.sha256(f"{type(backbone).__qualname__}\n{backbone!r}".encode()).hexdigest(),
                "precision": extractor.precision, "device_type": extractor.device.type,
                "channels_last": extractor.channels_last, "batch_size": extractor.batch_size,
                "transform": repr(transform), "view_seed": view_seed, "environment": feature_environment(),
                "runtime": extractor.runtime, "onnx": extractor.onnx.key_parts() if extractor.onnx else None,
                "numerics": host_numerics(extractor), "attention": attention_kernels(backbone)}

    def features(self, extractor: Extractor, root: Path, samples: Sequence[Sample], *,
                 transform: Callable[[Any], torch.Tensor], view_seed: int | None, desc: str) -> torch.Tensor:
        """Features of ``samples`` (N, D): stored ones read, only the missing images computed and stored.

        Entries are keyed by :meth:`key_parts` and each image's content hash, so identical images
        share one entry and a grown dataset computes only its new images.
        """
        parts = self.key_parts(extractor, transform, view_seed)
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
        wanted = list(dict.fromkeys(s.sha256 for s in samples))
        found = self.store.get(key, wanted)
        first = {s.sha256: s for s in reversed(samples)}
        todo = [first[h] for h in wanted if h not in found]
        if todo:
            with self.store.computing(key):  # another process computing them: wait, then read what it stored
                found.update(self.store.get(key, [s.sha256 for s in todo]))
                todo = [s for s in todo if s.sha256 not in found]
                self._compute(extractor, root, todo, transform=transform, view_seed=view_seed, desc=desc,
                              key=key, parts=parts, found=found)
        self.computed += len(todo)
        self.reused += len(wanted) - len(todo)
        logger.info("%s: %d features, %d from the cache, %d computed", desc, len(samples),
                    len(wanted) - len(todo), len(todo))
        return _from_bytes([found[s.sha256] for s in samples])

    def _compute(self, extractor: Extractor, root: Path, todo: Sequence[Sample], *,
                 transform: Callable[[Any], torch.Tensor], view_seed: int | None, desc: str, key: str,
                 parts: dict[str, Any], found: dict[str, bytes]) -> None:
        """Computes the features of ``todo`` into ``found`` and the store, one transaction per batch."""
        batches = extractor.batches(root, todo, transform, seed=view_seed, desc=desc) if todo else ()
        computed = 0
        with self.store.writer(key, parts=parts) as write:
            for start, feats in batches:  # no loader (and no worker processes) when nothing is missing
                done = [(s.sha256, _to_bytes(f)) for s, f in zip(todo[start:start + len(feats)], feats)]
                write(done)  # an interrupted pass keeps what it computed
                found.update(done)
                computed += len(feats)
        if computed != len(todo):  # a loader that dropped or repeated images: never train on a shifted split
            raise VitpipeError(f"{desc}: the feature pass returned {computed} features for {len(todo)} images; "
                               f"nothing trained on them. This is a bug in vitpipe's loader: please report it.")


def _to_bytes(feature: torch.Tensor) -> bytes:
    return feature.contiguous().view(torch.int16).numpy().tobytes()  # bf16 has no numpy dtype: its 2 bytes


def _from_bytes(entries: list[bytes]) -> torch.Tensor:
    """(N, D) :data:`STORAGE_DTYPE` from N entries of D values each."""
    if not entries:
        return torch.empty(0, 0, dtype=STORAGE_DTYPE)
    flat = torch.frombuffer(bytearray(b"".join(entries)), dtype=STORAGE_DTYPE)
    return flat.view(len(entries), -1)


def view_seed(seed: int, view: int) -> int | None:
    """View 0 (the eval transform) is not random; view v >= 1 draws its augmentation from this seed."""
    return None if view == 0 else derive_seed(seed, view)
