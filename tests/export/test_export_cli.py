"""``vitpipe export``: bad input on every flag is one line and exit 2; user files are never deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vitpipe.cli import main
from vitpipe.model.classifier import build_model
from vitpipe.model.model_file import card_for, save_model
from vitpipe.model.transforms import eval_spec
from vitpipe.params import ModelParams


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    params = ModelParams(name="test_vit", img_size=32, head_hidden=0)
    model, info = build_model(params, 3, seed=0)
    card = card_for(("a", "b", "c"), params, info, spec=eval_spec("seed", info), precision="bf16", feature_dtype=None)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model, card)
    return path


def _refused(argv: list[str], capsys, expected: str) -> None:
    rc = main(["export", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and expected in errors[0], err


def test_missing_model(tmp_path, capsys):
    _refused(["--model", str(tmp_path / "absent.safetensors"), "--format", "onnx", "--out", str(tmp_path / "o")],
             capsys, "absent.safetensors: no model file")


def test_not_a_vitpipe_model(tmp_path, capsys):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    _refused(["--model", str(path), "--format", "timm", "--out", str(tmp_path / "o")], capsys, "not a vitpipe model file")
    (tmp_path / "text.safetensors").write_text("hello")
    _refused(["--model", str(tmp_path / "text.safetensors"), "--format", "onnx", "--out", str(tmp_path / "o")],
             capsys, "not a readable safetensors file")
    _refused(["--model", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o")], capsys, "no model file")


@pytest.mark.parametrize("fmt,expected", [("tflite", "--format 'tflite': unknown format; use onnx or timm"),
                                          ("", "--format: give onnx or timm")])
def test_unknown_or_missing_format(model_path, tmp_path, capsys, fmt, expected):
    _refused(["--model", str(model_path), "--format", fmt, "--out", str(tmp_path / "o")], capsys, expected)


def test_out_holding_other_files_is_refused_and_left_alone(model_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")  # one of ours by name: the user's all the same (no mark)
    _refused(["--model", str(model_path), "--format", "timm", "--out", str(out)], capsys, "holds config.json, notes.txt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.json").read_text() == "{}"
    (out / "sub").mkdir()
    _refused(["--model", str(model_path), "--format", "onnx", "--out", str(out)], capsys, "config.json, notes.txt, sub")


def test_out_that_is_a_link_or_a_file(model_path, tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    _refused(["--model", str(model_path), "--format", "timm", "--out", str(tmp_path / "link")], capsys,
             "is a symbolic link")
    assert list(target.iterdir()) == []
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    _refused(["--model", str(model_path), "--format", "timm", "--out", str(tmp_path / "dangling")], capsys,
             "is a symbolic link")
    (tmp_path / "file").write_text("x")
    _refused(["--model", str(model_path), "--format", "timm", "--out", str(tmp_path / "file")], capsys,
             "is a file, not a directory")
    _refused(["--model", str(model_path), "--format", "timm", "--out", str(tmp_path / "file" / "sub")], capsys,
             "is a file, not a directory")


def test_a_file_named_like_ours_but_a_link_is_refused(model_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious").write_text("keep")
    (out / "README.md").symlink_to(tmp_path / "precious")
    _refused(["--model", str(model_path), "--format", "timm", "--out", str(out)], capsys, "holds README.md")
    assert (tmp_path / "precious").read_text() == "keep" and (out / "README.md").is_symlink()


def test_read_only_out_or_parent(model_path, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    parent = tmp_path / "ro-parent"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _refused(["--model", str(model_path), "--format", "timm", "--out", str(out)], capsys, "is read-only")
        _refused(["--model", str(model_path), "--format", "timm", "--out", str(parent / "new" / "deeper")], capsys,
                 f"is in {parent}, which is read-only")
        assert list(parent.iterdir()) == []
    finally:
        out.chmod(0o755)
        parent.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a file system nobody may write)")
def test_an_unwritable_file_system_is_one_line(model_path, capsys):
    _refused(["--model", str(model_path), "--format", "timm", "--out", "/proc/vitpipe-export"], capsys, "--out")


def test_a_linked_model_is_read_and_a_previous_export_is_replaced(model_path, tmp_path, capsys):
    link = tmp_path / "model.safetensors"
    link.symlink_to(model_path)  # DVC's symlink cache type checks models out like this
    out = tmp_path / "timm"
    for _ in range(2):  # the second run replaces the first export in place
        assert main(["export", "--model", str(link), "--format", "timm", "--out", str(out)]) == 0
        printed = capsys.readouterr().out.split()
        assert printed == [str(out / n) for n in ("config.json", "model.safetensors", "README.md")]
    assert sorted(p.name for p in out.iterdir()) == [".vitpipe-export", "README.md", "config.json", "model.safetensors"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not the private mode of a temp dir
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_write_the_system_refuses_is_one_line(model_path, tmp_path, capsys, monkeypatch):
    import errno

    import vitpipe.export.export as export

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(export, "atomic_dir", refuse)
    _refused(["--model", str(model_path), "--format", "timm", "--out", str(tmp_path / "o")], capsys,
             "cannot write there (Read-only file system)")


def test_a_model_over_the_single_file_onnx_limit_is_one_line(model_path, tmp_path, capsys, monkeypatch):
    import vitpipe.model.onnx_backbone as onnx_backbone

    monkeypatch.setattr(onnx_backbone, "MAX_WEIGHT_BYTES", 1000)  # test_vit's weights: about 1.7 MB
    _refused(["--model", str(model_path), "--format", "onnx", "--out", str(tmp_path / "o")], capsys,
             "over the 2 GiB a single-file ONNX model can hold; use --format timm")
    assert not (tmp_path / "o").exists()


def test_a_metrics_folder_that_is_not_one_or_is_not_used_is_refused(model_path, tmp_path, capsys):
    """Before: --metrics naming nothing, a file, or given with --format onnx (which quotes no metrics)
    was accepted without a word."""
    (tmp_path / "file").write_text("x")
    base = ["--model", str(model_path), "--out", str(tmp_path / "o")]
    _refused([*base, "--format", "timm", "--metrics", str(tmp_path / "absent")], capsys, "--metrics")
    _refused([*base, "--format", "timm", "--metrics", str(tmp_path / "file")], capsys, "not a folder")
    _refused([*base, "--format", "onnx", "--metrics", str(tmp_path)], capsys, "--format onnx quotes no metrics")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("out", ["", ".", "..", "../.."])
def test_out_that_is_the_current_folder_or_above_it_is_refused_before_the_export(model_path, tmp_path, capsys,
                                                                                 monkeypatch, out):
    """Before: `--out ''` in an empty folder exported, then failed renaming onto the current folder
    ("Device or resource busy ... free space")."""
    cwd = tmp_path / "a" / "b" / "empty"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    _refused(["--model", str(model_path), "--format", "onnx", "--out", out], capsys, "the current folder")
    assert list(cwd.iterdir()) == []
