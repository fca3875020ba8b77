"""The torch Dataset over a checked split: images decoded as every stage decodes them, then transformed."""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vitpipe.data.images import BadImageError, load_rgb
from vitpipe.data.index import Sample
from vitpipe.errors import VitpipeError
from vitpipe.runtime import derive_seed, forked_rng


def load_indexed(root: Path, sample: Sample) -> Image.Image:
    """The RGB image of an indexed sample.

    Raises:
        VitpipeError: the file is gone or no longer decodes (the dataset changed since split-check).
    """
    path = Path(root) / sample.path
    try:
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no longer exists")
        return load_rgb(path)
    except (OSError, BadImageError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise VitpipeError(f"{path}: {reason}, but split-check indexed it as an image; the dataset changed "
                           f"since. Run `dvc repro` (split-check checks it again).") from None


class ImageDataset(Dataset):
    """Images of one split, decoded with :func:`vitpipe.data.images.load_rgb` and transformed.

    With ``seed``, each image is transformed under its own RNG seed derived from ``seed`` and its
    content hash (:func:`sample_seed`), so a random augmentation gives the same result whatever the
    worker count, the batch order or the other images in the list (the feature cache computes only
    an image's missing views, in lists of any length).
    """

    def __init__(self, root: Path, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor],
                 *, seed: int | None = None):
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def with_seed(self, seed: int | None) -> ImageDataset:
        """The same images and transform, each image seeded from (``seed``, its index)."""
        return ImageDataset(self.root, self.samples, self.transform, seed=seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i]
        image = load_indexed(self.root, sample)
        if self.seed is None:
            return self.transform(image), sample.label
        with forked_rng(sample_seed(self.seed, sample)):
            return self.transform(image), sample.label


def sample_seed(seed: int, sample: Sample) -> int:
    """The RNG seed of ``sample``'s augmentation: from ``seed`` and the first 64 bits of its content hash."""
    return derive_seed(seed, int(sample.sha256[:16], 16))
