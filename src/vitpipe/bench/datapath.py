"""``vitpipe bench --suite host``'s data-path rows: what decoding and handing over images costs, per core.

The feature pass's loader alone (no model) on the train images, with the recipe's transform for timm's
``test_vit`` at 224 px (Resize(256), CenterCrop(224)): read, decode, resize and crop in the DataLoader
workers, collate, hand the batch to the main process. **uint8** is what the workers do on a GPU machine
(:mod:`vitpipe.model.devicetransform`: they stop at uint8 pixels; the GPU scales and normalises), so its
images per CPU second times the cores is what such a machine's CPUs can feed its GPU; **float32** is the
whole transform in the workers, what the CPU's feature pass does (and every pass did before). With 1 and
2 workers each. Then split-check's file scan (read, SHA-256, full decode, perceptual hash) with 1 and 2
processes, and the host's own 2-process ceiling measured beside it. The rows say the host's load average.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from vitpipe.data.index import DatasetIndex
from vitpipe.data.pools import pool_context
from vitpipe.data.torchdata import ImageDataset
from vitpipe.errors import VitpipeError
from vitpipe.model.classifier import build_model
from vitpipe.model.devicetransform import collate_host, split_transform
from vitpipe.model.transforms import build_eval_transform, eval_spec
from vitpipe.params import Params

logger = logging.getLogger(__name__)


def cpu_seconds() -> float:
    """CPU seconds (user and system) of this process and of its children that have ended (DataLoader
    workers and pool processes are joined when they finish): what a pass cost in cores, whatever else
    runs on the host."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(frozen=True)
class PathRate:
    """One data-path measurement."""

    path: str  # uint8 (the workers' part on a GPU) | float32 (the whole transform)
    workers: int
    images: int
    seconds: float
    bytes_per_image: int  # what each image's tensor weighs between a worker and the model
    cpu: float = 0.0  # CPU seconds of the process and its workers

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def per_core(self) -> float:
        """Images per CPU second: per core busy, on a shared host too."""
        return self.images / self.cpu if self.cpu else float("nan")


def measure_data_path(index: DatasetIndex, params: Params, *, workers: Sequence[int] = (1, 2),
                      batch_size: int = 32) -> list[PathRate]:
    """The loader over ``index``'s train images with the eval transform of ``params``' model (see
    :func:`tiny_backbone_params`), per path and worker count: wall seconds and CPU seconds."""
    _, info = build_model(params.model, len(index.classes), seed=0)
    spec = eval_spec(params.train.augment, info)
    eval_tf = build_eval_transform(spec)
    split = split_transform(eval_tf)
    samples = index.samples("train")
    pixels = 3 * spec.crop * spec.crop
    rows = []
    for n in workers:
        for path, dataset, collate, size in (
                ("uint8 (the workers' part on a GPU)", ImageDataset(index.root, samples, split.host), collate_host,
                 pixels),
                ("float32 (the whole transform: on the CPU, and before)", ImageDataset(index.root, samples, eval_tf),
                 None, 4 * pixels)):
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=n, collate_fn=collate)
            start, cpu = time.perf_counter(), cpu_seconds()
            for _ in loader:
                pass
            rows.append(PathRate(path, n, len(samples), time.perf_counter() - start, size, cpu_seconds() - cpu))
            logger.info("bench data path: %s, %d workers: %.0f images/s, %.0f per CPU second", path, n,
                        rows[-1].rate, rows[-1].per_core)
    return rows


@dataclass(frozen=True)
class ScanRate:
    """split-check's file scan with ``processes``."""

    processes: int
    files: int
    seconds: float
    cpu: float = 0.0  # CPU seconds of the process and its pool's

    @property
    def rate(self) -> float:
        return self.files / self.seconds

    @property
    def per_core(self) -> float:
        """Files per CPU second."""
        return self.files / self.cpu if self.cpu else float("nan")


# One scan as the split-check stage runs it: a process without torch, one thread, forking its pool.
_SCAN = """
import json, os, sys, time
from pathlib import Path
from vitpipe.check.imagescan import list_tree, scan_files
root, workers = Path(sys.argv[1]), int(sys.argv[2])
tree = list_tree(root)
paths = [p for split in tree.splits.values() for images in split.values() for p in images]
t, start = os.times(), time.perf_counter()
scan_files(root, paths, workers=workers, files=tree.files, phash=True)
seconds, u = time.perf_counter() - start, os.times()
cpu = u.user + u.system + u.children_user + u.children_system - (t.user + t.system + t.children_user + t.children_system)
print(json.dumps({"files": len(paths), "seconds": seconds, "cpu": cpu}))
"""


def measure_scan(root: Path, *, processes: Sequence[int] = (1, 2), repeats: int = 3) -> list[ScanRate]:
    """split-check's scan of every image under ``root`` (with perceptual hashes), each in a fresh process as
    the stage runs it (no torch imported: its pool forks), best of ``repeats`` each, the process counts
    taking turns within each repeat."""
    best: dict[int, ScanRate] = {}
    for _ in range(repeats):
        for n in processes:
            proc = subprocess.run([sys.executable, "-c", _SCAN, str(root), str(n)], capture_output=True, text=True,
                                  timeout=3600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
            if proc.returncode != 0:
                raise VitpipeError(f"bench: the scan of {root} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            rate = ScanRate(n, got["files"], got["seconds"], got["cpu"])
            if n not in best or rate.seconds < best[n].seconds:
                best[n] = rate
    return [best[n] for n in processes]


def _spin(n: int) -> int:
    return sum(range(n))


@dataclass(frozen=True)
class HostScaling:
    """A pure-Python loop: seconds alone, and seconds for two copies at once in 2 processes."""

    one: float
    two: float

    @property
    def speedup(self) -> float:
        """What 2 processes can gain on this host now: 2.0 on 2 idle cores, less as others use them."""
        return 2 * self.one / self.two


def host_scaling(*, n: int = 2 * 10**7, repeats: int = 3) -> HostScaling:
    """The host's ceiling for 2 processes, measured beside the scan (best of ``repeats`` each)."""
    one = two = float("inf")
    with pool_context().Pool(2) as pool:
        pool.map(_spin, [1, 1])  # both workers started
        for _ in range(repeats):
            start = time.perf_counter()
            pool.apply(_spin, (n,))
            one = min(one, time.perf_counter() - start)
            start = time.perf_counter()
            pool.map(_spin, [n, n], chunksize=1)
            two = min(two, time.perf_counter() - start)
    return HostScaling(one, two)


def load_average() -> str:
    """The host's 1-minute load average, or '-' where the OS has none."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "-"


def tiny_backbone_params(params: Params, *, img_size: int = 224) -> Params:
    """``params`` with timm's ``test_vit`` at ``img_size`` (the recipe's 256/224 resize and crop)."""
    return dataclasses.replace(params, model=dataclasses.replace(params.model, name="test_vit", img_size=img_size,
                                                                 pretrained=False, weights=None))
