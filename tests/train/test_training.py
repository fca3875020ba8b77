"""The train stage: the exact tutorial recipe, weights loading, fine-tune modes, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from conftest import (
    REPO,
    history,
    live_files,
    tiny_params,
    train_outputs,
    train_results,
)
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import LabelSmoothingCrossEntropy
from torch import nn
from torchvision import transforms as T

from vitpipe.errors import VitpipeError
from vitpipe.model.classifier import build_model
from vitpipe.model.model_file import load_model
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.params import ModelParams, Params
from vitpipe.train.checkpoint import checkpoint_path
from vitpipe.train.recipe import build_loss, build_optimizer, build_scheduler
from vitpipe.train.resume import key_parts
from vitpipe.train.training import run_training

_outputs = train_outputs


# --- the tutorial's recipe, exactly ---------------------------------------------------------------

def test_recipe_builds_the_tutorials_transforms_head_loss_optimizer_and_schedule():
    params = Params()  # the defaults in params.yaml
    model, info = build_model(params.model, 50, seed=0)
    spec = eval_spec("seed", info)
    train_tf = build_train_transform("seed", spec, info).transforms
    assert [type(t) for t in train_tf] == [T.RandomHorizontalFlip, T.RandomVerticalFlip, T.RandomApply, T.Resize,
                                          T.CenterCrop, T.ToTensor, T.Normalize, T.RandomErasing]
    assert train_tf[0].p == 0.5 and train_tf[1].p == 0.5
    assert train_tf[2].p == 0.25 and isinstance(train_tf[2].transforms[0], T.ColorJitter)
    jitter = train_tf[2].transforms[0]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (None, None, None, None)
    assert train_tf[3].size == 256 and train_tf[4].size == (224, 224)
    assert tuple(train_tf[6].mean) == IMAGENET_DEFAULT_MEAN and tuple(train_tf[6].std) == IMAGENET_DEFAULT_STD
    assert train_tf[7].p == 0.2 and train_tf[7].value == "random"
    eval_tf = build_eval_transform(spec).transforms
    assert [type(t) for t in eval_tf] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert eval_tf[0].size == 256 and eval_tf[1].size == (224, 224)

    head = model.head
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[2].p, head[3].out_features) == (192, 512, 0.3, 50)

    loss = build_loss(params.train, mixup=False)
    assert isinstance(loss, LabelSmoothingCrossEntropy) and loss.smoothing == 0.1

    optimizer = build_optimizer(model.head, params.train)
    assert type(optimizer) is torch.optim.Adam
    group_params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert group_params == {id(p) for p in model.head.parameters()}
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups)

    scheduler = build_scheduler(optimizer, params.train)
    reference = torch.optim.lr_scheduler.StepLR(torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-3),
                                                step_size=3, gamma=0.97)
    ours, theirs = [], []
    for epoch in range(10):
        ours.append(optimizer.param_groups[0]["lr"])
        theirs.append(reference.get_last_lr()[0])
        scheduler.step(epoch + 1)
        reference.optimizer.step()
        reference.step()
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_frozen_backbone_is_frozen_and_in_eval_mode():
    model, _ = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)
    from vitpipe.model.classifier import set_backbone_trainable

    set_backbone_trainable(model, False)
    model.train()
    assert model.backbone_frozen and not model.backbone.training and model.head.training


# --- weights ---------------------------------------------------------------------------------------

def _backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_local_safetensors_weights_round_trip_to_identical_logits(tmp_path):
    torch.manual_seed(123)
    source = timm.create_model("test_vit", num_classes=0, img_size=32)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, info = build_model(ModelParams(name="test_vit", img_size=32, weights=str(path)), 3, seed=0)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_backbone_features(model.backbone, x), _backbone_features(source, x))
    assert info.weights_source == "file:backbone.safetensors"


def test_timm_checkpoint_with_another_classifier_loads_from_pth(tmp_path):
    torch.manual_seed(7)
    source = timm.create_model("test_vit", num_classes=1000, img_size=32)  # ImageNet head: dropped
    path = tmp_path / "deit.pth"
    torch.save({"model": source.state_dict()}, path)  # the DeiT release layout
    model, _ = build_model(ModelParams(name="test_vit", img_size=32, weights=str(path)), 5, seed=0)
    source.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_backbone_features(model.backbone, x), _backbone_features(source, x))
    assert model.head[-1].out_features == 5


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    other = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(VitpipeError, match=r"model.weights: .*resnet.safetensors does not match"):
        build_model(ModelParams(name="test_vit", img_size=32, weights=str(path)), 3, seed=0)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_with_code_in_it_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model": _Exploit(marker)}, f)
    with pytest.raises(VitpipeError) as err:
        build_model(ModelParams(name="test_vit", img_size=32, weights=str(path)), 3, seed=0)
    assert not marker.exists()
    # Torch's message advises weights_only=False, which would run the code: never repeated (issue 10, item 11).
    message = str(err.value)
    assert "is not a weights file vitpipe trusts" in message and "\n" not in message
    assert "weights_only=False" not in message and "False" not in message and "trust the source" not in message


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(VitpipeError, match="does not exist"):
        build_model(ModelParams(name="test_vit", weights=str(tmp_path / "nope.safetensors")), 3, seed=0)


def test_offline_pretrained_gives_the_clear_message_at_once(monkeypatch, tmp_path):
    """No network here: the Hub is unreachable, so timm's download fails in seconds, not after retries."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr("vitpipe.model.weights._hub_unreachable", lambda: "huggingface.co: unreachable (test)")
    with pytest.raises(VitpipeError) as err:
        build_model(ModelParams(name="test_vit", pretrained=True), 3, seed=0)
    message = str(err.value)
    assert "No pretrained weights could be downloaded for test_vit" in message
    assert "model.pretrained: false" in message and "\n" not in message


