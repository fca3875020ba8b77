"""Resume: a checkpoint is continued only by the run that made it (params, classes, images, code,
libraries, device); anything else starts fresh and says what changed, never a traceback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import tiny_params

from vitpipe.data.index import DatasetIndex
from vitpipe.runtime import library_versions
from vitpipe.train import training
from vitpipe.train.checkpoint import Progress, restore
from vitpipe.train.resume import key_changes, key_digest, key_parts
from vitpipe.train.training import TrainOutputs, run_training

CPU = torch.device("cpu")


class Killed(Exception):
    """Stands for a SIGKILL right after a checkpoint was written."""


def _outputs(path: Path) -> TrainOutputs:
    return TrainOutputs(model=path / "model.safetensors", checkpoint=path / "ckpt" / "last.pt",
                        metrics=path / "train.json", history=path / "history.csv")


def _killed_after_first_epoch(monkeypatch, params, index, out: Path) -> None:
    """Runs ``params`` until its first checkpoint is written, then stops it as a kill would."""
    real = training.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(training, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            run_training(params, index, _outputs(out))
    assert (out / "ckpt" / "last.pt").is_file() and not (out / "train.json").exists()


def _with_train(index: DatasetIndex, samples) -> DatasetIndex:
    return dataclasses.replace(index, splits={**index.splits, "train": tuple(samples)})


def test_an_unfinished_run_of_the_same_key_resumes(tmp_path, tiny_index, monkeypatch, caplog):
    params = tiny_params(epochs=3)
    _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    caplog.set_level("INFO")
    run_training(params, tiny_index, _outputs(tmp_path))
    assert "resuming from" in caplog.text and "starting fresh" not in caplog.text


def _changed(case: str, index: DatasetIndex) -> tuple[DatasetIndex, str]:
    """The index of a second run with one part of the dataset changed, and what the log must name."""
    train = list(index.samples("train"))
    if case == "an edited image":  # the README's workflow: same path and params, other content
        return _with_train(index, [dataclasses.replace(train[0], sha256="0" * 64)] + train[1:]), "the train images"
    if case == "relabelled images":
        return _with_train(index, [dataclasses.replace(s, label=(s.label + 1) % 3) for s in train]), \
            "the train images"
    if case == "renamed classes":
        return dataclasses.replace(index, classes=("x", "y", "z")), "the class list (3 -> 3 classes)"
    return dataclasses.replace(index, classes=(*index.classes, "extra")), "the class list (3 -> 4 classes)"


@pytest.mark.parametrize("case", ["an edited image", "relabelled images", "renamed classes", "a fourth class"])
def test_a_changed_dataset_or_class_list_starts_fresh_and_says_so(case, tmp_path, tiny_index, monkeypatch, caplog):
    params = tiny_params(epochs=3)
    _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    index, words = _changed(case, tiny_index)
    caplog.set_level("INFO")
    metrics = run_training(params, index, _outputs(tmp_path))  # a fourth class: never a size-mismatch traceback
    assert "resuming from" not in caplog.text
    assert f"changed: {words}" in caplog.text and "starting fresh" in caplog.text
    assert metrics["epochs"] == 3


@pytest.mark.parametrize("part", ["code", "libraries"])
def test_other_code_or_library_versions_start_fresh(part, tmp_path, tiny_index, monkeypatch, caplog):
    params = tiny_params(epochs=3)
    _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    if part == "code":
        monkeypatch.setattr("vitpipe.train.resume.code_digest", lambda *parts: "edited images.py")
        words = "vitpipe's training code"
    else:
        real = library_versions()
        monkeypatch.setattr("vitpipe.train.resume.library_versions", lambda: {**real, "timm": "9.9.9"})
        words = "timm "
    caplog.set_level("INFO")
    run_training(params, tiny_index, _outputs(tmp_path))
    assert "resuming from" not in caplog.text and f"changed: {words}" in caplog.text


def test_key_changes_name_each_part(tiny_index):
    params = tiny_params()
    base = key_parts(params, tiny_index, CPU)
    assert key_changes(base, base) == [] and key_digest(base) == key_digest(key_parts(params, tiny_index, CPU))
    other = key_parts(tiny_params(lr=5e-4, num_workers=3), tiny_index, CPU)  # num_workers is speed-only
    assert key_changes(base, other) == ["train.lr 0.001 -> 0.0005"]
    assert key_digest(base) != key_digest(other)
    moved = {**base, "data": {**base["data"], "valid": "x"}, "device": "NVIDIA H100 80GB HBM3",
             "libraries": {**base["libraries"], "torch": "0.1"}}
    assert key_changes(base, moved) == ["the valid images", f"torch {base['libraries']['torch']} -> 0.1",
                                        "the device (cpu -> NVIDIA H100 80GB HBM3)"]
    assert key_changes({"params": {}}, base)  # a key without parts (an older file): everything changed


def test_a_checkpoint_whose_weights_do_not_fit_is_not_loaded(tiny_index):
    """Even a forged or mislabelled checkpoint never crashes the run or half-loads into the model."""
    head = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(head.parameters())
    before = {k: v.clone() for k, v in head.state_dict().items()}
    payload = {"module": torch.nn.Linear(4, 5).state_dict(), "optimizer": {}, "scheduler": {}, "ema": None,
               "rng": {}, "progress": vars(Progress())}
    assert restore(payload, module=head, optimizer=optimizer, scheduler=None, ema=None) is None
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
