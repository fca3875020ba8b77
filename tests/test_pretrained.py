"""End to end on real photos: the README's command trains butterflies-10 on the packaged ImageNet weights
through `dvc exp run`, and the test accuracy is one a correct pipeline reaches.

The truth is each test image's folder, read from predictions.csv's paths, not vitpipe's labels: a
class map that is shuffled or built per split labels the test images with other folders' classes,
and a pass that drops its last partial batch stops a stage or scores fewer images (each tried by
hand: docs/pretrained.md, "The test that fails when labels break"). butterflies-10's splits hold
the same ten classes, so per-split class maps would agree there: the second run drops ADONIS from
the test split, where they would not. It reuses the first run's cached features (one backbone pass
per image in all), so it costs the pipeline's overhead only. A third run on that copy sets
`evaluate.tta: true`: evaluate then scores the test images from their pixels through its own loader (the
path of a full fine-tune), not from the cached features, so a loader that drops its last partial batch
there fails too (the first two runs never use it).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from repo_copy import run as _run
from repo_copy import stages_run as _stages_run

# One float64 (exact) backbone pass over 1,301 photos: 2 min on an idle 2-core host, over 10 min on a loaded one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

README_COMMAND = ["dvc", "exp", "run", "-S", "model.name=tf_efficientnet_lite0",
                  "-S", "model.weights=package:efficientnet-lite0"]


def _scored_by_folder(work: Path) -> tuple[int, int]:
    """(test images whose top prediction is their folder's class, test images scored), from predictions.csv;
    vitpipe's label of each image must name its folder."""
    with (work / "metrics" / "predictions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    truth = [row["path"].split("/")[-2] for row in rows]
    correct = sum(row["predicted"] == t for row, t in zip(rows, truth))
    test = json.loads((work / "metrics" / "test.json").read_text())
    said = f"by folder {correct}/{len(rows)}, test.json {test['correct']}/{test['n_images']}"
    mislabelled = sum(row["actual"] != t for row, t in zip(rows, truth))
    assert not mislabelled, f"{mislabelled} test images labelled with another folder's class ({said})"
    assert correct == test["correct"] and len(rows) == test["n_images"], said
    return correct, len(rows)


def _exp_run(work: Path, env: dict[str, str], source: Path, *settings: str) -> str:
    command = [*README_COMMAND, "-S", f"data.source={source}", "-S", f"data.watch={source}", *settings]
    return _run(command, work, env, timeout=2400)


def test_butterflies_on_packaged_imagenet_weights_score_what_a_correct_pipeline_reaches(repo_copy, butterflies,
                                                                                        tmp_path):
    work, env = repo_copy
    out = _exp_run(work, env, butterflies)
    assert _stages_run(out) == ["check-params", "download", "split-check", "train", "evaluate"]
    assert "randomly initialised" not in out and "backbone weights package:efficientnet-lite0" in out
    train = json.loads((work / "metrics" / "train.json").read_text())
    assert train["weights"] == "package:efficientnet-lite0" and train["train_images"] == 1201
    correct, scored = _scored_by_folder(work)
    assert scored == 50, f"{scored} of the 50 test images scored"
    assert correct >= 45, f"{correct}/50 test images: ImageNet features reach 49/50 with a correct pipeline"

    # The test split without one class (ADONIS, the first): per-split class maps would shift every label.
    variant = tmp_path / "butterflies-10-test-without-adonis"
    shutil.copytree(butterflies, variant, ignore=lambda folder, names: ["ADONIS"] if Path(folder).name == "test" else [])
    out = _exp_run(work, env, variant)
    computed = [int(n) for n in re.findall(r"from the cache, (\d+) computed", out)]
    assert len(computed) == 3 and not any(computed), out  # the same photos: the first run's features
    correct, scored = _scored_by_folder(work)
    assert scored == 45 and correct >= 40, f"{correct}/{scored} test images without ADONIS"

    # Test-time flips: evaluate reads the test images through its DataLoader instead of the cached
    # features (the path of `train.freeze: none`), and must still score all 45 by their folders.
    out = _exp_run(work, env, variant, "-S", "evaluate.tta=true")
    assert _stages_run(out) == ["check-params", "evaluate"], out  # the same model: only evaluate reruns
    correct, scored = _scored_by_folder(work)
    assert scored == 45 and correct >= 40, f"{correct}/{scored} test images without ADONIS, with tta"
