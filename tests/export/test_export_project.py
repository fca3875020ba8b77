"""The optional export stage is a DVC project of its own (export/.dvc): the main project's `dvc status`,
`dvc exp run` and the queue are quiet about it, and DVC never deletes a user's files in models/onnx
(issue 21, item 4; issue 22, case 5).

Before: after `dvc repro`, `dvc status` listed `export/dvc.yaml:export` (12 modified deps, "deleted:
models/onnx"), every experiment warned "No file hash info found for '.../models/onnx'", and `dvc repro
export/dvc.yaml` deleted the user's git-ignored files in models/onnx before `vitpipe export` could refuse."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from repo_copy import copy_repo, run_queue
from repo_copy import stages_run as _stages_run

DVC = str(Path(sys.executable).with_name("dvc"))
UP_TO_DATE = "Data and pipelines are up to date."


def _run(work: Path, env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _tiny(params: dict) -> None:
    params["data"]["synthetic"].update(classes=3, train_per_class=8, valid_per_class=4, test_per_class=4, image_size=48)
    params["model"].update(name="test_vit", img_size=32, head_hidden=16)
    params["train"].update(epochs=1, batch_size=8, val_batch_size=8, num_workers=0)


@pytest.fixture()
def reproduced(tmp_path) -> tuple[Path, dict[str, str]]:
    """A tiny copy of the project after `dvc repro` (what `make repro` runs), committed."""
    work, env = copy_repo(tmp_path, edit_params=_tiny, env={"HOME": str(tmp_path / "home")})
    _run(work, env, DVC, "repro")
    _run(work, env, "git", "add", "-A")
    _run(work, env, "git", "commit", "-qm", "results")
    return work, env


def _no_word_of_export(text: str) -> None:
    # vitpipe's own warning that the tiny model is randomly initialised is expected; no other warning is
    text = "\n".join(line for line in text.splitlines() if "is randomly initialised" not in line)
    assert "models/onnx" not in text and "export" not in text.lower() and "WARNING" not in text, text


@pytest.mark.slow
def test_the_main_project_is_quiet_about_the_export_project_which_never_deletes_a_users_files(reproduced):
    work, env = reproduced
    status = _run(work, env, DVC, "status")
    assert status.stdout.strip() == UP_TO_DATE and status.stderr == ""
    run = _run(work, env, DVC, "exp", "run", "-S", "train.lr=2e-3")
    _no_word_of_export(run.stdout + run.stderr)
    _run(work, env, DVC, "exp", "run", "--queue", "-S", "train.lr=5e-4")
    queued = run_queue(work, env)
    name = re.search(r"^\S+\s+(\S+)\s.*\bSuccess\b", queued, re.M)
    assert name, queued
    logs = _run(work, env, DVC, "queue", "logs", name.group(1)).stdout
    assert "Running stage 'train'" in logs
    _no_word_of_export(logs)

    # a folder of the user's in models/onnx (git-ignored: DVC's deletion would be for good): refused, kept
    onnx = work / "models" / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"my own model")
    (onnx / "notes.txt").write_text("mine")
    failed = _run(work, env, DVC, "--cd", "export", "repro", ok=False)
    errors = [line for line in failed.stderr.splitlines() if " ERROR " in line]
    assert failed.returncode != 0 and "Traceback" not in failed.stdout + failed.stderr
    assert len(errors) == 1 and "models/onnx: holds model.onnx, notes.txt" in errors[0], failed.stderr
    assert (onnx / "model.onnx").read_bytes() == b"my own model" and (onnx / "notes.txt").read_text() == "mine"

    (onnx / "model.onnx").unlink()
    (onnx / "notes.txt").unlink()
    assert _stages_run(_run(work, env, DVC, "--cd", "export", "repro").stdout) == ["export"]
    assert sorted(p.name for p in onnx.iterdir()) == [".vitpipe-export", "model.onnx"]
    first = (onnx / "model.onnx").read_bytes()
    assert _stages_run(_run(work, env, DVC, "--cd", "export", "repro").stdout) == []
    assert _run(work, env, DVC, "--cd", "export", "status").stdout.strip() == UP_TO_DATE
    assert _run(work, env, DVC, "status").stdout.strip() == UP_TO_DATE  # the main project: still quiet
    # a file of the user's added beside its own export: the stage stops, and DVC deleted nothing first
    (onnx / "notes.txt").write_text("mine")
    failed = _run(work, env, DVC, "--cd", "export", "repro", "--force", ok=False)
    assert failed.returncode != 0 and "holds notes.txt, which `vitpipe export` did not write" in failed.stderr
    assert (onnx / "notes.txt").read_text() == "mine" and (onnx / "model.onnx").read_bytes() == first
