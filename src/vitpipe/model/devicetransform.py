"""A transform split where its pixels become floats: the host decodes, augments and crops to uint8, the
device scales, normalises and erases whole batches.

A float32 image is 4x the bytes of its uint8 pixels, and normalising is arithmetic a GPU does in
microseconds. So a composed transform ``[PIL steps..., ToTensor, Normalize, RandomErasing?]`` runs as
:class:`HostTransform` in the DataLoader workers (the PIL steps, then the uint8 pixels) and as
:class:`DeviceTail` on the batch where the model runs. The tail repeats ToTensor's and Normalize's
arithmetic in their order (``x.float().div(255)``, then ``.sub(mean).div(std)``, elementwise), so on
the CPU its floats are bit-identical to the composed transform's. RandomErasing's random draws are made
on the host, per image, under the image's own seeded RNG and in the composed transform's order (its
draws depend only on the image's shape), and only applied on the device: the same erased pixels.

A transform of any other shape (timm's own RandomErasing, steps on tensors) is not split
(:func:`split_transform` returns None) and runs whole on the host, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.transforms import functional as F


@dataclass(frozen=True)
class Erase:
    """One image's RandomErasing: rows ``i:i+h``, columns ``j:j+w`` set to ``value`` ((C, h, w) or (C, 1, 1))."""

    i: int
    j: int
    h: int
    w: int
    value: torch.Tensor


class HostTransform:
    """PIL image -> ``(pixels, erase)``: (3, H, W) uint8 after the PIL steps, and the erasing drawn for it
    (None: not erased)."""

    def __init__(self, steps: Sequence[Callable[[Any], Any]], erasing: T.RandomErasing | None):
        self.steps, self.erasing = list(steps), erasing

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, Erase | None]:
        for step in self.steps:
            image = step(image)
        pixels = F.pil_to_tensor(image)  # (3, H, W) uint8: ToTensor's values before its division
        return pixels, None if self.erasing is None else _draw_erase(self.erasing, pixels.shape)

    def __repr__(self) -> str:
        steps = "".join(f"\n    {s}" for s in self.steps)
        return f"{type(self).__name__}({steps}\n    PILToTensor()\n    erasing={self.erasing})"


def _draw_erase(erasing: T.RandomErasing, shape: torch.Size) -> Erase | None:
    """RandomErasing.forward's random draws for an image of ``shape``, in its order (they read only the
    shape, so a meta tensor stands for the image)."""
    if not torch.rand(1) < erasing.p:
        return None
    value = erasing.value
    if isinstance(value, (int, float)):
        value = [float(value)]
    elif isinstance(value, str):
        value = None  # "random": normal values per pixel
    elif isinstance(value, (list, tuple)):
        value = [float(v) for v in value]
    stand_in = torch.empty(shape, device="meta")
    i, j, h, w, v = T.RandomErasing.get_params(stand_in, scale=erasing.scale, ratio=erasing.ratio, value=value)
    if v is stand_in:  # no region fitted in 10 tries: the image is returned as it was
        return None
    return Erase(i, j, h, w, v)


@dataclass(frozen=True)
class Erasures:
    """A batch's erasings: per erased image ``(b, i, j, h, w)`` and its value's shape, the values flat in one
    tensor, so the DataLoader pins them together and they move to the device in one copy."""

    boxes: tuple[tuple[int, int, int, int, int], ...]
    shapes: tuple[tuple[int, ...], ...]
    values: torch.Tensor  # (sum of the values' sizes,) float32

    @classmethod
    def of(cls, erases: Sequence[Erase | None]) -> Erasures:
        done = [(b, e) for b, e in enumerate(erases) if e is not None]
        values = torch.cat([e.value.reshape(-1) for _, e in done]) if done else torch.empty(0)
        return cls(tuple((b, e.i, e.j, e.h, e.w) for b, e in done), tuple(tuple(e.value.shape) for _, e in done),
                   values)

    def pin_memory(self) -> Erasures:
        """The DataLoader's pin thread calls this: the values in pinned memory."""
        return Erasures(self.boxes, self.shapes, self.values.pin_memory())

    def __len__(self) -> int:
        return len(self.boxes)


class DeviceTail:
    """uint8 (B, 3, H, W) on the device -> normalised float32 (B, 3, H, W), each image's erasing applied.

    Nothing in it waits for the device: the mean and std are moved once per device, the erasing values in
    one copy (from pinned memory where the loader pins).
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        # as torchvision's normalize converts them: float32, shaped to broadcast over channels
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.mean.to(device), self.std.to(device))
        return self._on[device]

    def __call__(self, pixels: torch.Tensor, erasures: Erasures | None = None) -> torch.Tensor:
        mean, std = self._stats(pixels.device)
        x = pixels.to(torch.float32).div(255)  # ToTensor
        x.sub_(mean).div_(std)  # Normalize
        if erasures:  # RandomErasing (F.erase), each image's region and values as drawn on the host
            values = erasures.values.to(x.device, non_blocking=True)
            at = 0
            for (b, i, j, h, w), shape in zip(erasures.boxes, erasures.shapes):
                size = math.prod(shape)
                x[b, :, i:i + h, j:j + w] = values[at:at + size].view(shape)
                at += size
        return x


@dataclass(frozen=True)
class SplitTransform:
    """A composed transform as its host part and its device part."""

    host: HostTransform
    tail: DeviceTail


def split_for(transform: Callable[[Any], torch.Tensor], device: torch.device) -> SplitTransform | None:
    """:func:`split_transform` where it pays: off the CPU. On the CPU the composed transform runs whole in
    the workers, as it always did: nothing is moved there, and the main process, which runs the model, would
    do the scaling instead of the workers (measured: more CPU seconds per image on 2 shared cores)."""
    return split_transform(transform) if device.type != "cpu" else None


def split_transform(transform: Callable[[Any], torch.Tensor]) -> SplitTransform | None:
    """``transform`` as host and device parts, or None when it is not ``Compose([PIL steps..., ToTensor,
    Normalize])`` with an optional torchvision ``RandomErasing`` last (timm's ``MaybeToTensor`` is a ToTensor)."""
    steps = list(getattr(transform, "transforms", ())) if isinstance(transform, T.Compose) else []
    erasing = steps.pop() if steps and type(steps[-1]) is T.RandomErasing else None
    if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or type(steps[-1]) is not T.Normalize:
        return None
    if any(isinstance(s, (T.ToTensor, T.Normalize, T.RandomErasing, T.PILToTensor)) for s in steps[:-2]):
        return None
    return SplitTransform(HostTransform(steps[:-2], erasing), DeviceTail(steps[-1].mean, steps[-1].std))


def collate_host(batch: Sequence[tuple[tuple[torch.Tensor, Erase | None], int]]
                 ) -> tuple[torch.Tensor, torch.Tensor, Erasures]:
    """DataLoader ``collate_fn`` for a dataset of :class:`HostTransform` outputs: (B, 3, H, W) uint8,
    (B,) labels and the batch's :class:`Erasures`."""
    pixels, labels = default_collate([(item[0][0], item[1]) for item in batch])  # shared memory in a worker
    return pixels, labels, Erasures.of([item[0][1] for item in batch])
