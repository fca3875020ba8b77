"""The train stage's promises, each checked so that breaking it fails a test: the best epoch is the
one saved, label smoothing is applied, the losses are named for what they are, the worker count
changes no number (resumed or not), and the tutorial's loop is exact on CUDA too."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import history, kill_after_first_checkpoint, tiny_params, train_outputs, train_results
from safetensors.torch import load_file

from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.model.classifier import build_model
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.runtime import configure
from vitpipe.train import training
from vitpipe.train.batches import LoaderBatches, uses_decoded_images
from vitpipe.train.engines import FeatureEngine
from vitpipe.train.training import run_training

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


_outputs = train_outputs


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


_results = train_results


# --- the best validation epoch is the model saved --------------------------------------------------

def test_the_saved_model_is_the_best_validation_epochs_not_the_last(tmp_path, tiny_index, monkeypatch):
    real = FeatureEngine.evaluate
    calls = []

    def epoch_0_is_best(self, module):  # validation says: epoch 0 best, then worse
        loss, cross_entropy, _ = real(self, module)
        calls.append(None)
        return loss, cross_entropy, 0.9 if len(calls) == 1 else 0.1

    with monkeypatch.context() as m:
        m.setattr(FeatureEngine, "evaluate", epoch_0_is_best)
        metrics = run_training(tiny_params(epochs=3), tiny_index, _outputs(tmp_path / "three"))
    assert (metrics["best_epoch"], metrics["best_val_accuracy"]) == (0, 0.9)
    run_training(tiny_params(epochs=1), tiny_index, _outputs(tmp_path / "one"))  # epoch 0's weights: same seeds
    best, saved = _weights(tmp_path / "one"), _weights(tmp_path / "three")
    assert best.keys() == saved.keys() and all(torch.equal(best[k], saved[k]) for k in best)


# --- label smoothing is applied, and the losses say which is which --------------------------------

def test_label_smoothing_shapes_training_and_only_cross_entropy_compares_with_test(tmp_path, tiny_index):
    run_training(tiny_params(label_smoothing=0.0), tiny_index, _outputs(tmp_path / "plain"))
    run_training(tiny_params(), tiny_index, _outputs(tmp_path / "smoothed"))  # the recipe's 0.1
    plain, smoothed = _weights(tmp_path / "plain"), _weights(tmp_path / "smoothed")
    assert any(not torch.equal(plain[k], smoothed[k]) for k in plain), "label smoothing changed nothing"

    rows = {name: history(tmp_path / name) for name in ("plain", "smoothed")}
    assert sorted(rows["smoothed"][0]) == sorted(training.HISTORY_COLUMNS)
    assert all(r["val_loss_smoothed"] == r["val_cross_entropy"] for r in rows["plain"])
    assert all(float(r["val_loss_smoothed"]) > float(r["val_cross_entropy"]) for r in rows["smoothed"])

    # val_cross_entropy is test.json's loss: the saved model scored on the valid images gives it back
    metrics = json.loads((tmp_path / "smoothed" / "train.json").read_text())
    index = dataclasses.replace(tiny_index, splits={**tiny_index.splits, "test": tiny_index.samples("valid")})
    out = tmp_path / "eval"
    test = run_evaluation(tiny_params(), index, tmp_path / "smoothed" / "model.safetensors",
                          EvalOutputs(out / "test.json", out / "per_class.csv", out / "predictions.csv"))
    best = rows["smoothed"][metrics["best_epoch"]]
    assert test["loss"] == pytest.approx(float(best["val_cross_entropy"]), abs=1e-5)
    assert test["accuracy"] == pytest.approx(float(best["val_accuracy"]), abs=1e-6)


# --- the worker count changes no number, resumed or not --------------------------------------------

@pytest.mark.slow
def test_num_workers_changes_no_number_on_the_image_engine_even_across_a_resume(tmp_path, tiny_index, monkeypatch):
    """Before: each DataLoader worker drew the augmentations from its own RNG, so 0 and 2 workers
    trained on other flips and erasings; each image is now seeded from (seed, epoch, index)."""
    params = {"freeze": "none", "epochs": 2}
    run_training(tiny_params(**params, num_workers=0), tiny_index, _outputs(tmp_path / "w0"))
    run_training(tiny_params(**params, num_workers=2), tiny_index, _outputs(tmp_path / "w2"))
    assert _results(tmp_path / "w2") == _results(tmp_path / "w0")

    kill_after_first_checkpoint(monkeypatch, tiny_params(**params, num_workers=2), tiny_index,
                                _outputs(tmp_path / "resumed"))
    run_training(tiny_params(**params, num_workers=0), tiny_index, _outputs(tmp_path / "resumed"))
    assert _results(tmp_path / "resumed") == _results(tmp_path / "w0")


# --- the tutorial's loop exactly, on CUDA too ------------------------------------------------------

def test_the_tutorials_loop_reads_its_own_transforms_on_cuda(tiny_index):
    tutorial = tiny_params(cache_views=0, precision="fp32")
    fine_tune = tiny_params(freeze="none").train
    assert not uses_decoded_images(tutorial.train, CUDA)  # the decoded path is not the tutorial's transforms
    assert uses_decoded_images(fine_tune, CUDA) and not uses_decoded_images(fine_tune, CPU)
    assert uses_decoded_images(tiny_params(cache_views=0, image_source="decoded").train, CUDA)  # asked for
    _, info = build_model(tutorial.model, 3, seed=0)
    spec = eval_spec("seed", info)
    train_tf, eval_tf = build_train_transform("seed", spec, info), build_eval_transform(spec)
    batches = training._image_batches(tiny_index, tutorial.train, device=CUDA, spec=spec, train_tf=train_tf,
                                      eval_tf=eval_tf)
    assert isinstance(batches, LoaderBatches)
    # the transforms' own steps: PIL ones in the workers, then ToTensor's and Normalize's arithmetic and the
    # RandomErasing drawn per image, on the device (bit-identical on the CPU: tests/model/test_devicetransform.py)
    assert batches.train_set.transform.steps == train_tf.transforms[:-3]
    assert batches.train_set.transform.erasing is train_tf.transforms[-1]
    assert batches.val_set.transform.steps == eval_tf.transforms[:-2] and batches.val_set.transform.erasing is None
    assert batches.train_tail.mean.flatten().tolist() == list(torch.tensor(spec.mean).tolist())


@pytest.fixture()
def cuda_flags(monkeypatch):
    """Restores the process-wide CUDA math flags that configure() sets (they exist without a GPU)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark)
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[:2]
    torch.set_float32_matmul_precision(saved[2])
    torch.backends.cudnn.benchmark = saved[3]


def test_fp32_computes_in_true_fp32_on_cuda(cuda_flags, tmp_path, tiny_index, monkeypatch):
    configure(CUDA, "fp32")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    configure(CUDA, "bf16")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    # ... and the train and evaluate stages pass train.precision (the model card's) on
    seen = []
    monkeypatch.setattr(training, "configure", lambda device, precision: seen.append(("train", precision)))
    monkeypatch.setattr("vitpipe.evaluate.inference.configure",
                        lambda device, precision: seen.append(("evaluate", precision)))
    params = tiny_params(precision="fp32", epochs=1)
    run_training(params, tiny_index, _outputs(tmp_path))
    run_evaluation(params, tiny_index, tmp_path / "model.safetensors",
                   EvalOutputs(tmp_path / "t.json", tmp_path / "p.csv", tmp_path / "q.csv"))
    assert seen == [("train", "fp32"), ("evaluate", "fp32")]
