"""Full fine-tuning under torchrun: 2 CPU processes with gloo, rank 0 writes the usual files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from conftest import tiny_params
from vitpipe.data.index import DatasetIndex
from vitpipe.logs import run_stage
from vitpipe.train.training import TrainOutputs, run_training
out = Path(sys.argv[1])
outputs = TrainOutputs(out / "model.safetensors", out / "ckpt" / "last.pt", out / "train.json", out / "history.csv")
params = tiny_params(freeze="none", epochs=2, batch_size=4)
raise SystemExit(run_stage(lambda: run_training(params, DatasetIndex.load(sys.argv[2]), outputs) and 0))
"""


def test_two_process_ddp_on_cpu_writes_the_single_process_files(tmp_path, tiny_index):
    index_path = tmp_path / "index.json"
    tiny_index.save(index_path)
    script = tmp_path / "train_ddp.py"
    script.write_text(_SCRIPT.format(tests=str(REPO / "tests")))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), str(index_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 of 2" in proc.stderr and "rank 1 of 2" in proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "ckpt/last.pt", "history.csv", "model.safetensors", "train.json"]
    metrics = json.loads((out / "train.json").read_text())
    assert metrics["engine"] == "images" and metrics["epochs"] == 2
    assert len((out / "history.csv").read_text().splitlines()) == 3
