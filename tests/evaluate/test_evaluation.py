"""The evaluate stage: every test image scored, metrics checked against hand-computed values."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from conftest import tiny_params, train_outputs

from vitpipe.errors import VitpipeError
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation, score
from vitpipe.evaluate.inference import load_predictor
from vitpipe.model.features import Extractor, FeatureCache
from vitpipe.model.transforms import build_eval_transform
from vitpipe.params import EvaluateParams
from vitpipe.train.training import run_training


def test_score_matches_a_hand_checked_toy_case():
    # 6 images, 6 classes (so top-5 is not trivially 1). Rows: probabilities; labels below.
    classes = tuple("abcdef")
    probs = np.array([
        [0.50, 0.20, 0.10, 0.10, 0.05, 0.05],  # label a: correct
        [0.10, 0.60, 0.10, 0.10, 0.05, 0.05],  # label a: predicted b, a is 2nd -> in top-5
        [0.05, 0.70, 0.10, 0.05, 0.05, 0.05],  # label b: correct
        [0.40, 0.30, 0.10, 0.10, 0.06, 0.04],  # label c: predicted a, c in top-5
        [0.30, 0.25, 0.20, 0.15, 0.09, 0.01],  # label f: predicted a, f is last -> NOT in top-5
        [0.10, 0.10, 0.10, 0.10, 0.10, 0.50],  # label f: correct
    ])
    labels = np.array([0, 0, 1, 2, 5, 5])
    metrics, rows = score(probs, labels, classes)
    assert metrics["n_images"] == 6 and metrics["correct"] == 3 and metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["top5_accuracy"] == pytest.approx(5 / 6)
    # per class (precision, recall): a (1/3, 1/2), b (1/2, 1), c (0, 0), d, e absent, f (1, 1/2)
    # f1: a 0.4, b 2/3, c 0, f 2/3 -> macro over the 4 classes that have test images
    assert metrics["macro_f1"] == pytest.approx((0.4 + 2 / 3 + 0 + 2 / 3) / 4)
    assert metrics["absent_classes"] == ["d", "e"]
    expected_loss = -np.mean(np.log([0.50, 0.10, 0.70, 0.10, 0.01, 0.50]))
    assert metrics["loss"] == pytest.approx(expected_loss)
    a = metrics["per_class"]["a"]
    assert (a["precision"], a["recall"], a["support"], a["correct"]) == (pytest.approx(1 / 3), 0.5, 2, 1)
    d = metrics["per_class"]["d"]
    assert (d["support"], d["correct"], d["accuracy"], d["precision"], d["recall"], d["f1"]) == (0, 0, None, None,
                                                                                                None, None)
    assert sum(r["support"] for r in rows) == 6 and sum(r["correct"] for r in rows) == metrics["correct"]


def test_evaluate_scores_every_test_image_and_writes_consistent_files(tmp_path, tiny_index):
    params = tiny_params(epochs=1)
    train_out = train_outputs(tmp_path)
    run_training(params, tiny_index, train_out)
    outputs = EvalOutputs(tmp_path / "test.json", tmp_path / "per_class.csv", tmp_path / "predictions.csv",
                          tmp_path / "per_class.json")
    metrics = run_evaluation(params, tiny_index, train_out.model, outputs)
    n_test = len(tiny_index.samples("test"))
    assert metrics["n_images"] == n_test == 12  # not a multiple of any batch size below
    predictions = list(csv.DictReader(outputs.predictions.open()))
    assert [p["path"] for p in predictions] == [s.path for s in tiny_index.samples("test")]
    assert sum(p["actual"] == p["predicted"] for p in predictions) == metrics["correct"]
    assert all(len(json.loads(p["top5"])) == 3 for p in predictions)  # 3 classes
    per_class = list(csv.DictReader(outputs.per_class.open()))
    assert [r["class"] for r in per_class] == list(tiny_index.classes)
    assert sum(int(r["support"]) for r in per_class) == n_test
    # test.json: the headline alone (DVC metrics); per class in the CSV and per_class.json (not metrics)
    headline = json.loads(outputs.metrics.read_text())
    assert list(headline) == ["accuracy", "correct", "n_images", "loss", "top5_accuracy", "macro_f1"]
    assert all(headline[k] == pytest.approx(metrics[k], abs=1e-6) for k in headline)
    rows = json.loads(outputs.per_class_json.read_text())  # per_class.csv's rows, a DVC plot
    assert [r["class"] for r in rows] == list(tiny_index.classes) and list(rows[0]) == list(per_class[0])
    assert sum(r["support"] for r in rows) == n_test == metrics["n_images"]

    # The image path (test-time augmentation) scores the same images and writes the same shapes.
    with_tta = dataclasses.replace(params, evaluate=EvaluateParams(batch_size=5, tta=True))
    tta = run_evaluation(with_tta, tiny_index, train_out.model, outputs)
    assert tta["n_images"] == n_test and tta["tta"] is True


def test_model_trained_on_other_classes_is_refused(tmp_path, tiny_index):
    params = tiny_params(epochs=1)
    train_out = train_outputs(tmp_path)
    run_training(params, tiny_index, train_out)
    renamed = dataclasses.replace(tiny_index, classes=("x", "y", "z"))
    with pytest.raises(VitpipeError, match="rerun the train stage"):
        run_evaluation(params, renamed, train_out.model,
                       EvalOutputs(tmp_path / "t.json", tmp_path / "p.csv", tmp_path / "q.csv"))


def test_top5_column_is_unambiguous_whatever_the_class_names(tmp_path, tiny_index):
    """A class name may hold '|', ',' or quotes; top5 is a JSON list (issue 10, item 8)."""
    names = ("A|B", "A", 'B, "b"')
    index = dataclasses.replace(tiny_index, classes=names)
    params = tiny_params(epochs=1)
    train_out = train_outputs(tmp_path)
    run_training(params, index, train_out)
    outputs = EvalOutputs(tmp_path / "test.json", tmp_path / "per_class.csv", tmp_path / "predictions.csv")
    run_evaluation(params, index, train_out.model, outputs)
    for row in csv.DictReader(outputs.predictions.open()):
        top = json.loads(row["top5"])
        assert sorted(top) == sorted(names) and top[0] == row["predicted"]


def test_evaluate_reads_view_0_test_features_from_the_train_stage_s_cache(tmp_path, tiny_index):
    params = tiny_params(epochs=1)
    train_out = train_outputs(tmp_path)
    trained = FeatureCache(tmp_path / "cache")
    run_training(params, tiny_index, train_out, cache=trained)
    outputs = EvalOutputs(tmp_path / "test.json", tmp_path / "per_class.csv", tmp_path / "predictions.csv")
    first = FeatureCache(tmp_path / "cache")
    run_evaluation(params, tiny_index, train_out.model, outputs, cache=first)
    n_test = len(tiny_index.samples("test"))
    assert (first.computed, first.reused) == (n_test, 0)
    written = outputs.predictions.read_bytes()
    again = FeatureCache(tmp_path / "cache")  # e.g. the next `dvc exp run -S train.lr=...`
    run_evaluation(params, tiny_index, train_out.model, outputs, cache=again)
    assert (again.computed, again.reused) == (0, n_test) and outputs.predictions.read_bytes() == written
    # The saved model's backbone keys the same entries as the train stage's: valid's view 0 is there.
    valid = FeatureCache(tmp_path / "cache")
    predictor = load_predictor(train_out.model, device="cpu", tta=False)
    extractor = Extractor.for_backbone(predictor.model.backbone, predictor.device, predictor.card.precision,
                                       num_workers=0)
    valid.features(extractor, tiny_index.root, tiny_index.samples("valid"), view_seed=None, desc="valid view 0",
                   transform=build_eval_transform(predictor.card.eval_transform))
    assert valid.computed == 0


def test_a_class_without_test_images_is_absent_not_zero():
    """A perfect classifier on the 2 classes that have test images: macro-F1 1.0, not 0.667."""
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    metrics, rows = score(probs, np.array([0, 1, 1]), ("a", "b", "c"))
    assert metrics["macro_f1"] == 1.0 and metrics["accuracy"] == 1.0 and metrics["top5_accuracy"] == 1.0
    assert metrics["absent_classes"] == ["c"]
    assert rows[2] == {"class": "c", "accuracy": None, "precision": None, "recall": None, "f1": None,
                       "correct": 0, "support": 0}


def test_evaluate_reports_a_class_missing_from_test_as_absent(tmp_path, tiny_index, caplog):
    params = tiny_params(epochs=1)
    train_out = train_outputs(tmp_path)
    run_training(params, tiny_index, train_out)
    gone = tiny_index.classes[1]
    test = tuple(s for s in tiny_index.samples("test") if s.label != 1)
    index = dataclasses.replace(tiny_index, splits={**tiny_index.splits, "test": test})
    outputs = EvalOutputs(tmp_path / "test.json", tmp_path / "per_class.csv", tmp_path / "predictions.csv",
                          tmp_path / "per_class.json")
    metrics = run_evaluation(params, index, train_out.model, outputs)
    assert "1 class(es) have no test image" in caplog.text and gone in caplog.text
    assert json.loads(outputs.metrics.read_text())["n_images"] == len(test) == metrics["n_images"]
    saved = {r["class"]: r for r in json.loads(outputs.per_class_json.read_text())}
    assert saved[gone] == {"class": gone, "accuracy": None, "precision": None, "recall": None, "f1": None,
                           "correct": 0, "support": 0}
    row = next(r for r in csv.DictReader(outputs.per_class.open()) if r["class"] == gone)
    assert (row["accuracy"], row["precision"], row["recall"], row["f1"], row["support"]) == ("", "", "", "", "0")
