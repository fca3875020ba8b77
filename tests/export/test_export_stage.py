"""The optional export stage (export/dvc.yaml, its own DVC project): off the default path, reproducible, and its ONNX file,
through `vitpipe predict`, scores the real test photos like the PyTorch model."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from repo_copy import run as _run
from repo_copy import stages_run as _stages_run

from vitpipe.data.images import load_rgb
from vitpipe.export.onnx_file import ExportedLogits
from vitpipe.model.model_file import load_model
from vitpipe.model.transforms import build_eval_transform

pytestmark = pytest.mark.slow


def _subset(butterflies: Path, dest: Path, per_class: int = 20) -> Path:
    """All 50 real test photos, all valid photos, and ``per_class`` train photos of each class (a quicker train)."""
    for split in ("train", "valid", "test"):
        for folder in sorted(p for p in (butterflies / split).iterdir() if p.is_dir()):
            photos = sorted(folder.glob("*.jpg"))
            for photo in photos[:per_class] if split == "train" else photos:
                target = dest / split / folder.name / photo.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo, target)
    return dest


def test_export_stage_runs_only_when_asked_and_scores_real_photos_like_pytorch(repo_copy, butterflies,  # noqa: F811
                                                                                    tmp_path):
    work, env = repo_copy
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["source"] = params["data"]["watch"] = str(_subset(butterflies, tmp_path / "photos"))
    params["model"].update(name="test_vit", img_size=64, head_hidden=64)
    params["train"].update(epochs=3, num_workers=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    assert _stages_run(_run(["dvc", "repro"], work, env)) == ["check-params", "download", "split-check", "train",
                                                              "evaluate"]
    out = _run(["dvc", "--cd", "export", "repro"], work, env)  # export/ is a DVC project of its own
    assert _stages_run(out) == ["export"]
    onnx_file = work / "models" / "onnx" / "model.onnx"
    first = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert _stages_run(_run(["dvc", "--cd", "export", "repro"], work, env)) == []

    # vitpipe predict on the exported file, against the PyTorch model in fp32 (the graph's own math)
    printed = _run(["vitpipe", "predict", "data/raw/test", "--model", str(onnx_file), "--json", "--top-k", "100"],
                   work, env)
    doc = json.loads(printed[printed.index("{"):printed.rindex("}") + 1])
    assert len(doc["results"]) == 50 and doc["errors"] == []
    model, card = load_model(work / "models" / "model.safetensors")
    transform = build_eval_transform(card.eval_transform)
    images = torch.stack([transform(load_rgb(work / r["path"])) for r in doc["results"]])  # (50, 3, 64, 64)
    with torch.no_grad():
        fp32 = ExportedLogits(model, round_features=True)(images).softmax(-1)
    index = {name: i for i, name in enumerate(card.classes)}
    onnx = torch.tensor([[0.0] * len(index)] * 50)
    for row, result in enumerate(doc["results"]):
        for p in result["predictions"]:
            onnx[row, index[p["class"]]] = p["probability"]
    assert torch.equal(onnx.argmax(1), fp32.argmax(1))
    assert (onnx - fp32).abs().max() < 1e-3

    # ... and against evaluate (PyTorch, bf16 autocast): reported, not asserted (near-ties may flip, see README)
    with (work / "metrics" / "predictions.csv").open() as f:
        evaluate = {row["path"]: row for row in csv.DictReader(f)}
    rows = [(evaluate[r["path"].removeprefix("data/raw/")], r["predictions"]) for r in doc["results"]]
    same = sum(row["predicted"] == preds[0]["class"] for row, preds in rows)
    worst = max(abs(float(row["confidence"]) - next(p["probability"] for p in preds if p["class"] == row["predicted"]))
                for row, preds in rows)
    print(f"onnxruntime vs PyTorch fp32: top-1 50/50, max |dprob| {(onnx - fp32).abs().max():.1e}; "
          f"vs evaluate's bf16 predictions: top-1 {same}/50, max |dconfidence| {worst:.1e}")

    _run(["dvc", "--cd", "export", "repro", "--force"], work, env)
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == first  # the same bytes: safe to cache
