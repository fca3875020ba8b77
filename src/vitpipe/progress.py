"""Progress of a long pass: tqdm's bar in a terminal, a log line at a steady interval elsewhere.

In CI, under ``dvc queue logs`` or in any redirected log a bar prints nothing until it ends, so where
stderr is not a terminal every pass (the feature pass, an epoch of the image engine, evaluate, the
split-check's scan, a download) logs a line every ``$VITPIPE_PROGRESS_SECONDS`` seconds (default 20)::

    12:03:41 INFO vitpipe.progress: train view 0: 1,024/6,000 images (17%), 8.5 images/s, 9 min 45 s left

A pass shorter than the interval prints no progress line. The call sites change by one line:
``tqdm(loader, ...)`` becomes ``track(loader, desc=..., total=..., count=batch_images)``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional, TypeVar

from tqdm import tqdm

from vitpipe.errors import VitpipeError

logger = logging.getLogger(__name__)

ENV = "VITPIPE_PROGRESS_SECONDS"
DEFAULT_SECONDS = 20.0
clock: Callable[[], float] = time.monotonic  # tests replace it with a fake clock

T = TypeVar("T")


def batch_images(batch: Any) -> int:
    """Images in a DataLoader batch: ``(images, labels)`` or a tensor of images."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if hasattr(first, "shape") else len(first)


def interval() -> float:
    """Seconds between two progress lines outside a terminal: ``$VITPIPE_PROGRESS_SECONDS``, else 20."""
    text = os.environ.get(ENV)
    if text is None:
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise VitpipeError(f"{ENV}={text!r} is not a number of seconds; set it to e.g. 20 (0: a line per "
                           f"batch), or unset it.")
    return seconds


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _amount(n: float, unit: str) -> str:
    return f"{n / 1e6:,.1f}" if unit == "B" else f"{n:,.0f}"


class LogProgress:
    """tqdm's ``update``/``close`` interface, logging a line per interval instead of drawing a bar.

    A line is logged by :meth:`update` when the interval has passed since the last one, and by a
    timer thread when no update came in that long (one batch of a fine-tune on a CPU can take longer
    than the interval). The thread starts with the first update, after a DataLoader has forked its
    workers, and stops at :meth:`close`.
    """

    def __init__(self, *, desc: str, total: Optional[float], unit: str, seconds: float):
        self.desc, self.total, self.unit, self.seconds = desc, total, unit, seconds
        self.done = 0.0
        self.started = self.last = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: Optional[threading.Thread] = None

    def update(self, n: float = 1) -> None:
        self.done += n
        self.tick()
        if self._timer is None and self.seconds > 0:
            self._timer = threading.Thread(target=self._beat, name="vitpipe-progress", daemon=True)
            self._timer.start()

    def tick(self) -> None:
        """Logs a line if the interval has passed since the last one."""
        with self._lock:
            now = clock()
            if now - self.last < self.seconds:
                return
            self.last = now
        logger.info("%s", self.line(now))

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds):
            self.tick()

    def line(self, now: float) -> str:
        """``desc: done/total units (pct), rate units/s, time left``."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        unit = " MB" if self.unit == "B" else f" {self.unit}s"
        rate_text = f"{_amount(rate, self.unit) if self.unit == 'B' else f'{rate:,.1f}'}{unit}/s"
        if not self.total:
            return f"{self.desc}: {_amount(self.done, self.unit)}{unit} in {_duration(elapsed)}, {rate_text}"
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        left_text = _duration(left) if math.isfinite(left) else "unknown"
        return (f"{self.desc}: {_amount(self.done, self.unit)}/{_amount(self.total, self.unit)}{unit} "
                f"({100 * self.done / self.total:.0f}%), {rate_text}, {left_text} left")

    def close(self) -> None:
        """Stops the timer thread."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(*, desc: str, total: Optional[float], unit: str = "image", enabled: bool = True) -> Any:
    """A progress counter: tqdm's bar when stderr is a terminal, else a :class:`LogProgress`
    (a no-op when not ``enabled``, e.g. on a rank other than the first under torchrun)."""
    if sys.stderr.isatty() or not enabled:
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=False,
                    disable=not enabled or None)
    return LogProgress(desc=desc, total=total, unit=unit, seconds=interval())


def track(iterable: Iterable[T], *, desc: str, total: Optional[float] = None, unit: str = "image",
          count: Optional[Callable[[T], float]] = None, enabled: bool = True) -> Iterator[T]:
    """Yields ``iterable``'s items, counting ``count(item)`` units each (1 when ``count`` is None)
    towards ``total`` (``len(iterable)`` when it has one and no ``count`` is given)."""
    if total is None and count is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with bar(desc=desc, total=total, unit=unit, enabled=enabled) as progress:
        for item in iterable:
            yield item
            progress.update(1 if count is None else count(item))
