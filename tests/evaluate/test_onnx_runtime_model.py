"""A head trained on onnxruntime features is scored the same way: the card says so, evaluate reads the
test features through that runtime, and ``vitpipe predict`` gives exactly evaluate's probabilities."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import live_files, tiny_params
from repo_copy import run as _run

from vitpipe.cli import main
from vitpipe.errors import VitpipeError
from vitpipe.evaluate import inference
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.evaluate.predict import predict_paths
from vitpipe.model.model_file import ModelCard, load_model
from vitpipe.train.training import TrainOutputs, run_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_index) -> Path:
    """test_vit's head trained on int8 onnxruntime features, then evaluated; its own cache folder."""
    work = tmp_path_factory.mktemp("ort-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITPIPE_CACHE_DIR", str(work / "cache"))
        params = tiny_params(feature_runtime="onnxruntime", precision="int8", epochs=2)
        run_training(params, tiny_index, TrainOutputs(model=work / "model.safetensors", metrics=work / "train.json",
                                                      live=work / "dvclive", checkpoints=work / "ck"))
        run_evaluation(params, tiny_index, work / "model.safetensors",
                       EvalOutputs(work / "test.json", work / "per_class.csv", work / "predictions.csv"))
    return work


def test_the_card_and_its_provenance_record_the_runtime(trained):
    _, card = load_model(trained / "model.safetensors")
    assert (card.feature_runtime, card.precision, card.feature_dtype) == ("onnxruntime", "int8", "bfloat16")
    provenance = card.provenance
    assert (provenance["feature_runtime"], provenance["precision"], provenance["engine"]) == (
        "onnxruntime", "int8", "feature-cache")


def test_predict_gives_evaluates_probabilities(trained, tiny_index):
    with (trained / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    files = [tiny_index.root / row["path"] for row in rows]
    results = list(predict_paths(files, trained / "model.safetensors", top_k=5, batch_size=5, device="cpu"))
    for row, result in zip(rows, results):
        assert result.top[0][0] == row["predicted"]
        assert [c for c, _ in result.top] == json.loads(row["top5"])[:len(result.top)]
        assert result.top[0][1] == pytest.approx(float(row["confidence"]), abs=1e-6)  # the CSV's 6 digits


def test_an_old_card_without_the_runtime_reads_as_torch(trained):
    _, card = load_model(trained / "model.safetensors")
    raw = json.loads(card.to_metadata()["vitpipe"])
    del raw["feature_runtime"]
    old = ModelCard.from_metadata({"vitpipe": json.dumps(raw)}, Path("old.safetensors"))
    assert old.feature_runtime == "torch"


def test_a_gpu_is_refused_and_auto_falls_back_to_the_cpu(trained, tiny_index, monkeypatch, capsys):
    monkeypatch.setattr(inference, "resolve_device", lambda spec: torch.device("cuda"))
    assert inference.load_predictor(trained / "model.safetensors", device="auto", tta=False).device.type == "cpu"
    with pytest.raises(VitpipeError, match="trained on onnxruntime features.*use train.device cpu or auto"):
        inference.load_predictor(trained / "model.safetensors", device="cuda", tta=False)
    image = tiny_index.root / tiny_index.samples("test")[0].path
    assert main(["predict", str(image), "--model", str(trained / "model.safetensors"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "use --device cpu or auto" in err and "Traceback" not in err


def test_exporting_an_int8_trained_model_says_the_graph_is_fp32(trained, tmp_path, capsys):
    assert main(["export", "--model", str(trained / "model.safetensors"), "--format", "onnx",
                 "--out", str(tmp_path / "onnx")]) == 0
    assert "trained on onnxruntime int8 features; the exported model computes them in fp32" in capsys.readouterr().err


@pytest.mark.slow
def test_dvc_repro_with_int8_reproduces_its_metrics_and_predict_agrees(repo_copy, tmp_path):  # noqa: F811
    work, env = repo_copy
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["synthetic"].update(classes=3, train_per_class=8, valid_per_class=3, test_per_class=3,
                                       image_size=32)
    params["model"].update(name="test_vit", img_size=32, head_hidden=8)
    params["train"].update(epochs=2, feature_runtime="onnxruntime", precision="int8")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], work, env)
    files = ("train.json", "test.json", "per_class.csv", "predictions.csv")
    first = {name: (work / "metrics" / name).read_bytes() for name in files}, live_files(work)
    assert load_model(work / "models" / "model.safetensors")[1].feature_runtime == "onnxruntime"
    cold = {**env, "VITPIPE_CACHE_DIR": str(tmp_path / "another-cache")}  # exported and computed anew
    _run(["dvc", "repro", "--force"], work, cold)
    assert ({name: (work / "metrics" / name).read_bytes() for name in files}, live_files(work)) == first

    printed = _run(["vitpipe", "predict", "data/raw/test", "--json", "--top-k", "1"], work, cold)
    doc = json.loads(printed[printed.index("{"):printed.rindex("}") + 1])
    with (work / "metrics" / "predictions.csv").open() as f:
        evaluate = {row["path"]: row for row in csv.DictReader(f)}
    assert len(doc["results"]) == len(evaluate) == 9
    for result in doc["results"]:
        row, (top,) = evaluate[result["path"].removeprefix("data/raw/")], result["predictions"]
        assert top["class"] == row["predicted"] and top["probability"] == pytest.approx(float(row["confidence"]),
                                                                                          abs=1e-6)
