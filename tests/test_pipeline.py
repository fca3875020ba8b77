"""End to end: all four stages through `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import history
from PIL import Image
from repo_copy import run as _run
from repo_copy import stages_run as _stages_run

from vitpipe.model.model_file import load_model

pytestmark = pytest.mark.slow

# What the pipeline writes (every file, DVCLive's included): `dvc repro --force` gives the same bytes.
METRIC_FILES = ("metrics/data.json", "metrics/data_totals.json", "metrics/train.json", "metrics/test.json",
                "metrics/per_class.csv", "metrics/per_class.json", "metrics/predictions.csv", "dvclive")


def _read_metrics(work: Path) -> dict[str, bytes]:
    paths = [p for name in METRIC_FILES for p in ([work / name] if (work / name).is_file()
                                                   else sorted((work / name).rglob("*")))]
    assert len(paths) > len(METRIC_FILES) + 4, paths  # DVCLive's folder holds one TSV per metric
    return {p.relative_to(work).as_posix(): p.read_bytes() for p in paths if p.is_file()} | {
        "dvc.lock": (work / "dvc.lock").read_bytes(), "model": (work / "models" / "model.safetensors").read_bytes()}


def test_default_pipeline_runs_offline_reproducibly_and_reruns_only_what_changed(repo_copy, tmp_path):
    work, env = repo_copy
    out = _run(["dvc", "repro"], work, env)
    assert _stages_run(out) == ["check-params", "download", "split-check", "train", "evaluate"]

    params = yaml.safe_load((work / "params.yaml").read_text())
    synthetic = params["data"]["synthetic"]
    n_test = synthetic["classes"] * synthetic["test_per_class"]
    data = json.loads((work / "metrics" / "data.json").read_text())
    assert data["accepted"] and data["n_classes"] == synthetic["classes"]
    assert data["splits"]["train"]["images"] == synthetic["classes"] * synthetic["train_per_class"]
    test = json.loads((work / "metrics" / "test.json").read_text())
    assert test["n_images"] == n_test and 0 <= test["accuracy"] <= 1
    per_class = json.loads((work / "metrics" / "per_class.json").read_text())
    assert sum(c["support"] for c in per_class) == n_test
    assert sum(c["correct"] for c in per_class) == test["correct"]
    provenance = load_model(work / "models" / "model.safetensors")[1].provenance
    assert provenance["pretrained"] is False and provenance["model"] == "deit_tiny_patch16_224"
    with (work / "metrics" / "predictions.csv").open() as f:
        assert len(list(csv.DictReader(f))) == n_test
    assert (work / "models" / "model.safetensors").is_file()

    again = _run(["dvc", "repro"], work, env)
    assert _stages_run(again) == [] and "up to date" in again

    first = _read_metrics(work)
    env_cold = {**env, "VITPIPE_CACHE_DIR": str(tmp_path / "another-cache")}  # features computed anew
    _run(["dvc", "repro", "--force"], work, env_cold)
    assert _read_metrics(work) == first

    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "baseline metrics"], work, env)
    exp = _run(["dvc", "exp", "run", "-S", "train.lr=5e-4"], work, env)
    assert _stages_run(exp) == ["check-params", "train", "evaluate"]  # check-params: any params change
    params_diff = _run(["dvc", "params", "diff"], work, env)
    assert "train.lr" in params_diff and "0.0005" in params_diff
    metrics_diff = _run(["dvc", "metrics", "diff", "--all"], work, env)
    assert "metrics/test.json" in metrics_diff and "accuracy" in metrics_diff


def _tiny(work: Path) -> None:
    """A pipeline of seconds: 2 synthetic classes of 32 px, test_vit, one epoch."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["synthetic"].update(classes=2, train_per_class=6, valid_per_class=2, test_per_class=2,
                                       image_size=32)
    params["model"].update(name="test_vit", img_size=32, head_hidden=8)
    params["train"].update(epochs=1, num_workers=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_plain_dvc_repro_refuses_a_misspelt_section_and_stays_a_no_op_otherwise(repo_copy):
    """Issue 10, item 7: `trian:` is read by no stage, so only check-params (all of params.yaml) sees it."""
    work, env = repo_copy
    _tiny(work)
    _run(["dvc", "repro"], work, env)
    assert _stages_run(_run(["dvc", "repro"], work, env)) == []
    good = (work / "params.yaml").read_text()
    (work / "params.yaml").write_text(good + "trian:\n  lr: 0.1\n")
    proc = subprocess.run(["dvc", "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0  # DVC exits 255 when a stage exits 2
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "unknown section 'trian'" in errors[0]
    assert _stages_run(proc.stdout + proc.stderr) == ["check-params"]
    (work / "params.yaml").write_text(good)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "tiny"], work, env)
    exp = _run(["dvc", "exp", "run", "-S", "train.lr=5e-4"], work, env)
    assert _stages_run(exp) == ["check-params", "train", "evaluate"]


def test_pipeline_on_real_butterflies_as_a_local_source(repo_copy, butterflies):
    work, env = repo_copy
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["source"] = params["data"]["watch"] = str(butterflies)
    params["model"].update(name="test_vit", img_size=64, head_hidden=64)
    params["train"].update(epochs=3, num_workers=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], work, env)

    data = json.loads((work / "metrics" / "data.json").read_text())
    assert {s: data["splits"][s]["images"] for s in ("train", "valid", "test")} == {
        "train": 1201, "valid": 50, "test": 50}
    assert data["n_classes"] == 10 and "MONARCH" in data["classes"]
    test = json.loads((work / "metrics" / "test.json").read_text())
    per_class = json.loads((work / "metrics" / "per_class.json").read_text())
    assert test["n_images"] == 50 and sum(c["support"] for c in per_class) == 50
    assert [c["class"] for c in per_class] == data["classes"]
    assert [row["epoch"] for row in history(work)] == [0, 1, 2]


