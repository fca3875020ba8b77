"""No NaN or inf in any output of vitpipe without a refusal (issue 22, case 1): a damaged model file,
non-finite logits or a diverged run are one line naming the file, and nothing is written.

Before: a model file with a weight of 1e29 (or NaN) was evaluated with every image predicted as
class 0 (NaN's argmax), ``"loss": NaN`` in test.json and ``nan`` confidences, all exit 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_params, train_outputs
from safetensors import safe_open
from safetensors.torch import save_file

from vitpipe.cli import main
from vitpipe.errors import VitpipeError
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.evaluate.inference import Predictor
from vitpipe.fileio import write_csv, write_json
from vitpipe.train.engines import FeatureEngine
from vitpipe.train.training import run_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_index) -> Path:
    out = tmp_path_factory.mktemp("trained")
    run_training(tiny_params(epochs=1), tiny_index, train_outputs(out))
    return out / "model.safetensors"


def _with_weight(model: Path, dest: Path, value: float) -> Path:
    """A copy of ``model`` (metadata kept) with one weight set to ``value``, written past vitpipe's checks."""
    with safe_open(str(model), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = max((k for k, v in state.items() if v.is_floating_point()), key=lambda k: state[k].numel())
    state[name].view(-1)[state[name].numel() // 2] = value
    save_file(state, str(dest), metadata=meta)
    return dest


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_model_file_holding_a_non_finite_weight_is_refused_by_evaluate_predict_and_export(
        value, trained, tiny_index, tiny_data, tmp_path, monkeypatch, capsys):
    bad = _with_weight(trained, tmp_path / "model.safetensors", value)
    outputs = EvalOutputs(tmp_path / "test.json", tmp_path / "per_class.csv", tmp_path / "predictions.csv")
    with pytest.raises(VitpipeError, match=rf"^{tmp_path}/model.safetensors: weight .* holds {value}"):
        run_evaluation(tiny_params(), tiny_index, bad, outputs)
    assert not any(p.exists() for p in (outputs.metrics, outputs.per_class, outputs.predictions))

    image = next((tiny_data / "test").rglob("*.jpg"))
    monkeypatch.chdir(tmp_path)
    for argv in (["predict", str(image), "--model", str(bad)], ["export", "--format", "onnx", "--model", str(bad)]):
        capsys.readouterr()
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert str(bad) in _one_error_line(err) and "not a finite number" in err and out == "", argv
    assert not (tmp_path / "models").exists()


def _nan_for_the_second_image(real):
    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        logits = real(self, features)
        if len(logits) > 1:
            logits[1, 0] = math.inf  # softmax: NaN
        return logits
    return head_logits


def test_non_finite_logits_are_refused_by_evaluate_and_predict_naming_the_image(trained, tiny_index, tiny_data,
                                                                                  tmp_path, monkeypatch, capsys):
    """Finite weights can still give NaN or inf (an overflow under bf16 autocast, a hand-made model)."""
    monkeypatch.setattr(Predictor, "head_logits", _nan_for_the_second_image(Predictor.head_logits))
    outputs = EvalOutputs(tmp_path / "test.json", tmp_path / "per_class.csv", tmp_path / "predictions.csv")
    params = tiny_params()
    second = tiny_index.samples("test")[1].path
    with pytest.raises(VitpipeError, match=rf"gives non-finite logits \(NaN or inf\) for test image {second}"):
        run_evaluation(params, tiny_index, trained, outputs)
    assert not outputs.metrics.exists() and not outputs.predictions.exists()

    images = sorted((tiny_data / "test").rglob("*.jpg"))[:3]
    assert main(["predict", *map(str, images), "--model", str(trained)]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 0 and "nan" not in out
    line = [ln for ln in err.splitlines() if "ERROR" in ln]
    assert len(line) == 1 and str(trained) in line[0] and str(images[1]) in line[0] and "Traceback" not in err


def test_a_diverged_training_run_stops_in_one_line_and_writes_no_model(tmp_path, tiny_index, monkeypatch):
    real = FeatureEngine.train_epoch

    def diverge(self, epoch, *args, **kwargs):
        loss, accuracy = real(self, epoch, *args, **kwargs)
        return (math.nan if epoch == 1 else loss), accuracy

    monkeypatch.setattr(FeatureEngine, "train_epoch", diverge)
    outputs = train_outputs(tmp_path)
    with pytest.raises(VitpipeError, match=r"^epoch 1: the train loss is nan \(training diverged\).*train.lr"):
        run_training(tiny_params(epochs=3), tiny_index, outputs)
    assert not outputs.model.exists() and not outputs.metrics.exists()
    rows = (outputs.live / "plots" / "metrics" / "train" / "loss_smoothed.tsv")
    assert "nan" not in rows.read_text().lower() if rows.exists() else True


def test_json_and_csv_outputs_refuse_nan_and_inf_naming_the_file_and_the_value(tmp_path):
    """The last guard, under every producer's own check: JSON has no NaN (Python wrote the non-standard `NaN`)."""
    with pytest.raises(VitpipeError, match=r'test.json: \["per_class"\]\["a"\] is not a finite number'):
        write_json(tmp_path / "test.json", {"accuracy": 0.5, "per_class": {"a": math.nan}})
    with pytest.raises(VitpipeError, match=r'p.csv: \[1\]\["confidence"\] is not a finite number'):
        write_csv(tmp_path / "p.csv", [{"confidence": 0.5}, {"confidence": math.inf}], columns=["confidence"])
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "ok.json", {"absent": None, "n": 3})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"absent": None, "n": 3}
