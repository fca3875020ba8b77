"""Decoded images for fast full fine-tuning: decode once to a uint8 memory map, augment on the device.

Decoding and resizing JPEGs on the CPU caps a GPU at a few hundred images/s. Here each image is
decoded, resized and centre-cropped ONCE (exactly the deterministic part of the eval transform)
into an (N, S, S, 3) uint8 file that is memory-mapped, not held in RAM, and keyed by content like
the feature cache. Each batch is gathered into pinned memory, copied without blocking, and the
recipe's random part (flips, the no-op ColorJitter(), RandomErasing) runs on the device, batched.

Only ``train.augment: seed`` has this path: timm's training transforms start with a random resized
crop of the full image, which a centre-cropped store cannot provide.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from timm.data.random_erasing import RandomErasing
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from vitpipe.cachedir import make_cache_dir
from vitpipe.data.index import Sample, samples_digest
from vitpipe.data.torchdata import load_indexed
from vitpipe.fileio import atomic_path, write_error, write_json
from vitpipe.model.transforms import INTERPOLATION, EvalSpec
from vitpipe.progress import batch_images, track

logger = logging.getLogger(__name__)
Item = TypeVar("Item")
Out = TypeVar("Out")


class _Crops(Dataset):
    def __init__(self, root: Path, samples: Sequence[Sample], spec: EvalSpec):
        self.root, self.samples = root, list(samples)
        self.geometry = T.Compose([T.Resize(spec.resize, interpolation=INTERPOLATION[spec.interpolation]),
                                   T.CenterCrop(spec.crop)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.geometry(load_indexed(self.root, self.samples[i]))).copy())


def _reserve(path: Path) -> None:
    """Allocates the whole (sparse) memmap file now: a full disk is then an OSError here, not a
    SIGBUS when a page of the map is first written."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


class DecodedImages:
    """A split's images as an (N, S, S, 3) uint8 memory map, with their labels."""

    def __init__(self, array: np.ndarray, labels: torch.Tensor):
        self.array, self.labels = array, labels  # (N, S, S, 3) uint8 memory map, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        """The store at ``path`` if it is readable and has ``shape``; None (with a warning) if damaged."""
        if not path.is_file():
            return None
        try:
            array = np.lib.format.open_memmap(path, mode="r")
        except (OSError, ValueError) as exc:  # truncated header, not an .npy file
            logger.warning("decoded-image store %s is unreadable (%s); decoding again", path, exc)
            return None
        if array.shape != shape or array.dtype != np.uint8:
            logger.warning("decoded-image store %s holds %s %s, expected %s uint8; decoding again",
                           path, array.shape, array.dtype, shape)
            return None
        return array

    @classmethod
    def build_or_open(cls, cache_root: Path, root: Path, samples: Sequence[Sample], spec: EvalSpec, *,
                      num_workers: int) -> DecodedImages:
        """Opens the cached store for these images and spec, or decodes them into a new one.

        A damaged store (unreadable, or of another shape) is decoded again, as a damaged feature-cache
        entry is recomputed.
        """
        key = samples_digest(samples, seed=json.dumps(spec.to_dict(), sort_keys=True))
        path = Path(cache_root) / f"{key[:32]}.npy"
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        shape = (len(samples), spec.crop, spec.crop, 3)
        array = cls._open(path, shape)
        if array is None:
            try:
                make_cache_dir(path.parent)
            except OSError as exc:
                raise write_error(path.parent, exc) from None
            with atomic_path(path) as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                _reserve(tmp)
                loader = DataLoader(_Crops(root, samples, spec), batch_size=64, num_workers=num_workers)
                at = 0
                for batch in track(loader, desc="decoding", total=len(samples), count=batch_images):
                    out[at:at + len(batch)] = batch.numpy()
                    at += len(batch)
                out.flush()
                del out
            write_json(path.with_suffix(".json"), {"images": len(samples), "spec": spec.to_dict()})
            logger.info("decoded %d images once into %s", len(samples), path)
            array = np.lib.format.open_memmap(path, mode="r")
        return cls(array, labels)

    def batches(self, order: torch.Tensor, batch_size: int, *, drop_last: bool,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(B, S, S, 3) uint8 images and (B,) labels in ``order``, on ``device``.

        A thread gathers the next batches (each in file order, straight into pinned memory on CUDA) and
        starts their copies to the device without blocking, :data:`PREFETCH` batches ahead of the step
        that uses them. It draws no random number, so what the steps draw stays in order.
        """
        starts = [s for s in range(0, len(order), batch_size) if not drop_last or len(order) - s >= batch_size]
        on_gpu = None
        if device.type == "cuda":  # the thread's own current device: pinning must not open a context on GPU 0
            index = device.index if device.index is not None else torch.cuda.current_device()
            on_gpu = functools.partial(torch.cuda.set_device, index)
        return prefetched((lambda start: self._batch(order[start:start + batch_size], device)), starts,
                          initializer=on_gpu)

    def _batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.sort(idx).values  # memmap reads in file order
        pin = device.type == "cuda"
        images = torch.empty((len(rows), *self.array.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        np.take(self.array, rows.numpy(), axis=0, out=images.numpy(), mode="clip")  # (B, S, S, 3); rows are valid
        labels = self.labels[rows].pin_memory() if pin else self.labels[rows]
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


PREFETCH = 2  # batches gathered ahead of the step


def prefetched(load: Callable[[Item], Out], items: Sequence[Item], *, ahead: int = PREFETCH,
               initializer: Callable[[], object] | None = None) -> Iterator[Out]:
    """``load(item)`` for each item, in order, computed by one thread (set up by ``initializer``) ``ahead``
    items ahead of the caller.

    Closing the iterator early waits for the loads already started, then stops.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitpipe-prefetch", initializer=initializer) as pool:
        pending = deque(pool.submit(load, item) for item in items[:ahead])
        following = iter(items[ahead:])
        while pending:
            result = pending.popleft().result()
            nxt = next(following, _END)
            if nxt is not _END:
                pending.append(pool.submit(load, nxt))
            yield result


_END = object()


class DeviceAugment(nn.Module):
    """uint8 (B, S, S, 3) -> normalised float (B, 3, S, S), with the recipe's random part when training.

    Training: horizontal and vertical flips (p=0.5 each, per image), ColorJitter() with p=0.25
    (its default arguments change nothing, so it is omitted), then RandomErasing(p=0.2) with
    random pixel values (timm's batched implementation, the tutorial's ``value='random'``).
    """

    def __init__(self, spec: EvalSpec, *, train: bool, device: torch.device):
        super().__init__()
        self.train_mode = train
        self.register_buffer("mean", torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255)
        self.erase = RandomErasing(probability=0.2, mode="pixel", device=str(device)) if train else None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, S, S), 0..255
        if self.train_mode:
            b = x.shape[0]
            hflip = torch.rand(b, device=x.device) < 0.5
            vflip = torch.rand(b, device=x.device) < 0.5
            x = torch.where(hflip.view(b, 1, 1, 1), x.flip(-1), x)
            x = torch.where(vflip.view(b, 1, 1, 1), x.flip(-2), x)
        x = (x - self.mean) / self.std
        return self.erase(x) if self.erase is not None else x
