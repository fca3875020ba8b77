"""The frozen-backbone feature cache: right features, reused when valid, recomputed when not, per image."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sqlite3

import pytest
import torch

from vitpipe.check.datacheck import check_dataset
from vitpipe.data.torchdata import ImageDataset
from vitpipe.download.synthetic import generate
from vitpipe.model import features
from vitpipe.model.classifier import build_model
from vitpipe.errors import VitpipeError
from vitpipe.model.features import (
    FEATURE_MODULES,
    STORAGE_DTYPE,
    Extractor,
    FeatureCache,
    feature_environment,
    view_seed,
    weights_digest,
)
from vitpipe.model.featurestore import FILENAME
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.params import DataParams, ModelParams, SyntheticParams
from vitpipe.runtime import autocast

DEVICE = torch.device("cpu")


@pytest.fixture()
def backbone_and_transforms():
    model, info = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)
    spec = eval_spec("seed", info)
    return model.backbone.eval(), build_eval_transform(spec), build_train_transform("seed", spec, info)


@pytest.fixture(scope="module")
def grown_index(tmp_path_factory):
    """110 train images: the first 60 are the dataset before it grew by 50."""
    root = tmp_path_factory.mktemp("grown")
    generate(root, SyntheticParams(classes=2, train_per_class=55, valid_per_class=1, test_per_class=1,
                                   image_size=32), seed=1)
    result = check_dataset(root, DataParams())
    assert result.accepted, result.errors
    return result.index


class CountingExtractor(Extractor):
    calls: list  # mutable: a frozen dataclass field holding a list of (desc, images computed)

    def batches(self, root, samples, transform, *, seed, desc):
        self.calls.append((desc, len(samples)))
        return super().batches(root, samples, transform, seed=seed, desc=desc)


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
    again = FeatureCache(tmp_path)
    second = _features(again, extractor, tiny_index, eval_tf)
    n = len(tiny_index.samples("train"))
    assert extractor.calls == [("view 0", n)]  # nothing to compute: no loader either
    assert (again.reused, again.computed) == (n, 0)
    assert torch.equal(first, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME, "locks"]  # one file, not one per image
    assert len(list((tmp_path / "locks").iterdir())) == 1  # and one lock per feature key


class BatchSizeSensitive(torch.nn.Module):
    """A stand-in backbone whose output shifts with the batch size, as some CPU kernels' rounding does."""

    num_features = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean((2, 3)) + images.shape[0] / 64  # (B, 3)


def test_adding_images_computes_only_the_new_ones_and_the_same_bytes(tmp_path, grown_index, caplog,
                                                                      backbone_and_transforms):
    _, eval_tf, train_tf = backbone_and_transforms
    samples = grown_index.samples("train")
    before = samples[::2][:30] + samples[1::2][:30]  # 60 images, new ones fall between them
    for view, tf in ((0, eval_tf), (1, train_tf)):
        extractor = _extractor(BatchSizeSensitive(), precision="fp32")
        grown = FeatureCache(tmp_path / "grown")
        _features(grown, extractor, grown_index, tf, view=view, samples=before)
        with caplog.at_level(logging.INFO, logger="vitpipe.model.features"):
            incremental = _features(grown, extractor, grown_index, tf, view=view, samples=samples)
        assert extractor.calls == [(f"view {view}", 60), (f"view {view}", 50)]
        assert f"view {view}: 110 features, 60 from the cache, 50 computed" in caplog.text
        cold = _features(FeatureCache(tmp_path / f"cold{view}"), extractor, grown_index, tf, view=view)
        assert torch.equal(incremental, cold)  # a grown cache serves what a teammate's empty one computes


