"""Training under torchrun: 2 CPU processes with gloo, rank 0 writes the usual files; each rank draws
its own random numbers, the history sums every rank, and unfreezing rebuilds the DDP wrapper."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, history, tiny_params
from torch import nn

from vitpipe.model.classifier import build_model
from vitpipe.model.model_file import load_model
from vitpipe.train.engines import ImageEngine, Totals

_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from conftest import tiny_params, train_outputs
from vitpipe.data.index import DatasetIndex
from vitpipe.logs import run_stage
from vitpipe.train.training import run_training
out = Path(sys.argv[1])
outputs = train_outputs(out)
params = tiny_params(**json.loads(sys.argv[3]))
raise SystemExit(run_stage(lambda: run_training(params, DatasetIndex.load(sys.argv[2]), outputs) and 0))
"""


@pytest.mark.slow
@pytest.mark.parametrize("train", [{"freeze": "none"}, {"unfreeze_epoch": 1}], ids=["fine-tune", "unfreeze"])
def test_two_process_ddp_on_cpu_writes_the_single_process_files(tmp_path, tiny_index, train):
    """``unfreeze``: DDP used to be built while the backbone trained, then the backbone was frozen again
    for the first epoch, and every rank failed with "Expected to have finished reduction"."""
    index_path = tmp_path / "index.json"
    tiny_index.save(index_path)
    script = tmp_path / "train_ddp.py"
    script.write_text(_SCRIPT.format(tests=str(REPO / "tests")))
    out = tmp_path / "out"
    overrides = json.dumps({"epochs": 2, "batch_size": 4, **train})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), str(index_path), overrides], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 of 2" in proc.stderr and "rank 1 of 2" in proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.iterdir()) == [
        "dvclive", "model.safetensors", "train.json"]
    assert load_model(out / "model.safetensors")[1].provenance["engine"] == "images"
    assert json.loads((out / "train.json").read_text())["epochs_run"] == 2
    assert [row["epoch"] for row in history(out)] == [0, 1]  # rank 0 alone wrote DVCLive's rows
    assert not list((tmp_path / "feature-cache" / "checkpoints").rglob("*.pt"))  # the finished run's is gone


class _Recorder:
    """A BatchSource whose epoch yields this rank's share of 8 fixed images, recording what the
    engine's seeding left in each random number generator."""

    def __init__(self, rank: int):
        self.rank, self.draws = rank, []

    def train(self, *args, **kwargs):
        self.draws.append((torch.rand(1).item(), float(np.random.rand()), __import__("random").random()))
        images = torch.linspace(-1, 1, 8 * 3 * 32 * 32).view(8, 3, 32, 32)
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        share = slice(self.rank * 4, self.rank * 4 + 4)
        yield images[share], labels[share]

    def valid(self, *, batch_size):
        return iter(())

    def train_images_per_rank(self):
        return 4


def _rank_main(rank: int, folder: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=2)
    try:
        params = tiny_params(unfreeze_epoch=1).train  # epoch 0: the head alone; epoch 1: everything
        model, _ = build_model(tiny_params().model, 3, seed=0)
        source = _Recorder(rank)
        engine = ImageEngine(model, batches=source, params=params, device=torch.device("cpu"),
                             loss_fn=nn.CrossEntropyLoss(), val_loss_fn=nn.CrossEntropyLoss())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sums = [engine.train_epoch(epoch, optimizer, None) for epoch in (0, 1)]
        weights = {k: v.sum().item() for k, v in model.state_dict().items()}
        (folder / f"rank{rank}.json").write_text(json.dumps([source.draws, sums, weights]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_draw_their_own_numbers_sum_their_history_and_stay_in_step_after_unfreezing(tmp_path):
    """Before: every rank seeded (train.seed, epoch) alike (the same dropout, flips and mixup on every
    shard), the train loss and accuracy in the history were rank 0's alone, and DDP kept the parameters
    it was built with (a wrapper built for the frozen epochs never averaged the backbone's gradients)."""
    # spawn, not fork: a child forked from a process whose OpenMP pool has run deadlocks (seen in the suite)
    mp.start_processes(_rank_main, args=(tmp_path,), nprocs=2, join=True, start_method="spawn")
    (draws0, sums0, weights0), (draws1, sums1, weights1) = [
        json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in (0, 1):
        assert all(a != b for a, b in zip(draws0[epoch], draws1[epoch])), epoch  # torch, numpy, random
    assert sums0 == sums1  # both report the sums over both shards, not their own share
    backbone = [k for k in weights0 if k.startswith("backbone.")]
    assert weights0 == weights1, [k for k in weights0 if weights0[k] != weights1[k]][:3]  # averaged gradients
    assert backbone and all(isinstance(weights0[k], float) for k in backbone)


def test_train_sums_stay_put_in_one_process():
    assert Totals(loss=2.0, correct=1, count=4).summed() == Totals(loss=2.0, correct=1, count=4)
