"""The frozen-backbone feature cache: right features, reused when valid, recomputed when not."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vitpipe.data.torchdata import ImageDataset
from vitpipe.model.classifier import build_model
from vitpipe.model.features import (
    STORAGE_DTYPE,
    Extractor,
    FeatureCache,
    view_seed,
    weights_digest,
)
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.params import ModelParams
from vitpipe.runtime import autocast

DEVICE = torch.device("cpu")


@pytest.fixture()
def backbone_and_transforms():
    model, info = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)
    spec = eval_spec("seed", info)
    return model.backbone.eval(), build_eval_transform(spec), build_train_transform("seed", spec, info)


class CountingExtractor(Extractor):
    calls: list  # mutable: a frozen dataclass field holding a list

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs.get("desc"))
        return super().__call__(*args, **kwargs)


def _extractor(backbone, *, workers: int = 0, precision: str = "bf16") -> CountingExtractor:
    ex = CountingExtractor(backbone, weights_digest(backbone), DEVICE, precision, batch_size=7, num_workers=workers)
    object.__setattr__(ex, "calls", [])
    return ex


def _features(cache, extractor, index, transform, *, view: int = 0, samples=None):
    samples = index.samples("train") if samples is None else samples
    return cache.features(extractor, index.root, samples, transform=transform, view_seed=view_seed(0, view),
                          desc=f"view {view}")


def test_cached_features_match_a_direct_backbone_pass(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, _ = backbone_and_transforms
    feats = _features(FeatureCache(tmp_path), _extractor(backbone), tiny_index, eval_tf)
    dataset = ImageDataset(tiny_index.root, tiny_index.samples("train"), eval_tf)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, 3, 32, 32), one batch
    with torch.inference_mode(), autocast(DEVICE, "bf16"):
        direct = backbone(images).to(STORAGE_DTYPE)
    assert feats.shape == (len(dataset), backbone.num_features) and feats.dtype == STORAGE_DTYPE
    torch.testing.assert_close(feats.float(), direct.float(), atol=0.05, rtol=0.02)  # bf16 batching noise


def test_second_request_is_served_from_the_cache(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, _ = backbone_and_transforms
    extractor = _extractor(backbone)
    first = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    second = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    assert extractor.calls == ["view 0"]
    assert torch.equal(first, second)


def test_changed_transform_weights_images_or_precision_invalidate(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, train_tf = backbone_and_transforms
    cache, extractor = FeatureCache(tmp_path), _extractor(backbone)
    _features(cache, extractor, tiny_index, eval_tf)
    _features(cache, extractor, tiny_index, train_tf, view=1)  # another transform
    assert len(extractor.calls) == 2

    other = _extractor(backbone, precision="fp32")
    _features(cache, other, tiny_index, eval_tf)
    assert other.calls == ["view 0"]

    with torch.no_grad():
        backbone.patch_embed.proj.weight.add_(0.01)  # new weights -> new digest
    changed = _extractor(backbone)
    assert changed.backbone_digest != extractor.backbone_digest
    _features(cache, changed, tiny_index, eval_tf)
    assert changed.calls == ["view 0"]

    samples = list(tiny_index.samples("train"))
    samples[0] = dataclasses.replace(samples[0], sha256="0" * 64)  # an image whose content changed
    _features(cache, changed, tiny_index, eval_tf, samples=samples)
    assert changed.calls == ["view 0", "view 0"]


def test_augmented_views_are_reproducible_and_distinct(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, train_tf = backbone_and_transforms
    view1 = _features(FeatureCache(tmp_path / "a"), _extractor(backbone), tiny_index, train_tf, view=1)
    again = _features(FeatureCache(tmp_path / "b"), _extractor(backbone, workers=2), tiny_index, train_tf, view=1)
    view2 = _features(FeatureCache(tmp_path / "a"), _extractor(backbone), tiny_index, train_tf, view=2)
    view0 = _features(FeatureCache(tmp_path / "a"), _extractor(backbone), tiny_index, eval_tf)
    assert torch.equal(view1, again)  # per-image seeds: the worker count does not matter
    assert not torch.equal(view1, view2) and not torch.equal(view1, view0)


def test_unreadable_cache_entry_is_recomputed(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, _ = backbone_and_transforms
    extractor = _extractor(backbone)
    first = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    for entry in tmp_path.glob("*.safetensors"):
        entry.write_bytes(b"torn write")
    second = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    assert len(extractor.calls) == 2 and torch.equal(first, second)


def test_cache_command_reports_and_clears(tmp_path, monkeypatch, capsys, tiny_index, backbone_and_transforms):
    from vitpipe.cli import main

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(cache_dir))
    backbone, eval_tf, _ = backbone_and_transforms
    _features(FeatureCache(), _extractor(backbone), tiny_index, eval_tf)
    assert len(list((cache_dir / "features").glob("*.safetensors"))) == 1
    assert main(["cache"]) == 0
    assert "2 files" in capsys.readouterr().out  # the entry and CACHEDIR.TAG
    assert main(["cache", "--clear"]) == 0
    assert not cache_dir.exists()
