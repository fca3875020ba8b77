"""A real SIGKILL of `dvc repro` mid-training (DVC and the stage both die, as on an OOM kill or a
lost machine), then `dvc repro` again: the train stage resumes from its checkpoint in the cache
folder and the pipeline ends with the bytes an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo_copy import copy_repo

DVC = str(Path(sys.executable).with_name("dvc"))
OUTPUTS = ("metrics", "dvclive", "models", "dvc.lock")


def _tiny_fine_tuning(params: dict) -> None:
    """Full fine-tuning of timm's test_vit on 3 synthetic classes: 8 epochs of a fraction of a second."""
    params["data"]["synthetic"].update(classes=3, train_per_class=8, valid_per_class=4, test_per_class=4,
                                       image_size=48)
    params["model"].update(name="test_vit", img_size=32, head_hidden=16)
    params["train"].update(epochs=8, batch_size=8, val_batch_size=8, num_workers=0, freeze="none",
                           precision="bf16")


def _copy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    tmp_path.mkdir()
    return copy_repo(tmp_path, edit_params=_tiny_fine_tuning, env={"HOME": str(tmp_path / "home")})


def _repro(work: Path, env: dict[str, str]) -> str:
    done = subprocess.run([DVC, "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output
    return output


def _results(work: Path) -> dict[str, bytes]:
    files = [p for name in OUTPUTS for p in ([work / name] if (work / name).is_file() else (work / name).rglob("*"))]
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(files) if p.is_file()}


@pytest.mark.slow
def test_dvc_repro_killed_mid_training_resumes_and_ends_byte_identical(tmp_path):
    reference, reference_env = _copy(tmp_path / "reference")
    _repro(reference, reference_env)

    work, env = _copy(tmp_path / "killed")
    checkpoints = Path(env["VITPIPE_CACHE_DIR"]) / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([DVC, "repro"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: DVC and the stage it runs
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("*/last.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(checkpoints.glob("*/last.pt")), (tmp_path / "killed.log").read_text()
    assert not (work / "metrics" / "train.json").exists(), "the train stage finished before the kill"

    output = _repro(work, env)
    assert "resuming from" in output, output
    assert _results(work) == _results(reference)  # metrics/, dvclive/, the model and dvc.lock, byte for byte
    assert not list(checkpoints.iterdir())  # the finished run deleted its checkpoint folder