def test_changed_transform_weights_images_or_precision_invalidate(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, train_tf = backbone_and_transforms
    n = len(tiny_index.samples("train"))
    cache, extractor = FeatureCache(tmp_path), _extractor(backbone)
    _features(cache, extractor, tiny_index, eval_tf)
    _features(cache, extractor, tiny_index, train_tf, view=1)  # another transform
    assert extractor.calls == [("view 0", n), ("view 1", n)]

    other = _extractor(backbone, precision="fp32")
    _features(cache, other, tiny_index, eval_tf)
    assert other.calls == [("view 0", n)]

    with torch.no_grad():
        backbone.patch_embed.proj.weight.add_(0.01)  # new weights -> new digest
    changed = _extractor(backbone)
    assert changed.backbone_digest != extractor.backbone_digest
    _features(cache, changed, tiny_index, eval_tf)
    assert changed.calls == [("view 0", n)]

    samples = list(tiny_index.samples("train"))
    samples[0] = dataclasses.replace(samples[0], sha256="0" * 64)  # an image whose content changed
    _features(cache, changed, tiny_index, eval_tf, samples=samples)
    assert changed.calls == [("view 0", n), ("view 0", 1)]  # that image alone


def test_changed_library_versions_or_code_invalidate(tmp_path, tiny_index, backbone_and_transforms, monkeypatch):
    backbone, eval_tf, _ = backbone_and_transforms
    samples = tiny_index.samples("train")[:3]
    cache, extractor = FeatureCache(tmp_path), _extractor(backbone)
    _features(cache, extractor, tiny_index, eval_tf, samples=samples)
    real = feature_environment()
    for part in ("torch", "torchvision", "timm", "pillow", "libjpeg", "numpy", "code"):
        monkeypatch.setattr(features, "feature_environment", lambda part=part: {**real, part: "changed"})
        _features(cache, extractor, tiny_index, eval_tf, samples=samples)
        assert extractor.calls[-1] == ("view 0", 3), part
    monkeypatch.setattr(features, "feature_environment", lambda: real)
    _features(cache, extractor, tiny_index, eval_tf, samples=samples)
    assert len(extractor.calls) == 8  # back to the first key: served from the cache


def test_the_environment_names_the_installed_libraries_and_the_shaping_code():
    import numpy
    import PIL
    import timm
    import torchvision

    env = feature_environment()
    assert (env["torch"], env["torchvision"], env["timm"], env["pillow"], env["numpy"]) == (
        torch.__version__, torchvision.__version__, timm.__version__, PIL.__version__, numpy.__version__)
    # The example: a change to how images are decoded must not be served from a warm cache.
    assert {"vitpipe.data.images", "vitpipe.data.torchdata", "vitpipe.model.transforms"} <= set(FEATURE_MODULES)


def test_the_code_digest_reads_the_syntax_not_the_bytes(tmp_path, monkeypatch):
    """A comment or blank line in a feature-shaping module recomputes nothing; a changed statement does."""
    from vitpipe import runtime

    package = tmp_path / "vitpipe"
    shutil.copytree(runtime._PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runtime, "_PACKAGE", package)
    before = features._code_digest(features.FEATURE_MODULES)
    module = package / "model" / "transforms.py"
    module.write_text(module.read_text() + "\n# a comment, and blank lines\n\n\n")
    assert features._code_digest(features.FEATURE_MODULES) == before
    module.write_text(module.read_text() + "SCALE = 2\n")
    assert features._code_digest(features.FEATURE_MODULES) != before


def test_augmented_views_are_reproducible_and_distinct(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, train_tf = backbone_and_transforms
    view1 = _features(FeatureCache(tmp_path / "a"), _extractor(backbone), tiny_index, train_tf, view=1)
    again = _features(FeatureCache(tmp_path / "b"), _extractor(backbone, workers=2), tiny_index, train_tf, view=1)
    view2 = _features(FeatureCache(tmp_path / "a"), _extractor(backbone), tiny_index, train_tf, view=2)
    view0 = _features(FeatureCache(tmp_path / "a"), _extractor(backbone), tiny_index, eval_tf)
    assert torch.equal(view1, again)  # per-image seeds: the worker count does not matter
    assert not torch.equal(view1, view2) and not torch.equal(view1, view0)


def test_a_damaged_entry_is_recomputed_alone(tmp_path, tiny_index, backbone_and_transforms):
    backbone, eval_tf, _ = backbone_and_transforms
    extractor = _extractor(backbone)
    first = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    with sqlite3.connect(tmp_path / FILENAME) as conn:  # flip the bytes of one stored feature
        conn.execute("UPDATE features SET data = zeroblob(length(data)) WHERE image = ?",
                     (tiny_index.samples("train")[3].sha256,))
    second = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    assert extractor.calls[-1] == ("view 0", 1) and torch.equal(first, second)
    again = FeatureCache(tmp_path)
    _features(again, extractor, tiny_index, eval_tf)
    assert again.computed == 0 and len(extractor.calls) == 2  # stored again, intact


def test_a_damaged_cache_file_is_stepped_around(tmp_path, tiny_index, backbone_and_transforms, caplog):
    backbone, eval_tf, _ = backbone_and_transforms
    extractor = _extractor(backbone)
    first = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    (tmp_path / FILENAME).write_bytes(b"torn write" * 1000)
    with caplog.at_level(logging.WARNING):
        second = _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
    assert extractor.calls[-1] == ("view 0", len(first)) and torch.equal(first, second)
    assert "is unusable" in caplog.text and "vitpipe cache --clear" in caplog.text


def test_cache_command_reports_and_clears(tmp_path, monkeypatch, capsys, tiny_index, backbone_and_transforms):
    from vitpipe.cli import main

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(cache_dir))
    backbone, eval_tf, _ = backbone_and_transforms
    _features(FeatureCache(), _extractor(backbone), tiny_index, eval_tf)
    assert (cache_dir / "features" / "features.sqlite").is_file()
    assert main(["cache"]) == 0
    assert "3 files" in capsys.readouterr().out  # the store, its key's lock and CACHEDIR.TAG
    assert main(["cache", "--clear"]) == 0
    assert not cache_dir.exists()


class DroppingExtractor(Extractor):
    """A feature pass whose loader drops its last partial batch (DataLoader's drop_last=True)."""

    def batches(self, root, samples, transform, *, seed, desc):
        for start, feats in super().batches(root, samples, transform, seed=seed, desc=desc):
            if start + len(feats) < len(samples) or len(feats) == self.batch_size:
                yield start, feats


def test_a_feature_pass_that_drops_images_is_one_line_not_a_key_error(tmp_path, tiny_index, backbone_and_transforms):
    """Planted by hand for issue 20 (a dropped last batch): the train stage ended in a KeyError on an image's hash."""
    backbone, eval_tf, _ = backbone_and_transforms
    extractor = DroppingExtractor(backbone, weights_digest(backbone), DEVICE, "bf16", batch_size=7, num_workers=0)
    n = len(tiny_index.samples("train"))
    assert n % 7, "the tiny set must leave a partial last batch"
    with pytest.raises(VitpipeError, match=rf"view 0: the feature pass returned {n - n % 7} features for {n} images"):
        _features(FeatureCache(tmp_path), extractor, tiny_index, eval_tf)