def _photos(root: Path, classes: dict[str, range]) -> Path:
    """Small noise PNGs ``root/<class>/<i>.png``, unique per (class, i): a user's own photo folder."""
    for k, (name, numbers) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in numbers:
            pixels = np.random.default_rng([k, i]).integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def _splits_of(raw: Path) -> dict[str, str]:
    return {f"{p.parent.name}/{p.name}": p.parent.parent.name for p in raw.glob("*/*/*")}


def test_a_changed_local_folder_reruns_the_pipeline_through_plain_dvc_repro(repo_copy, tmp_path):
    """The README's "Using your own images" commands, as written, and what DVC then notices."""
    work, env = repo_copy
    photos = _photos(tmp_path / "my-photos", {"ADONIS": range(30), "MONARCH": range(15)})
    tiny = ["-S", "model.name=test_vit", "-S", "model.img_size=32", "-S", "model.head_hidden=16",
            "-S", "train.epochs=1", "-S", "train.num_workers=0", "-S", "data.val_fraction=0.2",
            "-S", "data.test_fraction=0.2"]
    out = _run(["dvc", "exp", "run", "-S", f"data.source={photos}", "-S", f"data.watch={photos}", *tiny], work, env)
    assert _stages_run(out) == ["check-params", "download", "split-check", "train", "evaluate"]
    assert "Data and pipelines are up to date" in _run(["dvc", "status", "dvc.yaml"], work, env)
    before = _splits_of(work / "data" / "raw")
    assert set(before.values()) == {"train", "valid", "test"}

    _photos(photos, {"ADONIS": range(30, 35), "MONARCH": range(15, 20)})  # ten new photos, 016-020 among them
    status = _run(["dvc", "status", "dvc.yaml"], work, env)
    assert "download:" in status and "modified:" in status and str(photos) in status
    out = _run(["dvc", "repro"], work, env)
    assert _stages_run(out) == ["download", "split-check", "train", "evaluate"]
    after = _splits_of(work / "data" / "raw")
    assert len(after) == len(before) + 10 and {k: after[k] for k in before} == before  # nothing moved
    assert _stages_run(_run(["dvc", "repro"], work, env)) == []

    forgot = subprocess.run(["dvc", "exp", "run", "-S", "data.watch=src/vitpipe/download/synthetic.py"], cwd=work,
                            env=env, capture_output=True, text=True, timeout=900)
    assert forgot.returncode != 0 and "so DVC would not notice when its images change" in forgot.stderr + forgot.stdout
