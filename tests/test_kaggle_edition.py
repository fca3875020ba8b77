"""End to end: the tutorial's Kaggle dataset as published today, from refused to trained with one `-S` param.

kagglehub is replaced at its boundary (``kagglehub.dataset_download``, as tests/download/test_sources.py
does) inside the download stage's own process, through a ``sitecustomize`` on PYTHONPATH. It delivers
a small copy of the 100-species edition's defects with real photos from butterflies-10: ``POLYGONIA``
in train is ``QUESTION MARK`` in valid and test, valid has no ``GREAT EGGFLY`` or ``SOUTHERN DOGFACE``,
and a CSV and a model file lie beside the splits.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BUTTERFLIES
from repo_copy import run as _run
from repo_copy import stages_run as _stages_run

pytestmark = pytest.mark.slow

# class in the edition -> (butterflies-10 species whose photos stand in for it, folder names per split)
EDITION = {
    "ADONIS": ("ADONIS", {"train": "ADONIS", "valid": "ADONIS", "test": "ADONIS"}),
    "MONARCH": ("MONARCH", {"train": "MONARCH", "valid": "MONARCH", "test": "MONARCH"}),
    "POLYGONIA": ("ORANGE OAKLEAF", {"train": "POLYGONIA", "valid": "QUESTION MARK", "test": "QUESTION MARK"}),
    "GREAT EGGFLY": ("BANDED PEACOCK", {"train": "GREAT EGGFLY", "test": "GREAT EGGFLY"}),
    "SOUTHERN DOGFACE": ("CABBAGE WHITE", {"train": "SOUTHERN DOGFACE", "test": "SOUTHERN DOGFACE"}),
}
COUNTS = {"train": 8, "valid": 2, "test": 2}

SITECUSTOMIZE = '''
import os, sys
if sys.argv and sys.argv[0].endswith("download.py"):  # the download stage only
    import kagglehub

    def dataset_download(handle, *args, **kwargs):
        with open(os.environ["VITPIPE_TEST_KAGGLE_LOG"], "a") as log:
            log.write(handle + "\\n")
        return os.environ["VITPIPE_TEST_KAGGLE_DIR"]

    kagglehub.dataset_download = dataset_download
'''


def _kaggle_cache(root: Path) -> Path:
    """kagglehub's copy of the edition: train/, valid/, test/ beside a CSV, from real photos."""
    for species, folders in EDITION.values():
        for split, folder in folders.items():
            source = BUTTERFLIES / split / species
            photos = sorted(source.glob("*.jpg"))[:COUNTS[split]]
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for p in photos:
                (root / split / folder / p.name).write_bytes(p.read_bytes())
    (root / "butterflies and moths.csv").write_text("class id,filepaths,labels,data set\n")
    (root / "EfficientNetB0-100-(224 X 224)- 97.59.h5").write_bytes(b"not used")
    return root


def _run_failing(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0, f"{' '.join(args)} should have failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_the_current_kaggle_edition_goes_from_refused_to_trained_with_one_param(repo_copy, tmp_path):  # noqa: F811
    if not BUTTERFLIES.is_dir():
        pytest.skip(f"{BUTTERFLIES} not present")
    work, env = repo_copy
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "kaggle-calls.txt"
    env = {**env, "PYTHONPATH": os.pathsep.join([str(stub), env.get("PYTHONPATH", "")]),
           "VITPIPE_TEST_KAGGLE_DIR": str(_kaggle_cache(tmp_path / "kaggle")), "VITPIPE_TEST_KAGGLE_LOG": str(log)}
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["source"] = "kaggle:gpiosenka/butterfly-images40-species"
    params["model"].update(name="test_vit", img_size=32, head_hidden=16)
    params["train"].update(epochs=2, batch_size=16, num_workers=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-qam", "the tutorial's Kaggle source"], work, env)

    refused = _run_failing(["dvc", "repro"], work, env)
    assert _stages_run(refused) == ["check-params", "download", "split-check"]
    error = next(line for line in refused.splitlines() if "refused" in line)
    assert "valid/QUESTION MARK: class not in train/" in error
    assert "train classes with no folder in valid/ and test/: POLYGONIA" in error
    assert "`dvc exp run -S 'data.drop_classes=[QUESTION MARK]'`" in error
    line = re.search(r"`(dvc exp run -S '\+\+data\.class_aliases=[^`]*)`", error).group(1)
    assert line == "dvc exp run -S '++data.class_aliases={QUESTION MARK: TRAIN_CLASS}'"  # vitpipe never picks

    # The user says which train class the folder holds, and runs the printed line.
    exp = _run(shlex.split(line.replace("TRAIN_CLASS", "POLYGONIA")), work, env)
    assert _stages_run(exp) == ["check-params", "split-check", "train", "evaluate"]  # download is not rerun
    assert log.read_text().splitlines() == ["gpiosenka/butterfly-images40-species"]

    data = json.loads((work / "metrics" / "data.json").read_text())
    assert data["accepted"] and data["class_aliases"] == {"QUESTION MARK": "POLYGONIA"}
    assert data["classes"] == sorted(EDITION)
    assert data["missing_classes"] == {"valid": ["GREAT EGGFLY", "SOUTHERN DOGFACE"]}  # trained, not validated
    assert {s: data["splits"][s]["images"] for s in COUNTS} == {"train": 40, "valid": 6, "test": 10}
    assert data["splits"]["valid"]["classes"]["POLYGONIA"] == 2
    index = json.loads((work / "data" / "index.json").read_text())
    assert index["class_aliases"] == {"QUESTION MARK": "POLYGONIA"}
    assert {p: label for p, label, _ in index["splits"]["test"] if "QUESTION" in p} == {
        p: data["classes"].index("POLYGONIA") for p, _, _ in index["splits"]["test"] if "QUESTION" in p}
    test = json.loads((work / "metrics" / "test.json").read_text())
    per_class = {row["class"]: row for row in json.loads((work / "metrics" / "per_class.json").read_text())}
    assert test["n_images"] == 10 and set(per_class) == set(EDITION)
    assert per_class["POLYGONIA"]["support"] == 2
    train = json.loads((work / "metrics" / "train.json").read_text())
    assert train["train_images"] == 40 and train["val_images"] == 6

    # The report's gallery of the most confidently wrong test images (a random-init model errs).
    _run(["vitpipe", "report", "--base", "HEAD", "--out", "report.md"], work, env)
    report = (work / "report.md").read_text()
    with (work / "metrics" / "predictions.csv").open() as f:
        wrong = sum(row["actual"] != row["predicted"] for row in csv.DictReader(f))
    if wrong:
        assert "![Most confidently wrong test images](report/top_losses.png)" in report
        assert (work / "report" / "top_losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
