"""``vitpipe export --format timm``: a folder that plain timm loads (offline) with identical logits,
its preprocessing in config.json, and a model card that quotes the pipeline's files honestly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from vitpipe.cli import main
from vitpipe.data.images import load_rgb
from vitpipe.export.export import export_model
from vitpipe.export.timm_folder import crop_pct
from vitpipe.fileio import write_json
from vitpipe.model.classifier import build_model
from vitpipe.model.model_file import card_for, load_model, save_model
from vitpipe.model.transforms import EvalSpec, build_eval_transform, eval_spec
from vitpipe.params import ModelParams, Params

PARAMS = Params(model=ModelParams(name="test_vit", img_size=32, head_hidden=0))


@pytest.fixture(scope="module")
def classes(butterflies: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in (butterflies / "test").iterdir() if p.is_dir()))


@pytest.fixture(scope="module")
def photos(butterflies: Path) -> list[Path]:
    return sorted((butterflies / "test").rglob("*.jpg"))[::5]  # 10 real photos


def _save(folder: Path, classes: tuple[str, ...], head_hidden: int, provenance: dict | None = None) -> Path:
    params = ModelParams(name="test_vit", img_size=32, head_hidden=head_hidden)
    model, info = build_model(params, len(classes), seed=0)
    card = card_for(classes, params, info, spec=eval_spec("seed", info), precision="bf16", feature_dtype="bfloat16",
                    provenance=provenance)
    save_model(folder / "model.safetensors", model, card)
    return folder / "model.safetensors"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, classes) -> Path:
    return _save(tmp_path_factory.mktemp("model"), classes, head_hidden=0,
                 provenance={"engine": "feature-cache", "epochs": 3, "params_hash": PARAMS.training_hash()})


@pytest.fixture(scope="module")
def metrics(tmp_path_factory, classes) -> Path:
    """metrics/ as the pipeline writes it, with known numbers."""
    folder = tmp_path_factory.mktemp("metrics")
    per_class = [{"class": c, "accuracy": (i % 5) / 5, "correct": i % 5, "support": 5} for i, c in enumerate(classes)]
    write_json(folder / "test.json", {"accuracy": 0.4, "correct": 20, "n_images": 50, "loss": 1.5,
                                      "top5_accuracy": 0.9, "macro_f1": 0.35})
    write_json(folder / "per_class.json", per_class)
    write_json(folder / "data.json", {"accepted": True, "n_errors": 0, "n_warnings": 1, "n_classes": len(classes),
                                      "classes": list(classes), "splits": {"train": {"images": 1201},
                                      "valid": {"images": 50}, "test": {"images": 50}},
                                      "duplicates": {"within_split": 2, "cross_split": 0}})
    write_json(folder / "train.json", {"best_val_accuracy": 0.5, "best_epoch": 3})
    return folder


@pytest.fixture(scope="module")
def folder(model_path, metrics, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "timm"
    export_model(model_path, "timm", out, metrics_dir=metrics, params=PARAMS)
    return out


def test_folder_holds_timms_files_and_config(folder, classes):
    assert sorted(p.name for p in folder.iterdir()) == [".vitpipe-export", "README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_vit" and config["num_classes"] == len(classes)
    assert config["label_names"] == list(classes)
    assert config["model_args"]["img_size"] == [32, 32]
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_mode"] == "center"
    assert cfg["interpolation"] == "bilinear" and cfg["mean"] == [0.5] * 3 and cfg["num_classes"] == len(classes)
    assert cfg["tag"] == "vitpipe"  # not the tag of timm's own pretrained weights


def _vitpipe_fp32(model_path: Path, images: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(model_path)
    with torch.no_grad():
        return model(images)  # (B, n_classes): vitpipe's classifier in fp32, features not rounded


@pytest.fixture(scope="module")
def images(photos, model_path) -> torch.Tensor:
    _, card = load_model(model_path)
    transform = build_eval_transform(card.eval_transform)
    return torch.stack([transform(load_rgb(p)) for p in photos])  # (10, 3, 32, 32)


def test_plain_timm_with_the_weights_file_gives_identical_logits(folder, model_path, images, classes):
    n = len(classes)
    net = timm.create_model("test_vit", pretrained=True, num_classes=n, img_size=32,
                            pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), num_classes=n)).eval()
    with torch.no_grad():
        assert torch.equal(net(images), _vitpipe_fp32(model_path, images))


def test_timm_local_dir_reads_config_labels_size_and_gives_identical_logits(folder, model_path, images, classes):
    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # what hf-hub: does after upload_folder
    assert net.pretrained_cfg["label_names"] == list(classes)
    with torch.no_grad():
        assert torch.equal(net(images), _vitpipe_fp32(model_path, images))


def test_timms_transform_from_the_config_is_vitpipes_eval_transform(folder, model_path, photos):
    net = timm.create_model(f"local-dir:{folder}", pretrained=True)
    theirs = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
    ours = build_eval_transform(load_model(model_path)[1].eval_transform)
    for photo in photos:
        image = load_rgb(photo)
        assert torch.equal(theirs(image), ours(image))


def test_crop_pct_gives_back_every_resize():
    import math

    for crop in range(8, 520, 7):
        for resize in range(crop, 2 * crop + 1, 3):
            assert math.floor(crop / crop_pct(EvalSpec(resize, crop, "bicubic", (0,), (1,)))) == resize


def test_model_card_quotes_params_metrics_with_counts_data_check_and_provenance(folder, classes):
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: timm\n")
    assert "- accuracy: 0.4000 (20/50 images)" in readme
    assert f"| {classes[3]} | 0.6000 | 3/5 |" in readme
    assert "| duplicates within a split | 2 |" in readme and "| images (train) | 1201 |" in readme
    assert "| epochs | 3 |" in readme and "| engine | feature-cache |" in readme  # the model file's provenance
    assert f"params_hash {PARAMS.training_hash()}" in readme and "| train.lr | 0.001 |" in readme
    assert "| model.head_hidden | 0 |" in readme and "rounded to bfloat16" in readme
    assert 'pretrained_cfg_overlay=dict(file="model.safetensors", num_classes=10)' in readme


def test_model_card_says_what_is_missing_or_does_not_match(model_path, metrics, tmp_path, classes):
    other = tmp_path / "other-metrics"
    other.mkdir()
    write_json(other / "test.json", {"accuracy": 1.0, "correct": 1, "n_images": 1})
    write_json(other / "per_class.json", [{"class": "A", "accuracy": 1.0, "correct": 1, "support": 1}])
    old = _save(tmp_path / "old", classes, head_hidden=0)  # an older vitpipe's file: no provenance
    export_model(old, "timm", tmp_path / "out", metrics_dir=other, params=None)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "per_class.json scores other classes than this model's: not quoted" in readme
    assert "data.json: not found or unreadable" in readme
    assert "This model file records no provenance" in readme
    assert "No params.yaml here" in readme and "accuracy: 1.0" not in readme

    changed = Params(model=PARAMS.model, train=PARAMS.train.__class__(lr=0.5))
    export_model(model_path, "timm", tmp_path / "out", metrics_dir=metrics, params=changed)  # replaces its own export
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "is not the run's" in readme and "| train.lr |" not in readme


def test_an_mlp_head_is_refused_in_one_line(tmp_path, classes, capsys):
    path = _save(tmp_path, classes, head_hidden=16)
    rc = main(["export", "--model", str(path), "--format", "timm", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "model.head_hidden is 16" in err and "model.head_hidden: 0" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("lock", [b"\xff\xfe not UTF-8", b"stages:\n  evaluate:\n    deps: 5\n"])
def test_metrics_and_dvc_lock_of_another_shape_are_not_quoted_and_never_a_traceback(model_path, tmp_path, classes,
                                                                                    monkeypatch, capsys, lock):
    """Before: a KeyError, ValueError, AttributeError or UnicodeDecodeError traceback for each of these."""
    odd = tmp_path / "odd"
    odd.mkdir()
    write_json(odd / "test.json", {"n_images": "many"})  # no numbers
    write_json(odd / "per_class.json", [{"class": c} for c in classes])  # the class names, but no numbers
    write_json(odd / "data.json", {"classes": list(classes), "splits": [1], "duplicates": 3})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_bytes(lock)
    rc = main(["export", "--model", str(model_path), "--format", "timm", "--out", "out", "--metrics", str(odd)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    readme = (tmp_path / "out" / "README.md").read_text()
    assert f"{odd / 'test.json'}: not laid out as vitpipe writes it" in readme
    assert f"{odd / 'data.json'}: not laid out as vitpipe writes it" in readme
    write_json(odd / "test.json", {"accuracy": "high", "correct": 1, "n_images": 2})
    write_json(odd / "per_class.json", [{"class": c, "correct": 0, "support": 1, "accuracy": 0.0} for c in classes])
    assert main(["export", "--model", str(model_path), "--format", "timm", "--out", "out", "--metrics", str(odd)]) == 0
    assert f"{odd / 'test.json'}: not laid out as vitpipe writes it" in (tmp_path / "out" / "README.md").read_text()


def test_per_class_rows_of_another_shape_name_per_class_json_not_test_json(model_path, metrics, tmp_path, classes):
    """A hand-edited per_class.json (a row without `correct`) was blamed on test.json."""
    odd = tmp_path / "metrics"
    odd.mkdir()
    (odd / "test.json").write_bytes((metrics / "test.json").read_bytes())
    write_json(odd / "per_class.json", [{"class": c, "accuracy": 0.5, "support": 2} for c in classes])
    export_model(model_path, "timm", tmp_path / "out", metrics_dir=odd, params=None)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert f"{odd / 'per_class.json'}: not laid out as vitpipe writes it: not quoted." in readme
    assert f"{odd / 'test.json'}: not laid out" not in readme


def test_metrics_edited_after_evaluate_are_flagged_against_dvc_lock(model_path, metrics, tmp_path, monkeypatch):
    """dvc.lock records the model evaluate scored and the files it wrote: the card said "Scored on this
    very model file" above numbers edited by hand since."""
    import hashlib
    import shutil

    import yaml

    monkeypatch.chdir(tmp_path)
    shutil.copytree(metrics, tmp_path / "metrics")
    shutil.copy(model_path, tmp_path / "model.safetensors")

    def entry(path: str) -> dict:
        return {"path": path, "hash": "md5", "md5": hashlib.md5(Path(path).read_bytes()).hexdigest()}  # noqa: S324

    stage = {"deps": [entry("model.safetensors")], "outs": [entry("metrics/per_class.json"), entry("metrics/test.json")]}
    Path("dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"evaluate": stage}}))
    export_model(Path("model.safetensors"), "timm", Path("out"), metrics_dir=Path("metrics"), params=None)
    assert "Scored on this very model file" in Path("out/README.md").read_text()

    write_json(Path("metrics/test.json"), {"accuracy": 0.99, "correct": 49, "n_images": 50})
    export_model(Path("model.safetensors"), "timm", Path("out"), metrics_dir=Path("metrics"), params=None)
    readme = Path("out/README.md").read_text()
    assert "Caution: dvc.lock records evaluate writing other bytes to metrics/test.json" in readme
    assert "Scored on this very model file" not in readme


def test_a_model_evaluate_did_not_score_is_named_not_md5_none(model_path, metrics, tmp_path, monkeypatch):
    """Issue 22, case 12: `--model` another file than dvc.lock's evaluate dep: the card said "md5 None"."""
    import shutil

    import yaml

    monkeypatch.chdir(tmp_path)
    shutil.copytree(metrics, tmp_path / "metrics")
    shutil.copy(model_path, tmp_path / "other.safetensors")
    stage = {"deps": [{"path": "models/model.safetensors", "hash": "md5", "md5": "0" * 32}], "outs": []}
    Path("dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"evaluate": stage}}))
    export_model(Path("other.safetensors"), "timm", Path("out"), metrics_dir=Path("metrics"), params=None)
    readme = Path("out/README.md").read_text()
    assert "None" not in readme.split("## Provenance")[0]
    assert ("Caution: dvc.lock records evaluate scoring models/model.safetensors, not other.safetensors: these "
            "metrics may be another model's.") in readme
