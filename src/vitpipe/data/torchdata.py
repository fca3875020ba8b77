"""The torch Dataset over a checked split: images decoded as every stage decodes them, then transformed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vitpipe.data.images import load_rgb
from vitpipe.data.index import Sample
from vitpipe.runtime import derive_seed, forked_rng


class ImageDataset(Dataset):
    """Images of one split, decoded with :func:`vitpipe.data.images.load_rgb` and transformed.

    With ``seed``, image ``i`` is transformed under its own RNG seed derived from (seed, i), so a
    random augmentation gives the same result whatever the worker count or batch order.
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
        image = load_rgb(self.root / sample.path)
        if self.seed is None:
            return self.transform(image), sample.label
        with forked_rng(derive_seed(self.seed, i)):
            return self.transform(image), sample.label
