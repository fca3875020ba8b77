"""The error boundary: a VitpipeError is one line and exit status 2, even from a DataLoader worker."""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader, Dataset

from vitpipe.errors import VitpipeError
from vitpipe.logs import run_guarded


class _Gone(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        raise VitpipeError("data/raw/train/a/1.jpg: no longer exists; run `dvc repro`.")


def test_a_vitpipe_error_raised_in_a_dataloader_worker_is_still_one_line(caplog):
    """torch re-raises a worker's exception with the worker's traceback in its message."""
    with caplog.at_level(logging.ERROR):
        assert run_guarded(lambda: list(DataLoader(_Gone(), num_workers=1))) == 2
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "data/raw/train/a/1.jpg: no longer exists; run `dvc repro`."
