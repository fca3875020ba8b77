"""``vitpipe bench --suite``: the GPU rows, and the host rows (data path, split-check, stage start-up).

``gpu`` (what ``make bench`` runs where CUDA is visible): a seed-sized synthetic set (the tutorial's
4,950/250/250 at 224 px, 25 classes) and a 12,500-image one, drawn on every core; the tutorial's loop
against vitpipe's train stage on the first, the frozen recipe on the second (the method table); a full
fine-tune's images/s against the same process's compute ceiling (:mod:`vitpipe.bench.ceiling`); each
stage's start-up (:mod:`vitpipe.bench.startup`). ``host``: the data path's images/s per worker and its
scaling (:mod:`vitpipe.bench.datapath`), split-check with 1 and 2 processes, and the stage start-up,
beside another checkout's with ``--startup-against``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vitpipe.bench.bench import append_rows, checked_index, run_bench, with_overrides
from vitpipe.bench.ceiling import FineTuneRate, measure_fine_tune
from vitpipe.bench.datapath import (
    PathRate,
    ScanRate,
    host_scaling,
    load_average,
    measure_data_path,
    measure_scan,
    tiny_backbone_params,
)
from vitpipe.bench.startup import StageStartup, measure_startup
from vitpipe.download.synthetic import generate
from vitpipe.params import Params, SyntheticParams, usable_cores
from vitpipe.report.markdown import md_header, md_row
from vitpipe.runtime import EXACT, describe_device, resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sizes:
    """The GPU suite's synthetic sets: classes, and train/valid/test images per class of each."""

    classes: int = 25
    seed_sized: tuple[int, int, int] = (198, 10, 10)  # 4,950 / 250 / 250: the tutorial's set
    large: tuple[int, int, int] = (500, 10, 10)  # 12,500 train images
    image_size: int = 224


SMALL = Sizes(classes=4, seed_sized=(12, 4, 4), large=(24, 4, 4), image_size=64)  # a dry run, on any machine

DATA_PATH_COLUMNS = ("date", "device", "load", "data", "path", "workers", "images/s", "vs 1 worker",
                     "images per CPU second", "bytes/image moved")
DATA_PATH_SECTION = """## Data path: images per CPU second, 1 and 2 workers

`vitpipe bench --suite host`: the feature pass's DataLoader alone (no model) over the train images with
the recipe's transform at 224 px (`test_vit`'s: Resize(256), CenterCrop(224)): read, decode, resize and
crop in the workers, collate, hand each batch of 32 to the main process. **uint8**: what the workers do
on a GPU machine (they stop at uint8 pixels, the GPU scales and normalises), so its **images per CPU
second** (images over the CPU seconds of the process and its workers, `os.times`: per core kept busy,
which other jobs on the host change little) times a machine's cores is what its CPUs can feed a GPU.
**float32**: the whole transform in the workers, what the CPU's feature pass does (and every pass did
before). **images/s** and **vs 1 worker** depend on how many cores other jobs leave: **load** is the
host's 1-minute load average when the row was written."""
SCAN_COLUMNS = ("date", "device", "load", "data", "processes", "files", "seconds (best of 3)", "files/s",
                "vs 1 process", "host's 2-process ceiling", "files per CPU second")
SCAN_SECTION = """## split-check: 1 and 2 processes

`vitpipe bench --suite host`: split-check's scan (read, SHA-256, full decode, perceptual hash) of every
image, each in a fresh process as the stage runs it (no torch imported, so its pool forks), best of 3
with the process counts taking turns, so both see the same load. **host's 2-process
ceiling**: what 2 processes can gain on this host at that moment, measured right after (a pure-Python loop
alone and two copies at once: 2.00x on 2 idle cores, less as other jobs hold them). **files per CPU
second**: files over the CPU seconds of the process and its pool's (`os.times`)."""
STARTUP_COLUMNS = ("date", "device", "load", "stage", "seconds", "before the first image s", "imports s", "against",
                   "against: seconds", "against: before the first image s", "against: imports s")
STARTUP_SECTION = """## Stage start-up

`vitpipe bench --suite host` (and `--suite gpu`): each stage script as DVC runs it, its own process, on
2 synthetic classes of 4/2/2 images with the params' model and device and an empty cache folder: what a
stage costs besides its work (interpreter, imports, CUDA, the model, DataLoader workers, its outputs);
the median of the rounds (train and evaluate include one padded batch per split through the backbone).
**before the first image s**: the start-up train and evaluate log (seconds until the model is ready for
its first image; older checkouts log none). **imports s**: the script's imports (`python -X importtime`,
top level). **against**: another checkout's stage scripts, run in turn with these in the same rounds."""
FINE_TUNE_COLUMNS = ("date", "device", "model", "batch", "compiled", "vitpipe images/s", "ceiling images/s",
                     "vitpipe / ceiling")
FINE_TUNE_SECTION = """## Full fine-tune against the compute ceiling

`vitpipe bench --suite gpu`: the image engine's epoch on decoded images (freeze none, AdamW, the params'
batch size and precision) against the same steps on one batch that stays on the device, in one process."""


