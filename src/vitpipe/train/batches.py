"""Where the image engine's batches come from: a DataLoader over image files, or decoded images.

Both yield normalised (B, 3, H, W) float images and (B,) labels already on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from vitpipe.data.torchdata import ImageDataset
from vitpipe.model.devicetransform import DeviceTail, collate_host, split_for
from vitpipe.params import TrainParams
from vitpipe.runtime import seed_worker
from vitpipe.train import distributed
from vitpipe.train.decoded import DecodedImages, DeviceAugment

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    """Training batches of one epoch and the validation batches.

    ``shuffle_seed`` orders the epoch (the same on every rank); ``augment_seed`` seeds image ``i``'s
    augmentation as (augment_seed, i) where augmentation runs per image, so DataLoader workers never
    change a number. Augmentation that runs on batches draws from torch's global RNG, seeded by the engine.
    """

    def train(self, epoch: int, *, shuffle_seed: int, augment_seed: int, batch_size: int,
              drop_last: bool) -> Iterator[Batch]: ...

    def valid(self, *, batch_size: int) -> Iterator[Batch]: ...

    def train_images_per_rank(self) -> int:
        """Training images one epoch gives this process (the progress line's total)."""


class LoaderBatches:
    """Decode and transform every image on the CPU in DataLoader workers (the tutorial's way).

    On a GPU, where a transform splits (:mod:`vitpipe.model.devicetransform`), the workers stop at uint8
    pixels and the batch is scaled, normalised and erased on the device: a quarter of the bytes.
    """

    def __init__(self, train_set: ImageDataset, val_set: ImageDataset, *, device: torch.device, num_workers: int):
        self.device, self.num_workers = device, num_workers
        self.train_set, self.train_tail = _host_part(train_set, device)
        self.val_set, self.val_tail = _host_part(val_set, device)

    def _loader(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                split: bool) -> DataLoader:
        sampler = distributed.sampler(dataset, shuffle=shuffle, seed=seed) if shuffle else None
        workers = min(self.num_workers, -(-len(dataset) // batch_size))  # a worker loads whole batches
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          num_workers=workers, worker_init_fn=seed_worker,
                          generator=torch.Generator().manual_seed(seed), pin_memory=self.device.type == "cuda",
                          drop_last=drop_last, collate_fn=collate_host if split else None)

    def _on_device(self, loader: DataLoader, tail: DeviceTail | None) -> Iterator[Batch]:
        for batch in loader:
            images = batch[0].to(self.device, non_blocking=True)
            if tail is not None:
                images = tail(images, batch[2])  # (B, 3, H, W) uint8 -> normalised float, erased
            yield images, batch[1].to(self.device, non_blocking=True)

    def train(self, epoch: int, *, shuffle_seed: int, augment_seed: int, batch_size: int,
              drop_last: bool) -> Iterator[Batch]:
        dataset = self.train_set.with_seed(augment_seed)
        loader = self._loader(dataset, batch_size=batch_size, shuffle=True, seed=shuffle_seed, drop_last=drop_last,
                              split=self.train_tail is not None)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        return self._on_device(loader, self.train_tail)

    def train_images_per_rank(self) -> int:
        return distributed.shard_size(len(self.train_set))

    def valid(self, *, batch_size: int) -> Iterator[Batch]:
        loader = self._loader(self.val_set, batch_size=batch_size, shuffle=False, seed=0, drop_last=False,
                              split=self.val_tail is not None)
        return self._on_device(loader, self.val_tail)


def _host_part(dataset: ImageDataset, device: torch.device) -> tuple[ImageDataset, DeviceTail | None]:
    """``dataset`` with the host part of its transform, and the device part (None: not split, on the CPU or
    where it does not split)."""
    split = split_for(dataset.transform, device)
    if split is None:
        return dataset, None
    return ImageDataset(dataset.root, dataset.samples, split.host, seed=dataset.seed), split.tail


class DecodedBatches:
    """Batches gathered from uint8 memory maps and augmented on the device (see vitpipe.train.decoded)."""

    def __init__(self, train: DecodedImages, val: DecodedImages, *, train_augment: DeviceAugment,
                 eval_augment: DeviceAugment, device: torch.device):
        self.train_images, self.val_images, self.device = train, val, device
        self.train_augment, self.eval_augment = train_augment, eval_augment

    def train(self, epoch: int, *, shuffle_seed: int, augment_seed: int, batch_size: int,
              drop_last: bool) -> Iterator[Batch]:
        del epoch, augment_seed  # flips and erasing run on batches, from the engine's seeded RNGs
        order = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(shuffle_seed))
        order = distributed.shard(order)
        for images, labels in self.train_images.batches(order, batch_size, drop_last=drop_last, device=self.device):
            yield self.train_augment(images), labels

    def train_images_per_rank(self) -> int:
        return distributed.shard_size(len(self.train_images))

    def valid(self, *, batch_size: int) -> Iterator[Batch]:
        order = torch.arange(len(self.val_images))
        for images, labels in self.val_images.batches(order, batch_size, drop_last=False, device=self.device):
            yield self.eval_augment(images), labels


def uses_decoded_images(params: TrainParams, device: torch.device) -> bool:
    """Whether the image engine reads decoded uint8 images (augmented on the device) rather than files
    through the DataLoader transforms.

    ``auto`` decodes once only for fine-tuning on CUDA: a frozen backbone with ``cache_views: 0``
    is the tutorial's loop, which must run exactly its transforms.
    """
    if params.image_source != "auto":
        return params.image_source == "decoded"
    return device.type == "cuda" and params.augment == "seed" and params.backbone_ever_trains
