"""``vitpipe bench``'s results and the markdown table they are appended to (BENCHMARKS.md), with their intervals."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import binomtest

from vitpipe.fileio import write_text
from vitpipe.report.markdown import md_header, md_row

logger = logging.getLogger(__name__)

LOOP, VITPIPE = "tutorial loop", "vitpipe"
COLUMNS = ("date", "device", "data (train/valid/test)", "method", "epochs", "train s", "recipe img/s",
           "backbone img/s", "speedup", "test acc", "test acc 95% CI", "minus loop's (95% CI)", "best val",
           "peak RSS MiB", "peak anon MiB")
HEADER = f"""# Benchmarks

`make bench` (`vitpipe bench`) trains the recipe in `params.yaml` (the tutorial's: frozen backbone,
MLP head, label smoothing, Adam, StepLR) twice, in one process, on the same data, with the same seed:

- **{LOOP}**: the tutorial's per-epoch loop, faithfully (`src/vitpipe/tutorial.py`): one ImageFolder
  per split, batch 128/32, shuffle, 4 DataLoader workers, fp32, every train image through the frozen
  backbone in every epoch;
- **{VITPIPE}**: vitpipe's train stage (`run_training`) with an EMPTY cache folder, so its time
  includes the one backbone pass per image and view (`train.cache_views`, `train.precision`; on
  `train.feature_runtime: onnxruntime`, the backbone's ONNX export too).
  With `train.cache_views: 1` (the default) the head trains on the eval view alone: NO augmentation,
  where the loop draws fresh flips and erasing every epoch; the two sides do not train the same recipe.
- **{VITPIPE} (KEY=VALUE)** (`--variant KEY=VALUE`): the train stage and evaluate with that param changed;
- **logistic regression probe** (`--probe`): scikit-learn's LogisticRegression on the standardised view-0
  features of the same backbone (the features the head trains on with `train.cache_views: 1`).

Columns: **train s**: wall seconds of training only (model and loaders built, every epoch with its
validation pass, best weights kept; vitpipe also writes its model and metrics), not the test pass.
**recipe img/s**: epochs x train images / train s. **backbone img/s**: images through the backbone per
second: the loop, epochs x (train + valid) / train s; vitpipe, the images of its feature pass / that
pass's seconds (onnxruntime rows: the one-off ONNX export, cached after, is in train s, not here). **speedup**: the loop's train s / this row's. **test acc**: over EVERY test image, with
(correct/images); **test acc 95% CI**: its Wilson score interval (on 50 test images about +-0.13, so
one run tells apart only large differences); **minus loop's (95% CI)**: this row's test accuracy minus
the loop's, with Newcombe's interval for a difference of two proportions (an interval holding 0: no
measurable difference, never "equal accuracy"); **best val**: the best epoch's. **peak RSS MiB**:
this process's peak resident memory while training (VmHWM reset before each side; the second side
starts from what the first left).
**peak anon MiB**: peak anonymous memory (heap, tensors) of the process and its DataLoader workers,
pages shared by fork counted once (sum of Pss_Anon, sampled every second). Rows are appended, newest last.
"""


@dataclass(frozen=True)
class MethodResult:
    """One side of the benchmark."""

    method: str
    epochs: int
    seconds: float
    train_images: int
    backbone_images: int
    backbone_seconds: float
    val_correct: int
    val_images: int
    test_correct: int
    test_images: int
    peak_rss_mib: float
    peak_anon_mib: float

    @property
    def recipe_rate(self) -> float:
        """epochs x train images per second."""
        return self.epochs * self.train_images / self.seconds

    @property
    def backbone_rate(self) -> float:
        """Images through the frozen backbone per second."""
        return self.backbone_images / self.backbone_seconds


@dataclass(frozen=True)
class BenchResult:
    """A benchmark run: where, on what, and each side's figures."""

    date: str
    device: str
    data: str
    results: tuple[MethodResult, ...]

    def speedup(self, result: MethodResult) -> float | None:
        """The loop's seconds / ``result``'s; None without a loop run."""
        loop = next((r for r in self.results if r.method == LOOP), None)
        return None if loop is None else loop.seconds / result.seconds


def _fraction(correct: int, total: int) -> str:
    return f"{correct / total:.2f} ({correct}/{total})" if total else "-"


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """The 95% Wilson score interval of the proportion ``correct / total`` (scipy)."""
    ci = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def difference_interval(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float, float]:
    """``a``'s proportion minus ``b``'s (each ``(correct, total)``) with Newcombe's 95% interval
    (method 10: from the two Wilson intervals; conservative when both score the same images)."""
    (pa, (la, ua)), (pb, (lb, ub)) = ((k / n, wilson_interval(k, n)) for k, n in (a, b))
    diff = pa - pb
    return diff, diff - math.hypot(pa - la, ub - pb), diff + math.hypot(ua - pa, pb - lb)


def _interval(correct: int, total: int) -> str:
    return "{:.2f}-{:.2f}".format(*wilson_interval(correct, total)) if total else "-"


def _versus_loop(bench: BenchResult, r: MethodResult) -> str:
    loop = next((x for x in bench.results if x.method == LOOP), None)
    if loop is None or r is loop or not r.test_images or not loop.test_images:
        return "-"
    diff, low, high = difference_interval((r.test_correct, r.test_images), (loop.test_correct, loop.test_images))
    return f"{diff:+.2f} ({low:+.2f} to {high:+.2f})"


def _mib(value: float) -> str:
    return f"{value:.0f}" if value > 0 else "-"  # 0: no /proc to read


def table_rows(bench: BenchResult) -> list[str]:
    """The markdown rows of ``bench``, one per side."""
    rows = []
    for r in bench.results:
        speedup = bench.speedup(r)
        cells = (bench.date, bench.device, bench.data, r.method, str(r.epochs or "-"), f"{r.seconds:.1f}",
                 f"{r.recipe_rate:.1f}" if r.epochs else "-", f"{r.backbone_rate:.1f}", "-" if speedup is None else f"{speedup:.2f}x",
                 _fraction(r.test_correct, r.test_images), _interval(r.test_correct, r.test_images),
                 _versus_loop(bench, r), _fraction(r.val_correct, r.val_images),
                 _mib(r.peak_rss_mib), _mib(r.peak_anon_mib))
        rows.append(md_row(cells))
    return rows


def table_header() -> list[str]:
    """The markdown table's header and alignment lines."""
    return md_header(COLUMNS)


def append_rows(path: Path, rows: list[str], *, header: list[str] | None = None, section: str = "") -> None:
    """Appends ``rows`` to the table of ``path`` that starts with ``header`` (default: the method table's).

    Without such a table, one is started at the end of the file, after ``section`` (a heading and
    its text). A missing file starts with :data:`HEADER`. The file is rewritten atomically.
    """
    path = Path(path)
    header = header or table_header()
    text = (path.read_text(encoding="utf-8") if path.exists() else "") or HEADER
    lines = text.rstrip("\n").splitlines()
    if header[0] in lines:
        end = lines.index(header[0]) + 2
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines[end:end] = rows
    else:
        lines += ["", *([section, ""] if section else []), *header, *rows]
    write_text(path, "\n".join(lines) + "\n")
    logger.info("bench: appended %d rows to %s", len(rows), path)


def format_table(bench: BenchResult) -> str:
    """The run's rows under the table header, for stdout."""
    return "\n".join(table_header() + table_rows(bench))
