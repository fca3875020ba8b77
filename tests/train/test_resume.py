"""Resume: a checkpoint is continued only by the run that made it (params, classes, images, code,
libraries, device); anything else starts fresh and says what changed, never a traceback. The
checkpoint lives in the cache folder, keyed by the run; DVCLive's files follow it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from conftest import Killed, history, kill_after_first_checkpoint, tiny_params, train_outputs, train_results

from vitpipe.data.index import DatasetIndex
from vitpipe.errors import VitpipeError
from vitpipe.runtime import library_versions
from vitpipe.train import training
from vitpipe.train.checkpoint import DIGEST_FILE, Progress, checkpoint_path, restore
from vitpipe.train.resume import key_changes, key_digest, key_parts
from vitpipe.train.training import run_training

CPU = torch.device("cpu")


_outputs = train_outputs


def _checkpoint(params, index) -> Path:
    return checkpoint_path(key_parts(params, index, CPU))


def _killed_after_first_epoch(monkeypatch, params, index, out: Path) -> None:
    """Runs ``params`` until its first checkpoint is written, then stops it as a kill would."""
    kill_after_first_checkpoint(monkeypatch, params, index, _outputs(out))
    assert _checkpoint(params, index).is_file() and not (out / "train.json").exists()


def _with_train(index: DatasetIndex, samples) -> DatasetIndex:
    return dataclasses.replace(index, splits={**index.splits, "train": tuple(samples)})


def test_an_unfinished_run_of_the_same_key_resumes(tmp_path, tiny_index, monkeypatch, caplog):
    params = tiny_params(epochs=3)
    _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    checkpoint = _checkpoint(params, tiny_index)
    assert checkpoint.parent.parent == tmp_path / "feature-cache" / "checkpoints"  # beside the feature cache
    assert checkpoint.parent.name == key_digest(key_parts(params, tiny_index, CPU))
    caplog.set_level("INFO")
    run_training(params, tiny_index, _outputs(tmp_path))
    assert "resuming from" in caplog.text and "starting fresh" not in caplog.text
    assert not checkpoint.parent.exists()  # finished: its checkpoint and key are deleted


def test_a_killed_run_waits_in_its_own_folder_until_its_settings_come_back(tmp_path, tiny_index, monkeypatch,
                                                                           caplog):
    """`dvc exp run -S train.lr=5e-4` killed, `dvc exp run -S train.lr=1e-3`, then 5e-4 again: it resumes."""
    killed = tiny_params(epochs=3, lr=5e-4)
    _killed_after_first_epoch(monkeypatch, killed, tiny_index, tmp_path / "a")
    caplog.set_level("INFO")
    run_training(tiny_params(epochs=3), tiny_index, _outputs(tmp_path / "b"))
    assert "changed: train.lr 0.0005 -> 0.001; going back to its settings resumes it" in caplog.text
    assert _checkpoint(killed, tiny_index).is_file()  # another run's checkpoint is left alone
    caplog.clear()
    run_training(killed, tiny_index, _outputs(tmp_path / "a"))
    assert "resuming from" in caplog.text


def _reference_and_killed(tmp_path, tiny_index, monkeypatch, *, after_rows: int):
    """A 4-epoch run, and the same run killed once DVCLive has written ``after_rows`` epochs and before
    the checkpoint of the last of them was saved (a kill between the two writes)."""
    params = tiny_params(epochs=4)
    run_training(params, tiny_index, _outputs(tmp_path / "reference"))
    real, calls = training._checkpointed, []

    def die_before_saving(*args, **kwargs):
        calls.append(1)
        if len(calls) == after_rows:
            raise Killed
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(training, "_checkpointed", die_before_saving)
        with pytest.raises(Killed):
            run_training(params, tiny_index, _outputs(tmp_path / "killed"))
    return params


def test_dvclives_files_follow_the_checkpoint_not_their_own_step(tmp_path, tiny_index, monkeypatch):
    """Killed after DVCLive wrote epoch 2 but before epoch 2's checkpoint: DVCLive's own resume would
    keep that row and append epoch 2 again; rewritten from the checkpoint, the files are the reference's."""
    params = _reference_and_killed(tmp_path, tiny_index, monkeypatch, after_rows=3)
    assert [row["epoch"] for row in history(tmp_path / "killed")] == [0, 1, 2]  # one epoch past the checkpoint
    run_training(params, tiny_index, _outputs(tmp_path / "killed"))
    assert train_results(tmp_path / "killed") == train_results(tmp_path / "reference")


