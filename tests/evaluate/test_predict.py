"""``vitpipe predict``: evaluate's transform and Predictor on files and folders; bad files reported, not fatal."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from vitpipe.cli import main
from vitpipe.data.images import load_rgb
from vitpipe.errors import VitpipeError
from vitpipe.evaluate.inference import Predictor
from vitpipe.evaluate.predict import (
    ImageError,
    ImagePrediction,
    collect_images,
    predict_paths,
)
from vitpipe.model.classifier import build_model
from vitpipe.model.model_file import card_for, load_model, save_model
from vitpipe.model.transforms import build_eval_transform, eval_spec
from vitpipe.params import ModelParams


@pytest.fixture(scope="module")
def test_split(butterflies: Path) -> Path:
    """The real photos' test split (``butterflies`` from conftest.py skips when they are absent)."""
    return butterflies / "test"


@pytest.fixture(scope="module")
def classes(test_split: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in test_split.iterdir() if p.is_dir()))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, classes: tuple[str, ...]) -> Path:
    """A tiny random test_vit saved as the train stage saves its model (bf16 features, like the cache)."""
    params = ModelParams(name="test_vit", img_size=32, head_hidden=0)
    model, info = build_model(params, len(classes), seed=0)
    card = card_for(classes, params, info, spec=eval_spec("seed", info), precision="bf16", feature_dtype="bfloat16")
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model, card)
    return path


@pytest.fixture
def images(tmp_path: Path, test_split: Path, classes: tuple[str, ...]) -> list[Path]:
    """Three real photos of three classes, copied (with spaces in the folder names) under tmp_path/in."""
    out = []
    for name in classes[:3]:
        src = sorted((test_split / name).glob("*.jpg"))[0]
        dest = tmp_path / "in" / name / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        out.append(dest)
    return out


def _predictions(line: str) -> list[tuple[str, float]]:
    """``path: A 0.1, B 0.2`` -> [(A, 0.1), (B, 0.2)] (class names hold spaces; the number is last)."""
    _, _, rest = line.rpartition(": ")
    return [(item.rsplit(" ", 1)[0], float(item.rsplit(" ", 1)[1])) for item in rest.split(", ")]


