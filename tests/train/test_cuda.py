"""The CUDA paths, on a CUDA host (every test here is marked gpu: skipped without one).

Decoded images augmented on the device, bf16 autocast, channels_last, the fused optimizer, no host
synchronisation per step, torch.compile without a second graph, the feature pass and evaluate on the GPU,
and DDP over NCCL with two processes where there are two GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import tiny_vit_spec, REPO, tiny_params, train_outputs

from vitpipe.data.torchdata import ImageDataset
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.model.classifier import build_model
from vitpipe.model.features import Extractor, FeatureCache
from vitpipe.model.model_file import load_model
from vitpipe.model.transforms import build_eval_transform, build_train_transform, eval_spec
from vitpipe.params import ModelParams
from vitpipe.runtime import seed_everything
from vitpipe.train import training
from vitpipe.train.batches import DecodedBatches, LoaderBatches
from vitpipe.train.decoded import DecodedImages, DeviceAugment

pytestmark = pytest.mark.gpu
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SYNC = "called a synchronizing CUDA operation"


def test_decoded_batches_on_cuda_are_the_cpu_bytes_and_eval_augment_the_cpu_floats(tmp_path, tiny_index):
    spec = tiny_vit_spec()
    samples = tiny_index.samples("train")
    store = DecodedImages.build_or_open(tmp_path, tiny_index.root, samples, spec, num_workers=2)
    order = torch.randperm(len(samples))
    for (gpu, gpu_labels), (cpu, cpu_labels) in zip(store.batches(order, 7, drop_last=False, device=CUDA),
                                                     store.batches(order, 7, drop_last=False, device=CPU)):
        assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu) and torch.equal(gpu_labels.cpu(), cpu_labels)
        plain = DeviceAugment(spec, train=False, device=CUDA)(gpu)
        torch.testing.assert_close(plain.cpu(), DeviceAugment(spec, train=False, device=CPU)(cpu), rtol=1e-6, atol=1e-6)


def test_device_augmentation_on_cuda_is_seeded(tmp_path, tiny_index):
    spec = tiny_vit_spec()
    store = DecodedImages.build_or_open(tmp_path, tiny_index.root, tiny_index.samples("train"), spec, num_workers=0)
    images, _ = next(store.batches(torch.arange(len(store)), 64, drop_last=False, device=CUDA))
    runs = []
    for _ in range(2):
        seed_everything(0)  # torch's RNG (flips) and Python's (timm's RandomErasing), as the engine seeds each epoch
        runs.append(DeviceAugment(spec, train=True, device=CUDA)(images))
    assert runs[0].device.type == "cuda" and runs[0].dtype == torch.float32 and torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], DeviceAugment(spec, train=False, device=CUDA)(images))


def test_the_loader_path_on_cuda_gives_the_cpus_floats_without_waiting_for_the_device(tiny_index):
    """The tutorial's loop on CUDA: uint8 from the workers, ToTensor/Normalize/RandomErasing on the GPU; the
    erasing values come pinned with the batch, the mean and std move once: no copy that waits per batch."""
    _, info = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)
    spec = eval_spec("seed", info)
    sets = [ImageDataset(tiny_index.root, tiny_index.samples(split), tf)
            for split, tf in (("train", build_train_transform("seed", spec, info)), ("valid", build_eval_transform(spec)))]
    batches = {device: LoaderBatches(*sets, device=device, num_workers=2) for device in (CPU, CUDA)}

    def epoch(device):
        return list(batches[device].train(0, shuffle_seed=1, augment_seed=2, batch_size=8, drop_last=False)) + \
            list(batches[device].valid(batch_size=8))

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            on_gpu = epoch(CUDA)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert sum(SYNC in str(w.message) for w in caught) <= 4  # the mean and std, once per split's tail
    for (gpu, gpu_labels), (cpu, cpu_labels) in zip(on_gpu, epoch(CPU), strict=True):
        assert torch.equal(gpu_labels.cpu(), cpu_labels)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)  # 1/255 as a reciprocal on CUDA


def test_a_fine_tune_on_cuda_runs_decoded_bf16_channels_last_fused_without_a_sync_per_step(tmp_path, tiny_index,
                                                                                           monkeypatch):
    seen = {}
    real_engine = training.ImageEngine

    class Watched(real_engine):
        def train_epoch(self, epoch, optimizer, ema):
            seen.update(batches=type(self.batches), channels_last=self.channels_last,
                        fused=optimizer.defaults.get("fused"))
            autocast = []
            hook = self.module.register_forward_hook(
                lambda *_: autocast.append(torch.is_autocast_enabled("cuda")))
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = super().train_epoch(epoch, optimizer, ema)
            finally:
                torch.cuda.set_sync_debug_mode(0)
                hook.remove()
            seen.setdefault("syncs", []).append(sum(SYNC in str(w.message) for w in caught))
            seen.setdefault("autocast", []).extend(autocast)
            return result

    monkeypatch.setattr(training, "ImageEngine", Watched)
    params = tiny_params(device="cuda", freeze="none", epochs=2, batch_size=4, num_workers=2)
    metrics = training.run_training(params, tiny_index, train_outputs(tmp_path))
    assert metrics["engine"] == "images" and metrics["device"] == torch.cuda.get_device_name(CUDA)
    assert seen["batches"] is DecodedBatches and seen["channels_last"] and seen["fused"] is True
    assert seen["autocast"] and all(seen["autocast"])  # bf16 autocast on every forward
    # 30 train images in batches of 4: 8 steps per epoch; the sums are read once, at the epoch's end
    assert all(n <= 3 for n in seen["syncs"]), seen["syncs"]
    assert load_model(tmp_path / "model.safetensors")[1].provenance["precision"] == "bf16"


def test_compile_on_cuda_compiles_no_second_graph_for_an_epochs_short_last_batch(tmp_path, tiny_index):
    """30 train images: batches of 10 leave no short batch, batches of 8 leave one of 6 per epoch, which
    runs eagerly: both runs compile the same frames (graph breaks included), once."""
    import torch._dynamo

    frames = {}
    for batch_size in (10, 8):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        params = tiny_params(device="cuda", freeze="none", epochs=2, batch_size=batch_size, compile=True)
        assert training.run_training(params, tiny_index, train_outputs(tmp_path / str(batch_size)))["engine"] == "images"
        frames[batch_size] = sum(torch._dynamo.utils.counters["frames"].values())
    assert frames[10] > 0 and frames[8] == frames[10], frames


def test_the_feature_pass_on_cuda_is_close_to_the_cpus_and_keyed_apart(tmp_path, tiny_index):
    model, info = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)
    transform = build_eval_transform(eval_spec("seed", info))
    samples = tiny_index.samples("valid")
    cache = FeatureCache(tmp_path / "features")
    on_gpu = cache.features(Extractor.for_backbone(model.backbone.to(CUDA), CUDA, "bf16", num_workers=2,
                                                   channels_last=True),
                            tiny_index.root, samples, transform=transform, view_seed=None, desc="gpu")
    on_cpu = cache.features(Extractor.for_backbone(model.backbone.to(CPU), CPU, "bf16", num_workers=0),
                            tiny_index.root, samples, transform=transform, view_seed=None, desc="cpu")
    assert cache.computed == 2 * len(samples)  # the device type is in the key: no CPU entry served to the GPU
    torch.testing.assert_close(on_gpu.float(), on_cpu.float(), rtol=0.05, atol=0.05)


def test_evaluate_on_cuda_scores_every_test_image(tmp_path, tiny_index):
    for params in (tiny_params(device="cuda", epochs=1), tiny_params(device="cuda", epochs=1, cache_views=0)):
        training.run_training(params, tiny_index, train_outputs(tmp_path))
        metrics = run_evaluation(params, tiny_index, tmp_path / "model.safetensors",
                                 EvalOutputs(tmp_path / "t.json", tmp_path / "p.csv", tmp_path / "q.csv"))
        assert metrics["n_images"] == len(tiny_index.samples("test"))


_DDP = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from conftest import tiny_params, train_outputs
from vitpipe.data.index import DatasetIndex
from vitpipe.logs import run_stage
from vitpipe.train.training import run_training
params = tiny_params(device="cuda", freeze="none", epochs=2, batch_size=4)
raise SystemExit(run_stage(lambda: run_training(params, DatasetIndex.load(sys.argv[2]), train_outputs(Path(sys.argv[1])))
                           and 0))
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_nccl_with_two_gpus_writes_the_single_process_files(tmp_path, tiny_index):
    tiny_index.save(tmp_path / "index.json")
    (tmp_path / "ddp.py").write_text(_DDP.format(tests=str(REPO / "tests")))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "ddp.py"), str(out), str(tmp_path / "index.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 of 2 on cuda:0" in proc.stderr and "rank 1 of 2 on cuda:1" in proc.stderr
    assert json.loads((out / "train.json").read_text())["epochs_run"] == 2


_CPU_RUN = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import torch
from conftest import tiny_params, train_outputs
from vitpipe.data.index import DatasetIndex
from vitpipe.train.training import run_training
run_training(tiny_params(epochs=3), DatasetIndex.load(sys.argv[2]), train_outputs(Path(sys.argv[1])))  # checkpoints
print("cuda initialised:", torch.cuda.is_initialized())
"""


def test_a_cpu_run_on_a_cuda_host_opens_no_cuda_context(tmp_path, tiny_index):
    """Checkpoints saved every GPU's RNG state, which opened a context on each GPU for a run on the CPU."""
    tiny_index.save(tmp_path / "index.json")
    (tmp_path / "cpu_run.py").write_text(_CPU_RUN.format(tests=str(REPO / "tests")))
    proc = subprocess.run([sys.executable, str(tmp_path / "cpu_run.py"), str(tmp_path / "out"),
                           str(tmp_path / "index.json")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VITPIPE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "cuda initialised: False" in proc.stdout