def test_a_resume_after_dvc_deleted_the_stages_outputs_writes_every_epoch_again(tmp_path, tiny_index,
                                                                                monkeypatch, caplog):
    """`dvc repro` deletes a stage's outputs (DVCLive's folder) before running it: the checkpoint, in the
    cache, is still there, and the resumed run writes DVCLive's rows of the epochs done before the kill."""
    params = _reference_and_killed(tmp_path, tiny_index, monkeypatch, after_rows=2)
    shutil.rmtree(tmp_path / "killed")
    caplog.set_level("INFO")
    run_training(params, tiny_index, _outputs(tmp_path / "killed"))
    assert "resuming from" in caplog.text and "epochs 0-0 done" in caplog.text
    assert train_results(tmp_path / "killed") == train_results(tmp_path / "reference")


def test_a_checkpoint_of_another_key_in_this_runs_folder_is_not_resumed(tmp_path, tiny_index, monkeypatch, caplog):
    """The key stored in the file is checked too (a hand-copied file, a digest collision)."""
    other = tiny_params(epochs=3, lr=5e-4)
    _killed_after_first_epoch(monkeypatch, other, tiny_index, tmp_path)
    params = tiny_params(epochs=3)
    _checkpoint(params, tiny_index).parent.mkdir(parents=True)
    shutil.copy(_checkpoint(other, tiny_index), _checkpoint(params, tiny_index))
    shutil.copy(_checkpoint(other, tiny_index).parent / DIGEST_FILE, _checkpoint(params, tiny_index).parent)  # verifies
    caplog.set_level("INFO")
    run_training(params, tiny_index, _outputs(tmp_path))
    assert "was made by another run (changed: train.lr 0.0005 -> 0.001); starting fresh" in caplog.text


def test_a_cache_that_cannot_take_checkpoints_warns_once_and_training_goes_on(tmp_path, tiny_index, monkeypatch,
                                                                              caplog):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    metrics = run_training(tiny_params(epochs=4), tiny_index, _outputs(tmp_path / "out"))
    assert metrics["epochs_run"] == 4 and len(history(tmp_path / "out")) == 4
    warned = [r.getMessage() for r in caplog.records if "no checkpoints this run" in r.getMessage()]
    assert len(warned) == 1 and "a-file" in warned[0]


@pytest.mark.parametrize("name", ["DVCLIVE_RESUME", "DVCLIVE_TEST"])
def test_dvclive_environment_that_would_break_the_files_is_refused_in_one_line(tmp_path, tiny_index, monkeypatch,
                                                                                name):
    monkeypatch.setenv(name, "true")
    with pytest.raises(VitpipeError, match=f"^{name} is set: .* unset {name} and run again.$"):
        run_training(tiny_params(epochs=1), tiny_index, _outputs(tmp_path))
    assert not (tmp_path / "dvclive").exists()


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


def test_a_feature_cache_checkpoint_holds_the_head_and_its_optimizer_not_the_backbone(tmp_path, tiny_index,
                                                                                     monkeypatch):
    """The head's epochs cost what their arithmetic costs: each epoch's checkpoint is the head, its optimizer,
    the best head so far and the RNG states, never the backbone's weights or the cached features."""
    params = tiny_params(epochs=3)
    outputs = train_outputs(tmp_path)
    kill_after_first_checkpoint(monkeypatch, params, tiny_index, outputs)
    path = checkpoint_path(key_parts(params, tiny_index, torch.device("cpu")))
    payload = torch.load(path, weights_only=True)
    head = set(payload["module"])
    assert head and not any(k.startswith("backbone") for k in head)
    assert set(payload["progress"]["best_state"]) == head
    floats = sum(t.numel() for t in payload["module"].values())
    saved = sum(t.numel() for value in (payload["module"], payload["progress"]["best_state"])
                for t in value.values())
    state = sum(t.numel() for s in payload["optimizer"]["state"].values() for t in s.values() if t.dim())
    assert saved == 2 * floats and state == 2 * floats  # the head twice (now, best); Adam's two moments
