"""DVCLive's folder (`--live`): DVCLive deletes files there when it opens it (params.yaml, dvc.yaml,
report.*, plots/<type>/), so vitpipe refuses, before any work, a folder that is a link, a file, or
holds files vitpipe's DVCLive did not write; the user's files stay as they were."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_params, train_outputs

from vitpipe.errors import VitpipeError
from vitpipe.train.training import run_training


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(("case", "named"), [
    ("a repository root", "dvc.yaml, params.yaml"),  # `--live .`: DVCLive would delete both
    ("a plots type of DVCLive's", "plots/images"),
    ("a file among the curves", "plots/metrics/notes.txt"),
    ("a curve of the user's", "plots/metrics/mine.tsv"),  # a .tsv, but not one vitpipe writes
    ("a folder of curves of the user's", "plots/metrics/extra"),
    ("a file", "is a file"),
    ("a link", "symbolic link"),
])
def test_a_live_folder_holding_other_files_is_refused_before_training_and_left_alone(tmp_path, tiny_index, case,
                                                                                     named):
    out, live = tmp_path / "out", tmp_path / "out" / "dvclive"
    out.mkdir()
    if case == "a repository root":
        live.mkdir()
        (live / "dvc.yaml").write_text("stages: {}\n")
        (live / "params.yaml").write_text("train: {lr: 0.001}\n")
        (live / "metrics.json").write_text("{}\n")
    elif case == "a plots type of DVCLive's":
        (live / "plots" / "images").mkdir(parents=True)
        (live / "plots" / "images" / "photo.png").write_bytes(b"\x89PNG")
    elif case == "a file among the curves":
        (live / "plots" / "metrics").mkdir(parents=True)
        (live / "plots" / "metrics" / "notes.txt").write_text("mine")
    elif case == "a curve of the user's":
        (live / "plots" / "metrics" / "val").mkdir(parents=True)
        (live / "plots" / "metrics" / "val" / "accuracy.tsv").write_text("step\taccuracy\n0\t0.5\n")  # vitpipe's
        (live / "plots" / "metrics" / "mine.tsv").write_text("step\tx\n0\t1\n")
    elif case == "a folder of curves of the user's":
        (live / "plots" / "metrics" / "extra").mkdir(parents=True)
        (live / "plots" / "metrics" / "extra" / "y.tsv").write_text("step\ty\n0\t1\n")
    elif case == "a file":
        live.write_text("not a folder")
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "metrics.json").write_text("{}\n")
        live.symlink_to(tmp_path / "elsewhere")
    before = _snapshot(tmp_path)
    with pytest.raises(VitpipeError, match=f"--live .*{named}") as refused:
        run_training(tiny_params(epochs=1), tiny_index, train_outputs(out))
    assert "new or empty folder" in str(refused.value) and "\n" not in str(refused.value)
    assert _snapshot(tmp_path) == before  # nothing written, nothing deleted (the link's target included)
    assert not (out / "model.safetensors").exists()


def test_a_previous_live_folder_is_rewritten(tmp_path, tiny_index):
    """What vitpipe's DVCLive wrote (and DVC's .gitignore beside it) is its own: a rerun replaces it."""
    out = tmp_path / "out"
    run_training(tiny_params(epochs=2), tiny_index, train_outputs(out))
    (out / "dvclive" / ".gitignore").write_text("/metrics.json\n")
    first = _snapshot(out / "dvclive")
    run_training(tiny_params(epochs=2), tiny_index, train_outputs(out))
    assert _snapshot(out / "dvclive") == first
    # DVC git-ignores the TSVs it caches beside them when no .gitignore above does: DVC's own files
    for folder in ("", "train/", "val/"):
        (out / "dvclive" / "plots" / "metrics" / f"{folder}.gitignore").write_text("/accuracy.tsv\n")
    run_training(tiny_params(epochs=2), tiny_index, train_outputs(out))


def test_the_stage_script_refuses_live_dot_in_one_line(tmp_path, tiny_index):
    """`stages/train.py --live .` in a repository: one line, exit 2, dvc.yaml and params.yaml kept."""
    tiny_index.save(tmp_path / "index.json")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")
    before = _snapshot(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "--index", "index.json",
                           "--model", "m.safetensors", "--metrics", "t.json", "--live", "."],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VITPIPE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln or "error" in ln]
    assert "--live .: holds files vitpipe did not write (dvc.yaml, index.json, params.yaml)" in line
    assert _snapshot(tmp_path) == before


def _train_stage(tmp_path, tiny_index, **env: str) -> subprocess.CompletedProcess:
    """stages/train.py on the tiny index in ``tmp_path`` (no repository), with ``env`` added."""
    tiny_index.save(tmp_path / "index.json")
    (tmp_path / "params.yaml").write_text("model: {name: test_vit, img_size: 32, head_hidden: 16}\n"
                                          "train: {epochs: 2, batch_size: 8, val_batch_size: 8, num_workers: 0}\n")
    return subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "--index", "index.json",
                           "--model", "m.safetensors", "--metrics", "t.json", "--live", "dvclive"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VITPIPE_CACHE_DIR": str(tmp_path / "cache"), **env})


@pytest.mark.parametrize("level", ["verbose", "", "10"])
def test_a_dvclive_loglevel_that_is_not_a_level_is_one_line_before_any_work(tmp_path, tiny_index, level):
    """DVCLive reads DVCLIVE_LOGLEVEL when it is imported: an unknown level was a ValueError traceback."""
    proc = _train_stage(tmp_path, tiny_index, DVCLIVE_LOGLEVEL=level)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert f"DVCLIVE_LOGLEVEL={level!r} is not a logging level" in line and "unset it" in line
    assert not (tmp_path / "dvclive").exists() and not (tmp_path / "cache").exists()


def test_dvclives_and_vitpipes_log_lines_print_once(tmp_path, tiny_index):
    """DVCLive and Studio's client add their own console handlers: each of their lines printed twice.
    And DVC wraps sys.stderr when imported: imported after the stage set up logging, tqdm's redirect
    kept the first handler beside its own, and every line logged during the epochs printed twice."""
    (tmp_path / "a-file").write_text("not a folder")  # no checkpoints: one warning during the epochs
    proc = _train_stage(tmp_path, tiny_index, DVCLIVE_LOGLEVEL="debug",
                        VITPIPE_CACHE_DIR=str(tmp_path / "a-file" / "cache"))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "dvclive:" in ln]
    assert lines and all(" DEBUG dvclive: " in ln or " INFO dvclive: " in ln for ln in lines), lines
    for said in ("no checkpoints this run", "epoch 1: train loss"):
        assert len([ln for ln in proc.stderr.splitlines() if said in ln]) == 1, proc.stderr
