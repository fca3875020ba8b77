"""check-data and the download stage accept the same layouts and carve the same way (one code path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitpipe.check.datacheck import check_dataset
from vitpipe.cli import main
from vitpipe.download.sources import fetch
from vitpipe.errors import VitpipeError
from vitpipe.params import DataParams

DATA = DataParams(min_class_images=2, val_fraction=0.2, test_fraction=0.2)

# Each layout download accepts: {folder: images}. Class folders hold 12 images so carving has work to do.
LAYOUTS = {
    "splits": {"train/A": 12, "train/B": 12, "valid/A": 2, "valid/B": 2, "test/A": 2, "test/B": 2},
    "splits-nested-beside-a-csv": {"butterflies/train/A": 12, "butterflies/train/B": 12,
                                   "butterflies/valid/A": 2, "butterflies/valid/B": 2,
                                   "butterflies/test/A": 2, "butterflies/test/B": 2},
    "split-aliases": {"Train/A": 12, "Train/B": 12, "Validation/A": 2, "Validation/B": 2,
                      "TESTING/A": 2, "TESTING/B": 2},
    "class-folders-at-the-top": {"A": 12, "B": 12},
    "class-folders-in-a-wrapping-folder": {"my photos/A": 12, "my photos/B": 12},
    "train-and-valid-only": {"train/A": 12, "train/B": 12, "val/A": 2, "val/B": 2},
    "train-only": {"train/A": 12, "train/B": 12},
}


def _source(root: Path, layout: dict[str, int]) -> Path:
    seed = 0
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            seed += 1
            pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i:03d}.png")
    if "butterflies/train/A" in layout:
        (root / "butterflies" / "50 species.csv").write_text("filepaths,labels\n")
    return root


def _contents(result) -> dict[str, set[tuple[str, str]]]:
    """split -> {(class, content hash)}: what each split holds, whatever the folders are called."""
    return {split: {(result.index.classes[s.label], s.sha256) for s in result.index.samples(split)}
            for split in ("train", "valid", "test")}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_check_data_on_a_source_reports_what_download_then_split_check_see(tmp_path, name):
    source = _source(tmp_path / "source", LAYOUTS[name])
    fetch(str(source), tmp_path / "raw", DATA)
    piped = check_dataset(tmp_path / "raw", DATA)  # the split-check stage's view of data/raw
    direct = check_dataset(source, DATA)  # vitpipe check-data on the source itself
    assert piped.accepted and direct.accepted, (piped.errors, direct.errors)
    assert direct.report == piped.report
    assert _contents(direct) == _contents(piped)
    for sample in direct.index.samples("train"):
        assert (source / sample.path).is_file()  # the index points at the source's own files


def test_check_data_command_accepts_class_folders_at_the_top(tmp_path, capsys, monkeypatch):
    """The README's own layout (my-photos/<class>/*.jpg), refused before by check-data."""
    monkeypatch.chdir(tmp_path)  # no params.yaml: the built-in defaults
    source = _source(tmp_path / "my-photos", {"A": 30, "B": 30})
    assert main(["check-data", str(source)]) == 0
    out = capsys.readouterr().out
    assert "Layout: class folders only (taken as train); valid and test carved off train" in out
    assert "ACCEPTED" in out


def test_an_empty_class_folder_is_refused_by_both(tmp_path):
    source = _source(tmp_path / "source", {"A": 12, "B": 12})
    (source / "C").mkdir()
    with pytest.raises(VitpipeError, match="C: empty train class folder"):
        fetch(str(source), tmp_path / "raw", DATA)
    result = check_dataset(source, DATA)
    assert not result.accepted and any(e.startswith("train/C: no usable images") for e in result.errors)