def test_an_hf_hub_model_name_offline_fails_at_once_in_one_line(monkeypatch, tmp_path):
    """timm fetches an hf-hub: model's config even without pretrained weights (issue 10, item 6)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr("vitpipe.model.weights._hub_unreachable", lambda: "huggingface.co: unreachable (test)")
    with pytest.raises(VitpipeError) as err:
        build_model(ModelParams(name="hf-hub:timm/deit_tiny_patch16_224.fb_in1k"), 3, seed=0)
    assert "hf-hub:timm/deit_tiny_patch16_224.fb_in1k" in str(err.value) and "\n" not in str(err.value)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(VitpipeError, match="not a timm model"):
        build_model(ModelParams(name="vit_imaginary"), 3, seed=0)


# --- training modes ---------------------------------------------------------------------------------

def test_feature_cache_training_writes_model_metrics_and_history(tmp_path, tiny_index):
    metrics = run_training(tiny_params(), tiny_index, _outputs(tmp_path))
    assert metrics["engine"] == "feature-cache" and metrics["pretrained"] is False
    assert 0 <= metrics["best_val_accuracy"] <= 1 and metrics["val_images"] == 12
    assert metrics["trainable_params"] < metrics["total_params"]
    saved = json.loads((tmp_path / "train.json").read_text())
    model, card = load_model(tmp_path / "model.safetensors")
    provenance = card.provenance  # what made the model, in its own metadata: not a DVC metric
    assert saved.keys() | provenance.keys() | {"train_seconds"} == metrics.keys()  # the time is logged, not written
    assert saved.keys() == {"best_val_accuracy", "best_epoch", "epochs_run", "stopped_early", "train_images",
                            "val_images", "host", "weights"}  # headline numbers, where and which weights: DVC metrics
    assert saved["best_val_accuracy"] == pytest.approx(metrics["best_val_accuracy"], abs=1e-6)
    assert provenance["params_hash"] == tiny_params().training_hash() and provenance["engine"] == "feature-cache"
    rows = history(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[metrics["best_epoch"]]["val_accuracy"]) == pytest.approx(metrics["best_val_accuracy"], abs=1e-6)
    assert card.classes == tiny_index.classes and card.feature_dtype == "bfloat16"


def test_full_fine_tune_updates_the_backbone(tmp_path, tiny_index):
    params = tiny_params(freeze="none", epochs=1)
    before, _ = build_model(params.model, 3, seed=params.train.seed)
    metrics = run_training(params, tiny_index, _outputs(tmp_path))
    after, _ = load_model(tmp_path / "model.safetensors")
    assert metrics["engine"] == "images" and metrics["trainable_params"] == metrics["total_params"]
    assert not torch.equal(before.backbone.patch_embed.proj.weight, after.backbone.patch_embed.proj.weight)


def test_unfreeze_trains_the_head_first_then_everything(tmp_path, tiny_index, caplog):
    params = tiny_params(unfreeze_epoch=1, epochs=2, backbone_lr_scale=0.1)
    caplog.set_level("INFO")
    metrics = run_training(params, tiny_index, _outputs(tmp_path))
    assert "epoch 1: unfreezing the backbone" in caplog.text
    assert metrics["engine"] == "images" and metrics["trainable_params"] == metrics["total_params"]


def test_modern_recipe_options_run_together(tmp_path, tiny_index):
    params = tiny_params(freeze="none", epochs=3, optimizer="adamw", weight_decay=0.05, scheduler="cosine",
                         warmup_epochs=1, mixup=0.2, cutmix=0.2, ema_decay=0.9, grad_clip=1.0, layer_decay=0.75,
                         augment="timm", label_smoothing=0.1)
    run_training(params, tiny_index, _outputs(tmp_path))
    lrs = [float(r["lr"]) for r in history(tmp_path)]
    assert lrs[0] == pytest.approx(1e-5)  # warmup starts at lr / 100
    # then timm's cosine over all 3 epochs (warmup not a prefix, as in timm's train.py)
    assert lrs[1] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / 3))) and lrs[2] < lrs[1]


# --- determinism, checkpoints and resume -----------------------------------------------------------

_TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_params, train_outputs
from vitpipe.data.index import DatasetIndex
from vitpipe.logs import run_stage
from vitpipe.train.training import run_training
out = Path(sys.argv[1])
params = tiny_params(**json.loads(sys.argv[2]))
raise SystemExit(run_stage(lambda: run_training(params, DatasetIndex.load(sys.argv[3]), train_outputs(out)) and 0))
"""


