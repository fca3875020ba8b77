"""Loading a saved model builds it once, without a random init the file's weights would overwrite."""

from __future__ import annotations

import pytest
import torch

from vitpipe.model import model_file
from vitpipe.model.classifier import build_model
from vitpipe.model.model_file import card_for, load_model, save_model
from vitpipe.model.transforms import eval_spec
from vitpipe.params import ModelParams


def _saved(tmp_path, name: str):
    params = ModelParams(name=name, img_size=32, head_hidden=8)
    model, info = build_model(params, 3, seed=5)
    card = card_for(("a", "b", "c"), params, info, spec=eval_spec("seed", info), precision="fp32", feature_dtype=None)
    save_model(tmp_path / "m.safetensors", model, card)
    return model.eval(), tmp_path / "m.safetensors"


@pytest.mark.parametrize(("name", "builds"), [("test_vit", ["meta"]), ("test_vit_relpos", ["meta", "cpu"])])
def test_a_loaded_model_is_the_saved_one_built_on_the_meta_device_when_it_can_be(tmp_path, monkeypatch, name, builds):
    """test_vit_relpos keeps buffers out of its state dict (relative position indices): those need a real build."""
    saved, path = _saved(tmp_path, name)
    seen = []
    real = model_file.build_model

    def spy(*args, **kwargs):
        seen.append(torch.empty(0).device.type)  # the default device the model is built on
        return real(*args, **kwargs)

    monkeypatch.setattr(model_file, "build_model", spy)
    loaded, card = load_model(path)
    assert seen == builds
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))


def test_a_model_that_cannot_be_built_on_the_meta_device_is_built_for_real(tmp_path, monkeypatch):
    saved, path = _saved(tmp_path, "test_vit")
    real = model_file.build_model

    def no_meta(*args, **kwargs):
        if torch.empty(0).is_meta:
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return real(*args, **kwargs)

    monkeypatch.setattr(model_file, "build_model", no_meta)
    loaded, _ = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))
