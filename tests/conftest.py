"""Shared fixtures: a tiny generated dataset, tiny-model params and an isolated feature cache."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from vitpipe.check.datacheck import check_dataset
from vitpipe.data.index import DatasetIndex
from vitpipe.download.synthetic import generate
from vitpipe.params import DataParams, ModelParams, Params, SyntheticParams, TrainParams

REPO = Path(__file__).resolve().parents[1]
BUTTERFLIES = REPO.parent / "shared" / "data" / "butterflies-10"


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests run on a CUDA host and are skipped elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_feature_cache(tmp_path, monkeypatch):
    """No test reads or pollutes the user's feature cache."""
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(tmp_path / "feature-cache"))


@pytest.fixture(autouse=True)
def _restore_logging():
    """A command run by a test (``vitpipe.cli.main``) sets up logging on that test's captured stderr;
    the next test must not log to it once it is closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 synthetic classes, 10/4/4 images each, 48 px."""
    root = tmp_path_factory.mktemp("tiny-data")
    generate(root, SyntheticParams(classes=3, train_per_class=10, valid_per_class=4, test_per_class=4,
                                   image_size=48), seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_index(tiny_data) -> DatasetIndex:
    result = check_dataset(tiny_data, DataParams())
    assert result.accepted, result.errors
    return result.index


@pytest.fixture(scope="session")
def butterflies() -> Path:
    if not BUTTERFLIES.is_dir():
        pytest.skip("../shared/data/butterflies-10 is not here")
    return BUTTERFLIES


def tiny_vit_spec():
    """The eval transform of a 32 px ``test_vit`` (what the decoded-image tests augment and compare)."""
    from vitpipe.model.classifier import build_model
    from vitpipe.model.transforms import eval_spec

    _, info = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)
    return eval_spec("seed", info)


def tiny_params(**train: object) -> Params:
    """timm's ``test_vit`` at 32 px with a small head: a training run takes about a second. On the CPU
    (``train.device: cpu``), where runs are deterministic, also on a CUDA host."""
    base = TrainParams(epochs=2, batch_size=8, val_batch_size=8, num_workers=0, device="cpu")
    if "precision" not in train and not dataclasses.replace(base, precision="bf16", **train).uses_feature_cache:
        train = {**train, "precision": "bf16"}  # exact is for the frozen-feature path (params refuse it elsewhere)
    model = ModelParams(name="test_vit", img_size=32, head_hidden=16)
    return Params(model=model, train=dataclasses.replace(base, **train))


def train_outputs(out: Path):
    """The train stage's outputs inside ``out``, named as in dvc.yaml (the checkpoint goes to the cache)."""
    from vitpipe.train.training import TrainOutputs

    return TrainOutputs(model=out / "model.safetensors", metrics=out / "train.json", live=out / "dvclive")


class Killed(Exception):
    """Stands for a SIGKILL right after a checkpoint was written."""


def kill_after_first_checkpoint(monkeypatch, params: Params, index: DatasetIndex, outputs) -> None:
    """Runs the train stage until its first checkpoint is written, then stops it as a kill would."""
    from vitpipe.train import training

    real = training.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(training, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            training.run_training(params, index, outputs)


def history(out: Path) -> list[dict]:
    """The per-epoch rows DVCLive wrote under ``out/dvclive``, with the history's column names."""
    from vitpipe.report.history import read_live_history

    frame = read_live_history(out / "dvclive")
    return [] if frame is None else frame.to_dict("records")


def live_files(out: Path) -> dict[str, bytes]:
    """Every file DVCLive wrote under ``out/dvclive``, by relative path."""
    folder = out / "dvclive"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_results(out: Path) -> tuple[dict[str, bytes], bytes, bytes]:
    """What the train stage wrote in ``out``, as bytes: DVCLive's files, the model (its provenance
    included) and train.json (equal runs, equal bytes: no timestamps, no timings)."""
    return live_files(out), (out / "model.safetensors").read_bytes(), (out / "train.json").read_bytes()
@pytest.fixture()
def repo_copy(tmp_path) -> tuple[Path, dict[str, str]]:
    """The project's files in a fresh git repo, without any outputs (see tests/repo_copy.py)."""
    from repo_copy import copy_repo

    return copy_repo(tmp_path)
