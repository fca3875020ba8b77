"""The report's gallery of the most confidently wrong test images (vitpipe.report.gallery, plots.top_losses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import BUTTERFLIES
from PIL import Image

from vitpipe.data.index import DatasetIndex, Sample
from vitpipe.report import gallery
from vitpipe.report.gallery import gallery_images, worst_predictions
from vitpipe.report.report import write_report

DVC = str(Path(sys.executable).with_name("dvc"))
SPECIES = ("MONARCH", "ADONIS", "PAPER KITE")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True,
                   capture_output=True)


def _predictions(n_wrong: int) -> pd.DataFrame:
    """15 test images (5 per species); the first ``n_wrong`` are wrong, with rising confidence."""
    rows = []
    for i in range(15):
        actual = SPECIES[i % 3]
        wrong = i < n_wrong
        rows.append({"path": f"test/{actual}/{i // 3 + 1}.jpg", "actual": actual,
                     "predicted": SPECIES[(i + 1) % 3] if wrong else actual,
                     "confidence": round(0.3 + 0.04 * i, 2), "top5": actual})
    return pd.DataFrame(rows)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A git + DVC repo with metrics, data/index.json and the test images (real photos) in data/raw."""
    if not BUTTERFLIES.is_dir():
        pytest.skip(f"{BUTTERFLIES} not present")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True, capture_output=True)
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/test.json\n")
    (repo / "metrics").mkdir()
    (repo / "metrics" / "test.json").write_text('{"accuracy": 0.5}\n')
    pd.DataFrame([{"class": c, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "correct": 2,
                   "support": 5} for c in SPECIES]).to_csv(repo / "metrics" / "per_class.csv", index=False)
    samples = []
    for name in SPECIES:
        (repo / "data" / "raw" / "test" / name).mkdir(parents=True)
        for k in range(1, 6):
            (repo / "data" / "raw" / "test" / name / f"{k}.jpg").write_bytes(
                (BUTTERFLIES / "test" / name / f"{k}.jpg").read_bytes())
            samples.append(Sample(f"test/{name}/{k}.jpg", SPECIES.index(name), "0" * 64))
    splits = {"train": (), "valid": (), "test": tuple(samples)}
    DatasetIndex(root=Path("data/raw"), classes=SPECIES, splits=splits).save(repo / "data/index.json")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    return repo


def _report(repo: Path, predictions: pd.DataFrame) -> tuple[str, Path]:
    predictions.to_csv(repo / "metrics" / "predictions.csv", index=False)
    out = repo / "report.md"
    write_report("HEAD", out, repo=repo)
    return out.read_text(), repo / "report"


def test_the_gallery_shows_the_most_confidently_wrong_images_worst_first(repo):
    text, plots = _report(repo, _predictions(n_wrong=14))
    assert "## Most confidently wrong test images" in text
    assert "![Most confidently wrong test images](report/top_losses.png)" in text
    png = Image.open(plots / "top_losses.png")
    assert png.format == "PNG" and png.width > 800 and png.height > 900  # 4 columns, 3 rows of thumbnails
    section = text.split("## Most confidently wrong test images", 1)[1].split("##", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| test/")]
    assert len(rows) == 12  # the 12 most confident of 14 wrong
    assert rows[0] == "| test/ADONIS/5.jpg | ADONIS | PAPER KITE | 0.820 |"  # image 13, the most confident wrong
    confidences = [float(r.split("|")[4]) for r in rows]
    assert confidences == sorted(confidences, reverse=True) and min(confidences) > 0.35


def test_thumbnails_come_from_the_dataset_index_and_a_path_outside_it_is_never_read(repo, monkeypatch):
    rows = pd.DataFrame({"path": ["test/MONARCH/1.jpg", "test/MONARCH/99.jpg", "../../outside.jpg"]})
    (repo.parent / "outside.jpg").write_bytes((BUTTERFLIES / "test" / "MONARCH" / "1.jpg").read_bytes())
    read = []
    real = gallery.load_rgb
    monkeypatch.setattr(gallery, "load_rgb", lambda path: read.append(Path(path)) or real(path))
    images = gallery_images(repo, "data/index.json", rows)
    assert images[0] is not None and max(images[0].size) <= gallery.THUMBNAIL
    assert images[1] is None and images[2] is None
    assert all(p.is_relative_to((repo / "data" / "raw").resolve()) for p in read)


def test_without_the_index_the_report_still_lists_the_mistakes(repo):
    (repo / "data" / "index.json").unlink()
    text, plots = _report(repo, _predictions(n_wrong=3))
    assert "(No gallery: data/index.json is not here to find the images; run `dvc repro`.)" in text
    assert not (plots / "top_losses.png").exists()
    assert text.count("| test/") >= 3


def test_no_mistake_no_gallery(repo):
    text, plots = _report(repo, _predictions(n_wrong=0))
    assert "No test image is misclassified." in text and not (plots / "top_losses.png").exists()


def test_worst_predictions_ties_go_by_path():
    frame = pd.DataFrame({"path": ["b", "a", "c", "d"], "actual": ["X", "X", "X", "Y"],
                          "predicted": ["Y", "Y", "X", "X"], "confidence": [0.9, 0.9, 0.99, 0.5]})
    assert list(worst_predictions(frame, 5)["path"]) == ["a", "b", "d"]
