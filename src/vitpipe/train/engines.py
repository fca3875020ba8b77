"""The two ways an epoch is run (:class:`Engine`): on cached backbone features, or on images through the model.

Each epoch's randomness (shuffling, views, dropout, augmentation) is seeded from (train.seed, epoch)
alone, each image's augmentation from (train.seed, epoch, its index), and under torchrun each rank's
dropout, mixup and device augmentation also from its rank: no worker count or kill changes a number.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from vitpipe.model.classifier import Classifier, set_backbone_trainable
from vitpipe.model.features import STORAGE_DTYPE
from vitpipe.params import TrainParams
from vitpipe.progress import batch_images, track
from vitpipe.runtime import autocast, compute_dtype, derive_seed, seed_everything
from vitpipe.train import distributed
from vitpipe.train.batches import BatchSource

logger = logging.getLogger(__name__)


@dataclass
class Totals:
    """Running sums for a loss averaged over every sample and an accuracy over every sample.

    They stay on the device (float64 and int64 tensors) and are read once, by :meth:`result`: no step
    waits for the device to report its loss. The float64 sums of float32 losses are what Python floats
    summed before, bit for bit.
    """

    loss: torch.Tensor | float = 0.0
    correct: torch.Tensor | int = 0
    count: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.loss = self.loss + loss.detach().double() * n
        self.correct = self.correct + (logits.detach().argmax(1) == labels).sum()
        self.count += n

    def values(self) -> tuple[float, int, int]:
        """(summed loss, correct, count), read from the device."""
        return float(self.loss), int(self.correct), self.count

    def result(self) -> tuple[float, float]:
        """(mean loss, accuracy); an empty split gives (nan, nan)."""
        loss, correct, count = self.values()
        if count == 0:
            return float("nan"), float("nan")
        return loss / count, correct / count

    def summed(self) -> Totals:
        """The totals of every rank under torchrun (each trained on its own share); self otherwise."""
        loss, correct, count = distributed.all_sum([float(v) for v in self.values()])
        return Totals(loss, round(correct), round(count))


class ValTotals:
    """Validation sums: the training objective (label-smoothed) and plain cross-entropy, and accuracy."""

    def __init__(self) -> None:
        self.smoothed = Totals()
        self.plain: torch.Tensor | float = 0.0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module) -> None:
        self.smoothed.add(loss_fn(logits, labels), logits, labels)
        self.plain = self.plain + nn.functional.cross_entropy(logits.to(torch.float64), labels, reduction="sum")

    def result(self) -> tuple[float, float, float]:
        """(mean smoothed loss, mean cross-entropy, accuracy)."""
        loss, accuracy = self.smoothed.result()
        count = self.smoothed.count
        return loss, float(self.plain) / count if count else float("nan"), accuracy


class Engine(Protocol):
    """How the epochs of a run are executed.

    ``module`` is what the optimizer updates and what is checkpointed (the head alone, or the whole
    classifier); ``feature_dtype`` is the dtype the head was fed when it trained on stored features
    (saved in the model card so evaluate and predict feed it the same), None when it saw the backbone live.
    """

    name: ClassVar[str]  # metrics/train.json's "engine"
    module: nn.Module
    feature_dtype: ClassVar[torch.dtype | None]

    def train_epoch(self, epoch: int, optimizer: torch.optim.Optimizer,
                    ema: nn.Module | None) -> tuple[float, float]: ...

    def evaluate(self, module: nn.Module) -> tuple[float, float, float]:
        """(label-smoothed loss, plain cross-entropy, accuracy) of ``module`` on the valid split."""
        ...


def _step(loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer, *,
          grad_clip: float, ema: nn.Module | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(module)


# Below this many multiply-adds per step (head weights x batch), the head runs on one CPU thread.
SMALL_HEAD_MACS = 2**26


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Runs the block with ``threads`` intra-op threads (None: as they are), then restores the count."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class FeatureEngine:
    """Trains the head on cached features: (V, N, D) train views, (M, D) valid view 0.

    Each epoch shuffles the images and gives each one a view drawn at random, so the head sees
    as many augmentations as there are views, in the recipe's batches of ``batch_size``.

    On the CPU a small head (the recipe's: 100k weights, batch 128) trains on one thread: its steps
    take a millisecond, and splitting them over threads that other processes hold cost up to hundreds of
    milliseconds per epoch (measured on a loaded 2-core host; the bytes were the same with 1 or 2 threads).
    """

    name = "feature-cache"
    feature_dtype = STORAGE_DTYPE

    def __init__(self, head: nn.Module, *, train_x: torch.Tensor, train_y: torch.Tensor,
                 val_x: torch.Tensor, val_y: torch.Tensor, params: TrainParams, device: torch.device,
                 loss_fn: nn.Module, val_loss_fn: nn.Module):
        dtype = compute_dtype(params.precision)  # exact: the head trains in float64, saved rounded to fp32
        self.module = head.to(device, dtype)
        self.train_x, self.train_y = train_x.to(device, dtype), train_y.to(device)  # (V, N, D), (N,)
        self.val_x, self.val_y = val_x.to(device, dtype), val_y.to(device)  # (M, D), (M,)
        self.params, self.device = params, device
        self.loss_fn, self.val_loss_fn = loss_fn, val_loss_fn
        macs = sum(p.numel() for p in head.parameters()) * params.batch_size
        self.threads = 1 if device.type == "cpu" and macs < SMALL_HEAD_MACS else None

    def train_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> tuple[float, float]:
        with _cpu_threads(self.threads):
            return self._train_epoch(epoch, optimizer, ema)

    def _train_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> tuple[float, float]:
        views, n = self.train_x.shape[0], self.train_x.shape[1]
        gen = torch.Generator().manual_seed(derive_seed(self.params.seed, epoch, 1))
        order = torch.randperm(n, generator=gen).to(self.device)
        pick = torch.randint(views, (n,), generator=gen).to(self.device)
        torch.manual_seed(derive_seed(self.params.seed, epoch, 2))  # dropout
        self.module.train()
        totals = Totals()
        for start in range(0, n, self.params.batch_size):
            idx = order[start:start + self.params.batch_size]
            x, y = self.train_x[pick[idx], idx], self.train_y[idx]  # (B, D), (B,)
            logits = self.module(x)
            loss = self.loss_fn(logits, y)
            _step(loss, self.module, optimizer, grad_clip=self.params.grad_clip, ema=ema)
            totals.add(loss, logits, y)
        return totals.result()

    @torch.inference_mode()
    def evaluate(self, module: nn.Module) -> tuple[float, float, float]:
        with _cpu_threads(self.threads):
            return self._evaluate(module)

    def _evaluate(self, module: nn.Module) -> tuple[float, float, float]:
        module.eval()
        totals = ValTotals()
        for start in range(0, self.val_x.shape[0], self.params.val_batch_size):
            x = self.val_x[start:start + self.params.val_batch_size]
            y = self.val_y[start:start + self.params.val_batch_size]
            totals.add(module(x), y, self.val_loss_fn)
        return totals.result()


class ImageEngine:
    """Trains on images: the tutorial's loop with a frozen backbone, or a (partial) fine-tune."""

    name = "images"
    feature_dtype = None

    def __init__(self, model: Classifier, *, batches: BatchSource, params: TrainParams, device: torch.device,
                 loss_fn: nn.Module, val_loss_fn: nn.Module, mixup=None):
        self.dtype = compute_dtype(params.precision)  # exact: the whole model in float64, saved rounded to fp32
        self.module = model.to(device, self.dtype)
        self.params, self.device, self.mixup, self.batches = params, device, mixup, batches
        self.loss_fn, self.val_loss_fn = loss_fn, val_loss_fn
        self.channels_last = params.channels_last and device.type == "cuda"
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.wrapped: nn.Module = self.module  # under torchrun, DDP around the module
        self.forward_module: nn.Module = self.module  # ... compiled, with train.compile
        self._wrapped_for: bool | None = None  # the backbone's trainability when forward_module was built

    def _prepare(self, epoch: int) -> None:
        """Sets the epoch's freeze state, then (re)builds the DDP/compile wrapper when that state changed:
        DDP registers exactly the parameters that take gradients when it is built."""
        trains = self.params.backbone_trains(epoch)
        if trains and self.module.backbone_frozen:
            logger.info("epoch %d: unfreezing the backbone", epoch)
        set_backbone_trainable(self.module, trains)
        if trains != self._wrapped_for:
            self.wrapped = distributed.wrap(self.module, self.device)
            # Compiled for the full batch's shape alone (dynamic=False): an epoch's short last batch runs
            # eagerly (see forward_for), so no shape ever compiles a second graph.
            self.forward_module = torch.compile(self.wrapped, dynamic=False) if self.params.compile else self.wrapped
            self._wrapped_for = trains

    def forward_for(self, images: torch.Tensor) -> nn.Module:
        """The compiled module for a full batch, the eager one for an epoch's short last batch."""
        return self.forward_module if images.shape[0] == self.params.batch_size else self.wrapped

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.dtype) if self.dtype != torch.float32 else images
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def train_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> tuple[float, float]:
        self._prepare(epoch)
        # dropout, mixup and device augmentation: torch, numpy (timm's Mixup) and random (RandomErasing)
        seed_everything(derive_seed(self.params.seed, epoch, 2, *distributed.rank_parts()))
        batches = self.batches.train(epoch, shuffle_seed=derive_seed(self.params.seed, epoch, 1),
                                     augment_seed=derive_seed(self.params.seed, epoch, 3),
                                     batch_size=self.params.batch_size, drop_last=self.mixup is not None)
        self.module.train()
        totals = Totals()
        for images, labels in track(batches, desc=f"epoch {epoch}", total=self.batches.train_images_per_rank(),
                                    count=batch_images, enabled=distributed.is_main()):
            images, targets = self.layout(images), labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            with autocast(self.device, self.params.precision):
                logits = self.forward_for(images)(images)
                loss = self.loss_fn(logits.to(self.dtype), targets)
            _step(loss, self.module, optimizer, grad_clip=self.params.grad_clip, ema=ema)
            totals.add(loss, logits, labels)
        return totals.summed().result()

    @torch.inference_mode()
    def evaluate(self, module: nn.Module) -> tuple[float, float, float]:
        module.eval()
        totals = ValTotals()  # every rank scores the whole valid split
        for images, labels in self.batches.valid(batch_size=self.params.val_batch_size):
            with autocast(self.device, self.params.precision):
                logits = module(self.layout(images)).to(self.dtype)
            totals.add(logits, labels, self.val_loss_fn)
        return totals.result()
