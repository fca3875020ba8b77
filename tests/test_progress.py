"""Progress outside a terminal: a log line per interval (done/total, rate, time left), driven here
by a fake clock. End to end, through `dvc exp run` with its output captured (the own-images run and
the fine-tune of the docs): tests/test_docs_commands.py."""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest

from vitpipe import progress
from vitpipe.errors import VitpipeError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress, "clock", fake)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    return fake


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vitpipe.progress"]


def test_a_line_per_interval_with_done_total_rate_and_time_left(clock, caplog, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    caplog.set_level(logging.INFO, logger="vitpipe.progress")
    batches = [[0] * 32] * 10  # 10 batches of 32 images, 7 s each

    for _ in progress.track(batches, desc="train view 0", total=320, count=len):
        clock.now += 7
    # 20 s interval: after batches 3 (21 s), 6 (42 s) and 9 (63 s); none in between
    assert _lines(caplog) == ["train view 0: 96/320 images (30%), 4.6 images/s, 49 s left",
                              "train view 0: 192/320 images (60%), 4.6 images/s, 28 s left",
                              "train view 0: 288/320 images (90%), 4.6 images/s, 7 s left"]


def test_a_short_pass_prints_nothing_and_minutes_are_spelled(clock, caplog, monkeypatch):
    monkeypatch.setenv(progress.ENV, "30")
    caplog.set_level(logging.INFO, logger="vitpipe.progress")
    for _ in progress.track(range(5), desc="test", unit="file"):
        clock.now += 1
    assert _lines(caplog) == []
    with progress.bar(desc="b.zip", total=400e6, unit="B") as bar:
        clock.now += 31
        bar.update(10e6)
    assert _lines(caplog) == ["b.zip: 10.0/400.0 MB (2%), 0.3 MB/s, 20 min 9 s left"]


def test_no_total_says_what_is_done_and_the_rate(clock, caplog, monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")  # a line per update
    caplog.set_level(logging.INFO, logger="vitpipe.progress")
    for _ in progress.track(iter(range(2)), desc="epoch 3"):
        clock.now += 2
    assert _lines(caplog) == ["epoch 3: 1 images in 2 s, 0.5 images/s", "epoch 3: 2 images in 4 s, 0.5 images/s"]


def test_the_timer_logs_while_one_batch_takes_longer_than_the_interval(monkeypatch, caplog):
    """A fine-tune's batch on a CPU can outlast the interval: the timer thread logs meanwhile."""
    monkeypatch.setenv(progress.ENV, "0.01")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    caplog.set_level(logging.INFO, logger="vitpipe.progress")
    two_lines = threading.Event()

    def slow_batches():
        yield [0] * 8
        deadline = time.monotonic() + 60
        while len(_lines(caplog)) < 3 and time.monotonic() < deadline:  # the second batch "computes"
            two_lines.wait(0.005)
        yield [0] * 8

    for _ in progress.track(slow_batches(), desc="epoch 0", total=16, count=len):
        pass
    assert len(_lines(caplog)) >= 3 and all(line.startswith("epoch 0: 8/16 images (50%)")
                                           for line in _lines(caplog)[:2])
    assert not [t for t in threading.enumerate() if t.name == "vitpipe-progress"]  # stopped at the end


def test_in_a_terminal_tqdm_draws_the_bar_and_nothing_is_logged(clock, caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    caplog.set_level(logging.INFO, logger="vitpipe.progress")
    bar = progress.bar(desc="x", total=3)
    assert type(bar).__name__ == "tqdm"
    bar.close()
    for _ in progress.track(range(3), desc="x"):
        clock.now += 100
    assert _lines(caplog) == []


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", ""])
def test_a_bad_interval_is_one_line_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(progress.ENV, value)
    with pytest.raises(VitpipeError) as err:
        progress.interval()
    assert progress.ENV in str(err.value) and "\n" not in str(err.value)