def _train_process(out: Path, index_path: Path, overrides: dict) -> subprocess.Popen:
    script = _TRAIN_SCRIPT.format(tests=str(REPO / "tests"))
    return subprocess.Popen([sys.executable, "-c", script, str(out), json.dumps(overrides), str(index_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


_results = train_results


@pytest.mark.slow
def test_a_killed_run_resumes_and_lands_on_the_same_metrics(tmp_path, tiny_index):
    index_path = tmp_path / "index.json"
    tiny_index.save(index_path)
    overrides = {"freeze": "none", "epochs": 6, "ema_decay": 0.5}
    reference = _train_process(tmp_path / "reference", index_path, overrides)
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    # the checkpoint is in the cache folder, keyed by the run (the reference deleted its own when it finished)
    checkpoint = checkpoint_path(key_parts(tiny_params(**overrides), tiny_index, torch.device("cpu")))
    assert not checkpoint.parent.exists()
    killed_dir = tmp_path / "killed"
    proc = _train_process(killed_dir, index_path, overrides)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(checkpoint, weights_only=True)
    assert state["progress"]["next_epoch"] < 6, "the run finished before the kill"
    assert not (killed_dir / "train.json").exists() and live_files(killed_dir)  # DVCLive's rows so far

    resumed = _train_process(killed_dir, index_path, overrides)
    assert resumed.wait(timeout=300) == 0
    log = resumed.stdout.read()
    assert "resuming from" in log, log
    assert _results(killed_dir) == _results(tmp_path / "reference")  # DVCLive's files too, byte for byte
    assert not checkpoint.parent.exists()  # a finished run deletes its checkpoint


def test_a_finished_run_leaves_no_checkpoint_and_reruns_from_scratch(tmp_path, tiny_index, caplog):
    caplog.set_level("INFO")
    run_training(tiny_params(), tiny_index, _outputs(tmp_path))
    first = _results(tmp_path)
    assert not list((tmp_path / "feature-cache" / "checkpoints").rglob("*"))  # deleted when it finished
    run_training(tiny_params(), tiny_index, _outputs(tmp_path))  # `dvc repro --force`
    assert "resuming" not in caplog.text and _results(tmp_path) == first
    run_training(tiny_params(lr=5e-4), tiny_index, _outputs(tmp_path))  # `dvc exp run -S train.lr=5e-4`
    assert _results(tmp_path) != first


def test_same_seed_same_bytes_on_cpu(tmp_path, tiny_index):
    params = tiny_params(freeze="none", epochs=1)
    run_training(params, tiny_index, _outputs(tmp_path / "a"))
    run_training(params, tiny_index, _outputs(tmp_path / "b"))
    assert _results(tmp_path / "a") == _results(tmp_path / "b")


def test_cuda_requested_without_a_gpu_is_a_clear_error(tmp_path, tiny_index):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(VitpipeError, match="train.device: cuda but no CUDA device"):
        run_training(tiny_params(device="cuda"), tiny_index, _outputs(tmp_path))


def test_empty_valid_split_is_a_clear_error(tmp_path, tiny_index):
    index = dataclasses.replace(tiny_index, splits={**tiny_index.splits, "valid": ()})
    with pytest.raises(VitpipeError, match="the valid split has no images"):
        run_training(tiny_params(), index, _outputs(tmp_path))


def test_torchrun_refuses_the_single_process_feature_cache(monkeypatch, tmp_path, tiny_index):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(VitpipeError, match="torchrun"):
        run_training(tiny_params(), tiny_index, _outputs(tmp_path))


@pytest.mark.parametrize("name", ["test_vit", "test_convnext", "test_resnet", "test_efficientnet", "test_coatnet"])
def test_any_timm_family_trains_evaluates_and_predicts(tmp_path, tiny_index, name):
    """ViT, ConvNeXt, ResNet and EfficientNet (BatchNorm: 0-dim num_batches_tracked buffers) and a
    conv-attention hybrid, through the feature cache, evaluate and predict (issue 10, item 4).
    The CNNs take no img_size argument: model.img_size then sets the input size alone."""
    from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
    from vitpipe.evaluate.predict import ImagePrediction, predict_paths

    params = dataclasses.replace(tiny_params(epochs=1), model=ModelParams(name=name, img_size=32, head_hidden=16))
    out = _outputs(tmp_path)
    metrics = run_training(params, tiny_index, out)
    assert metrics["model"] == name and metrics["engine"] == "feature-cache"
    scored = run_evaluation(params, tiny_index, out.model, EvalOutputs(tmp_path / "test.json", tmp_path / "pc.csv",
                                                                         tmp_path / "pred.csv"))
    assert scored["n_images"] == len(tiny_index.samples("test"))
    image = tiny_index.root / tiny_index.samples("test")[0].path
    (result,) = predict_paths([image], out.model, top_k=2, device="cpu")
    assert isinstance(result, ImagePrediction) and len(result.top) == 2


def test_an_img_size_the_model_cannot_run_at_is_one_line():
    """timm builds a ViT at 17 px, which then fails in its first forward pass, deep in a DataLoader loop."""
    with pytest.raises(VitpipeError, match=r"model.img_size: test_vit does not run at 17 px \(Input height"):
        build_model(ModelParams(name="test_vit", img_size=17), 3, seed=0)


def test_an_image_gone_since_split_check_is_one_line_naming_it(tmp_path, tiny_data, tiny_index):
    import shutil

    shutil.copytree(tiny_data, tmp_path / "data")
    index = dataclasses.replace(tiny_index, root=tmp_path / "data")
    gone = tmp_path / "data" / index.samples("train")[3].path
    gone.unlink()
    with pytest.raises(VitpipeError) as err:
        run_training(tiny_params(epochs=1), index, _outputs(tmp_path / "out"))
    assert str(err.value).startswith(f"{gone}: no longer exists") and "dvc repro" in str(err.value)


def test_stage_script_turns_bad_params_into_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: -1\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "--index", "x", "--model", "m",
                           "--metrics", "t", "--live", "l"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if "ERROR" in ln] == [
        next(ln for ln in proc.stderr.splitlines() if "train.lr must be > 0" in ln)]
