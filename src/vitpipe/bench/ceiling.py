"""``vitpipe bench --suite gpu``'s fine-tune row: the image engine's images/s against the model's compute ceiling.

Both in the same process, on the same device, with the same model, batch size, loss, optimizer, precision,
memory format and compile setting. **vitpipe**: the image engine's training epochs on decoded images
(:mod:`vitpipe.train.decoded`: gathered, copied and augmented on the device), the last of ``epochs``
timed (the first pays for cuDNN's autotuning and, with ``train.compile``, the compile), the decode-once
store built before, untimed. **ceiling**: the same steps on one batch that never leaves the device, no
data path at all. Their ratio says what the data path and the engine's bookkeeping cost.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from vitpipe.cachedir import cache_subdir
from vitpipe.data.index import DatasetIndex
from vitpipe.model.classifier import build_model, set_backbone_trainable
from vitpipe.model.transforms import eval_spec
from vitpipe.params import Params
from vitpipe.runtime import EXACT, autocast, configure, resolve_device, seed_everything
from vitpipe.train.batches import DecodedBatches
from vitpipe.train.decoded import DecodedImages, DeviceAugment
from vitpipe.train.engines import ImageEngine
from vitpipe.train.recipe import build_loss, build_optimizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneRate:
    """images/s of the engine and of the ceiling, same process and settings."""

    model: str
    batch_size: int
    compiled: bool
    engine_rate: float
    ceiling_rate: float

    @property
    def ratio(self) -> float:
        return self.engine_rate / self.ceiling_rate


def fine_tune_params(params: Params) -> Params:
    """``params`` as a full fine-tune on decoded images: freeze none, AdamW (the issue's recipe); bf16 where
    the params say ``exact`` (the fine-tune refuses it: float64 would not give the same bytes there)."""
    precision = "bf16" if params.train.precision == EXACT else params.train.precision
    train = dataclasses.replace(params.train, freeze="none", unfreeze_epoch=None, optimizer="adamw",
                                cache_views=1, image_source="decoded", feature_runtime="torch", precision=precision)
    return dataclasses.replace(params, train=train)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_fine_tune(params: Params, index: DatasetIndex, *, epochs: int = 2, ceiling_steps: int = 30) -> FineTuneRate:
    """The engine's last of ``epochs`` and ``ceiling_steps`` steps on a resident batch, in images/s."""
    params = fine_tune_params(params)
    t = params.train
    device = resolve_device(t.device)
    configure(device, t.precision)
    seed_everything(t.seed)
    model, info = build_model(params.model, len(index.classes), seed=t.seed)
    spec = eval_spec("seed", info)
    stores = [DecodedImages.build_or_open(cache_subdir("decoded"), index.root, index.samples(split), spec,
                                          num_workers=t.loader_workers) for split in ("train", "valid")]
    batches = DecodedBatches(*stores, train_augment=DeviceAugment(spec, train=True, device=device),
                             eval_augment=DeviceAugment(spec, train=False, device=device), device=device)
    loss_fn = build_loss(t, mixup=False).to(device)
    engine = ImageEngine(model, batches=batches, params=t, device=device, loss_fn=loss_fn, val_loss_fn=loss_fn)
    set_backbone_trainable(model, True)
    optimizer = build_optimizer(model, t, fused=device.type == "cuda")
    seconds = 0.0
    for epoch in range(epochs):
        _sync(device)
        start = time.perf_counter()
        engine.train_epoch(epoch, optimizer, None)  # reads its sums once, at the end: the device has finished
        seconds = time.perf_counter() - start
    engine_rate = len(stores[0]) / seconds

    images, labels = next(batches.train(0, shuffle_seed=0, augment_seed=0, batch_size=t.batch_size, drop_last=False))
    images = engine.layout(images)
    forward = engine.forward_for(images)

    def step() -> None:
        with autocast(device, t.precision):
            loss = loss_fn(forward(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm: autotuning, allocator, a compiled graph already built by the epochs
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(ceiling_steps):
        step()
    _sync(device)
    ceiling_rate = ceiling_steps * images.shape[0] / (time.perf_counter() - start)
    logger.info("bench fine-tune: engine %.0f images/s, ceiling %.0f images/s (batch %d)", engine_rate, ceiling_rate,
                images.shape[0])
    return FineTuneRate(params.model.name, images.shape[0], t.compile, engine_rate, ceiling_rate)
