"""The frozen-backbone feature cache: one backbone pass per image and view, reused across runs.

With the backbone frozen only the head learns, so the backbone's output for an image under a
given transform never changes. The train stage computes it once per image and *view* (view 0:
the eval transform; views 1..V-1: the training augmentation, each drawn with its own seed) and
trains the head on the stored features. Entries are keyed by everything that determines them:
the backbone's weights (hashed), the transform, the view and its seed, the precision, and the
ordered list of image contents, so any change there computes new features instead of reusing
stale ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitpipe.cachedir import ENV, cache_subdir, make_cache_dir
from vitpipe.data.index import Sample, samples_digest
from vitpipe.data.torchdata import ImageDataset
from vitpipe.errors import VitpipeError
from vitpipe.fileio import atomic_path, disk_error_text
from vitpipe.runtime import autocast, derive_seed

logger = logging.getLogger(__name__)

STORAGE_DTYPE = torch.bfloat16  # features are stored (and fed to the head) rounded to bf16


def extraction_batch_size(device: torch.device) -> int:
    """Images per backbone pass: small batches stay in a CPU's caches (measured: 32 beats 64-128
    by 10-20% for DeiT-tiny on 2 cores); a GPU wants large ones."""
    return 256 if device.type == "cuda" else 32


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


@dataclass(frozen=True)
class Extractor:
    """How features are computed: the frozen backbone, the device and the loader settings."""

    backbone: nn.Module
    backbone_digest: str
    device: torch.device
    precision: str
    batch_size: int
    num_workers: int
    channels_last: bool = False

    @classmethod
    def for_backbone(cls, backbone: nn.Module, device: torch.device, precision: str, *, num_workers: int,
                     channels_last: bool = False) -> Extractor:
        """An extractor for ``backbone`` on ``device``, its weights hashed and its batch size chosen."""
        return cls(backbone, weights_digest(backbone), device, precision,
                   batch_size=extraction_batch_size(device), num_workers=num_workers, channels_last=channels_last)

    def __call__(self, root: Path, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor],
                 *, seed: int | None, desc: str) -> torch.Tensor:
        """Features of ``samples`` under ``transform``: (N, D) in :data:`STORAGE_DTYPE`, on the CPU."""
        dataset = ImageDataset(root, samples, transform, seed=seed)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        out = []
        self.backbone.eval()
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.inference_mode(), autocast(self.device, self.precision):
            for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
                images = images.to(self.device, non_blocking=True, memory_format=memory_format)
                out.append(self.backbone(images).to(STORAGE_DTYPE).cpu())  # (B, D)
        return torch.cat(out) if out else torch.empty(0, 0, dtype=STORAGE_DTYPE)


class FeatureCache:
    """Content-addressed ``<key>.safetensors`` files, each one (N, D) feature matrix."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def features(self, extractor: Extractor, root: Path, samples: Sequence[Sample], *,
                 transform: Callable[[Any], torch.Tensor], view_seed: int | None, desc: str) -> torch.Tensor:
        """Cached features of ``samples`` (N, D); computed and stored on a miss.

        The transform is identified by its ``repr``, which torchvision and timm transforms spell
        out with every setting, so a changed transform is a new entry.
        """
        key_parts = {
            "version": 1,
            "backbone": extractor.backbone_digest,
            "precision": extractor.precision,
            "device_type": extractor.device.type,
            "transform": repr(transform),
            "view_seed": view_seed,
            "images": samples_digest(samples),
        }
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:32]
        path = self.root / f"{key}.safetensors"
        if path.is_file():
            try:
                feats = load_file(str(path))["features"]
                if feats.shape[0] == len(samples):
                    logger.info("%s: %d features from the cache", desc, len(samples))
                    return feats
            except (SafetensorError, OSError, KeyError):
                logger.warning("feature cache entry %s is unreadable; recomputing it", path)
        feats = extractor(root, samples, transform, seed=view_seed, desc=desc)
        logger.info("%s: computed %d features", desc, len(samples))
        try:
            make_cache_dir(self.root)
            with atomic_path(path) as tmp:
                save_file({"features": feats.contiguous()}, str(tmp),
                          metadata={"key": json.dumps(key_parts, sort_keys=True)})
        except (OSError, SafetensorError, VitpipeError) as exc:  # the cache is a speed-up: go on without it
            reason = str(exc).split(". ")[0] if isinstance(exc, VitpipeError) else disk_error_text(exc, path)
            logger.warning("feature cache: %s; features not cached, training goes on (free space there or set "
                           "%s to a writable folder)", reason, ENV)
        return feats


def view_seed(seed: int, view: int) -> int | None:
    """View 0 (the eval transform) is not random; view v >= 1 draws its augmentation from this seed."""
    return None if view == 0 else derive_seed(seed, view)
