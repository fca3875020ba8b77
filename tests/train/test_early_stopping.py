"""Early stopping (train.patience, train.min_delta): stops, says so, and a resumed run stops at the same epoch."""

from __future__ import annotations

import json

import pytest
from conftest import history, live_files, tiny_params, train_outputs, train_results

from vitpipe.errors import VitpipeError
from vitpipe.params import parse_params
from vitpipe.train import training
from vitpipe.train.checkpoint import Progress
from vitpipe.train.training import run_training

_outputs, _history, _results = train_outputs, history, train_results


def test_the_counter_follows_min_delta_and_patience():
    progress = Progress()
    seen = [progress.note_validation(acc, min_delta=0.05, patience=2) for acc in (0.5, 0.52, 0.6, 0.6, 0.64)]
    # 0.5 improves on nothing; 0.52 is within min_delta (stale 1); 0.6 beats 0.5 + 0.05 (reset);
    # 0.6 (stale 1); 0.64 is within 0.05 of 0.6 (stale 2: patience runs out)
    assert seen == [False, False, False, False, True]
    assert progress.stale_epochs == 2 and progress.stopped_early


@pytest.mark.parametrize("engine", ["feature-cache", "images"])
def test_a_run_without_gains_stops_after_patience_epochs_and_says_so(tmp_path, tiny_index, caplog, engine):
    caplog.set_level("INFO")
    # min_delta 0.99: no epoch after the first can count as a gain, so the run stops after epoch 0 + patience.
    extra = {} if engine == "feature-cache" else {"cache_views": 0}
    metrics = run_training(tiny_params(epochs=8, patience=2, min_delta=0.99, **extra), tiny_index, _outputs(tmp_path))
    assert metrics["engine"] == engine
    assert metrics["stopped_early"] is True and metrics["epochs_run"] == 3 and metrics["epochs"] == 8
    assert [int(row["epoch"]) for row in _history(tmp_path)] == [0, 1, 2]  # only the epochs that ran
    assert json.loads((tmp_path / "dvclive" / "metrics.json").read_text())["step"] == 2
    assert json.loads((tmp_path / "train.json").read_text())["stopped_early"] is True
    assert "early stopping after epoch 2" in caplog.text


def test_patience_off_trains_every_epoch(tmp_path, tiny_index):
    metrics = run_training(tiny_params(epochs=4), tiny_index, _outputs(tmp_path))
    assert metrics["stopped_early"] is False and metrics["epochs_run"] == 4 == len(_history(tmp_path))


def test_a_resumed_run_stops_at_the_same_epoch_as_an_uninterrupted_one(tmp_path, tiny_index, monkeypatch):
    params = tiny_params(epochs=8, patience=2, min_delta=0.99)
    run_training(params, tiny_index, _outputs(tmp_path / "reference"))

    real_save, calls = training.save_checkpoint, []

    def save_then_die(*args, **kwargs):  # killed right after epoch 1's checkpoint: one stale epoch counted
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_training(params, tiny_index, _outputs(tmp_path / "killed"))
    assert len(_history(tmp_path / "killed")) == 2  # DVCLive wrote epochs 0 and 1 as they ended
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    run_training(params, tiny_index, _outputs(tmp_path / "killed"))
    assert _results(tmp_path / "killed") == _results(tmp_path / "reference")  # DVCLive's files too, byte for byte
    assert len(_history(tmp_path / "killed")) == 3 and live_files(tmp_path / "killed")


def test_min_delta_without_patience_is_refused():
    with pytest.raises(VitpipeError, match=r"train.min_delta is set .* it needs train.patience"):
        parse_params({"train": {"min_delta": 0.01}})
    with pytest.raises(VitpipeError, match=r"train.patience must be >= 1"):
        parse_params({"train": {"patience": 0}})