def _now() -> str:
    return datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")


def _startup_rows(rows: Sequence[StageStartup], device: str, against: Path | None) -> list[str]:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    date, load = _now(), load_average()
    return [md_row((date, device, load, r.stage, cell(r.seconds), cell(r.ready), cell(r.imports),
                    str(against) if against else "-", cell(r.against_seconds), cell(r.against_ready),
                    cell(r.against_imports)))
            for r in rows]


def run_host_suite(params: Params, root: Path, *, out: Path, work: Path, data_name: str,
                   against: Path | None = None, rounds: int = 3) -> list[str]:
    """The data-path, split-check and start-up rows of this host, appended to ``out``; returns them."""
    device = resolve_device(params.train.device)
    name = describe_device(device)
    index = checked_index(root, params.data)
    scans: list[ScanRate] = measure_scan(root)
    ceiling = host_scaling()
    scan_date, scan_load = _now(), load_average()
    rates: list[PathRate] = measure_data_path(index, tiny_backbone_params(params))
    one = {r.path: r.rate for r in rates if r.workers == 1}
    date, load = _now(), load_average()
    path_rows = [md_row((date, name, load, f"{data_name} ({r.images} train)", r.path, str(r.workers),
                         f"{r.rate:.0f}", f"{r.rate / one[r.path]:.2f}x" if r.path in one else "-",
                         f"{r.per_core:.0f}", f"{r.bytes_per_image:,}"))
                 for r in rates]
    append_rows(out, path_rows, header=md_header(DATA_PATH_COLUMNS), section=DATA_PATH_SECTION)
    scan_rows = [md_row((scan_date, name, scan_load, data_name, str(s.processes), str(s.files), f"{s.seconds:.2f}",
                         f"{s.rate:.0f}", f"{s.rate / scans[0].rate:.2f}x", f"{ceiling.speedup:.2f}x",
                         f"{s.per_core:.0f}")) for s in scans]
    append_rows(out, scan_rows, header=md_header(SCAN_COLUMNS), section=SCAN_SECTION)
    startup = _startup_rows(measure_startup(params, work / "startup", rounds=rounds, against=against), name, against)
    append_rows(out, startup, header=md_header(STARTUP_COLUMNS), section=STARTUP_SECTION)
    return path_rows + scan_rows + startup


def draw_set(dest: Path, sizes: Sizes, counts: tuple[int, int, int]) -> Path:
    """A synthetic set of ``sizes.classes`` classes and ``counts`` images per class, drawn on every core."""
    dest.mkdir(parents=True)
    start = time.perf_counter()
    generate(dest, SyntheticParams(classes=sizes.classes, train_per_class=counts[0], valid_per_class=counts[1],
                                   test_per_class=counts[2], image_size=sizes.image_size),
             seed=0, processes=usable_cores())
    logger.info("bench: drew %d images in %.1f s on %d cores", sizes.classes * sum(counts), time.perf_counter() - start,
                usable_cores())
    return dest


def run_gpu_suite(params: Params, *, out: Path, work: Path, sizes: Sizes = Sizes(), rounds: int = 1) -> list[str]:
    """Every GPU row (on whatever device ``params`` resolve to), appended to ``out``; returns the new rows."""
    if params.train.precision == EXACT:  # float64 on a GPU: the figures are bf16 (docs/training.md)
        logger.info("GPU suite: train.precision exact -> bf16 (exact computes in float64, which GPUs run far "
                    "slower; train.precision: fp32 in params.yaml measures fp32)")
        params = with_overrides(params, {"train.precision": "bf16"})
    device = resolve_device(params.train.device)
    name = describe_device(device)
    seed_sized = draw_set(work / "seed-sized", sizes, sizes.seed_sized)
    large = draw_set(work / "large", sizes, sizes.large)
    label = f"synthetic, {sizes.classes} classes, {sizes.image_size} px"
    rows = []
    bench = run_bench(params, seed_sized, out=out, data_name=label)  # the loop against vitpipe
    frozen = run_bench(params, large, out=out, data_name=label, skip_loop=True)  # the frozen recipe, 12,500 images
    rows += [f"{r.method}: {r.seconds:.1f} s" for r in bench.results + frozen.results]
    index = checked_index(seed_sized, params.data)
    rate: FineTuneRate = measure_fine_tune(params, index)
    tune = md_row((_now(), name, rate.model, str(rate.batch_size), str(rate.compiled).lower(),
                   f"{rate.engine_rate:.0f}", f"{rate.ceiling_rate:.0f}", f"{rate.ratio:.2f}"))
    append_rows(out, [tune], header=md_header(FINE_TUNE_COLUMNS), section=FINE_TUNE_SECTION)
    startup = _startup_rows(measure_startup(params, work / "startup", rounds=rounds), name, None)
    append_rows(out, startup, header=md_header(STARTUP_COLUMNS), section=STARTUP_SECTION)
    return rows + [tune] + startup


def small_sizes() -> Sizes:
    """:data:`SMALL`, for a dry run of the GPU suite on any machine."""
    return dataclasses.replace(SMALL)