def test_text_output_names_the_top_k_classes_of_each_image(model_path, images, classes, capsys):
    rc = main(["predict", *map(str, images), "--model", str(model_path), "--top-k", "3", "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert [line.split(": ")[0] for line in out] == [str(p) for p in images]
    for line in out:
        preds = _predictions(line)
        assert len(preds) == 3
        assert all(name in classes for name, _ in preds)
        assert [p for _, p in preds] == sorted((p for _, p in preds), reverse=True)


def test_json_lists_every_class_with_probabilities_summing_to_one(model_path, images, classes, capsys):
    rc = main(["predict", str(images[0]), "--model", str(model_path), "--top-k", "100", "--json", "--device", "cpu"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["errors"] == []
    (result,) = doc["results"]
    assert result["path"] == str(images[0])
    assert sorted(p["class"] for p in result["predictions"]) == sorted(classes)  # top-k capped at the classes
    assert sum(p["probability"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_probabilities_equal_the_predictor_on_evaluates_transform(model_path, images, classes):
    results = list(predict_paths(images, model_path, top_k=len(classes), batch_size=2, device="cpu"))
    got = torch.tensor([[dict(r.top)[c] for c in classes] for r in results])
    model, card = load_model(model_path)
    transform = build_eval_transform(card.eval_transform)
    batch = torch.stack([transform(load_rgb(p)) for p in images])  # (3, 3, 32, 32)
    expected = Predictor(model, card, torch.device("cpu")).probabilities(batch).float()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_corrupt_file_is_one_error_line_and_the_others_are_still_predicted(model_path, images, tmp_path, capsys):
    folder = images[0].parents[1]
    (folder / "broken.jpg").write_bytes(images[0].read_bytes()[:200])  # a truncated JPEG
    (folder / "notes.txt").write_text("not an image, not listed")
    rc = main(["predict", str(folder), "--model", str(model_path), "--device", "cpu"])
    captured = capsys.readouterr()
    predicted = [line.split(": ")[0] for line in captured.out.splitlines()]
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert rc == 1
    assert predicted == sorted(str(p) for p in images)  # recursive, sorted, .txt ignored
    assert len(errors) == 1 and errors[0].startswith(f"{folder / 'broken.jpg'}: error: ")


def test_a_thin_image_is_one_error_line_not_gigabytes(model_path, images, tmp_path, capsys):
    """Issue 10, item 9: predict refuses what split-check refuses, before resizing it."""
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.new("RGB", (6000, 1)).save(strip)
    rc = main(["predict", str(strip), str(images[0]), "--model", str(model_path), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out.startswith(str(images[0]))
    assert f"{strip}: error: 6000x1 pixels, sides in a ratio over 20:1" in captured.err


def test_a_missing_path_is_reported_in_json_and_fails_the_command(model_path, images, tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    rc = main(["predict", str(missing), str(images[1]), "--model", str(model_path), "--json", "--device", "cpu"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert doc["errors"] == [{"path": str(missing), "error": "no such file or directory"}]
    assert [r["path"] for r in doc["results"]] == [str(images[1])]


def test_a_fifo_or_a_device_is_named_as_such_and_never_read(model_path, images, tmp_path, capsys):
    """Issue 22, case 12: a FIFO or /dev/zero given to predict was reported as "no such file"."""
    import os

    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block until a writer comes
    rc = main(["predict", str(tmp_path / "pipe.jpg"), "/dev/zero", str(images[0]), "--model", str(model_path),
               "--json", "--device", "cpu"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and [r["path"] for r in doc["results"]] == [str(images[0])]
    reason = "not a regular file (a FIFO, socket or device); give an image file"
    assert doc["errors"] == [{"path": str(tmp_path / "pipe.jpg"), "error": reason}, {"path": "/dev/zero", "error": reason}]


def test_an_image_over_pillows_bomb_warning_limit_is_one_log_line_naming_it(model_path, images, tmp_path):
    """Issue 22, case 12: Pillow's DecompressionBombWarning leaked as two raw lines (file:line, then the
    source line). The limit is lowered to 1,000 pixels here (a real one is 89 Mpx)."""
    import subprocess
    import sys

    from PIL import Image

    big = tmp_path / "big" / "A" / "big.png"
    big.parent.mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(big)  # 1,600 pixels: over 1,000, under twice that
    code = ("import sys; from PIL import Image; Image.MAX_IMAGE_PIXELS = 1000; from vitpipe.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    for argv in (["predict", str(big), "--model", str(model_path)], ["check-data", str(tmp_path / "big")]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
        assert "DecompressionBombWarning" not in proc.stderr and "warnings.warn" not in proc.stderr, proc.stderr
        noted = [line for line in proc.stderr.splitlines() if "decompression-bomb" in line]
        assert len(noted) == 1 and "big.png: 40 x 40 pixels" in noted[0] and " WARNING " in noted[0], proc.stderr


def test_no_model_file_is_a_one_line_error_with_status_2(images, tmp_path, capsys):
    rc = main(["predict", str(images[0]), "--model", str(tmp_path / "absent.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "absent.safetensors: no model file" in err and "Traceback" not in err


def test_collect_images_keeps_argument_order_and_reports_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.txt").write_text("given explicitly: kept, load_rgb decides")
    entries = collect_images([tmp_path / "b.png", tmp_path / "empty", tmp_path / "a.txt"])
    assert entries[0] == tmp_path / "b.png" and entries[2] == tmp_path / "a.txt"
    assert isinstance(entries[1], ImageError) and "no image files" in entries[1].reason


def test_bad_top_k_is_refused_before_the_model_loads(tmp_path):
    with pytest.raises(VitpipeError, match="top-k"):
        predict_paths([tmp_path], tmp_path / "absent.safetensors", top_k=0)


def test_formats():
    assert ImagePrediction("a.jpg", (("RED ADMIRAL", 0.8734), ("MONARCH", 0.05))).format() == \
        "a.jpg: RED ADMIRAL 0.873, MONARCH 0.050"
    assert ImageError("b.jpg", "zero bytes").format() == "b.jpg: error: zero bytes"
