"""The feature pass on onnxruntime: per-image features, bit-stable, one cached export per weights and
settings, a damaged file rebuilt, an unwritable cache stepped around, entries never mixed with torch's."""

from __future__ import annotations

import importlib.metadata
import logging

import pytest
import torch

from vitpipe.check.datacheck import check_dataset
from vitpipe.download.synthetic import generate
from vitpipe.errors import VitpipeError
from vitpipe.model import onnx_backbone
from vitpipe.model.classifier import build_model
from vitpipe.model.features import Extractor, FeatureCache, view_seed, weights_digest
from vitpipe.model.onnx_backbone import OnnxBackbone
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.params import DataParams, ModelParams, SyntheticParams

CPU = torch.device("cpu")
SIZE = (32, 32)


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)[0].backbone.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # (6, 3, 32, 32)


@pytest.fixture(scope="module")
def onnx_root(tmp_path_factory):
    """One cache folder for the module: each precision is exported once."""
    return tmp_path_factory.mktemp("onnx")


def _onnx(backbone, precision, root) -> OnnxBackbone:
    return OnnxBackbone(backbone, digest=weights_digest(backbone), precision=precision, root=root)


def test_fp32_equals_pytorch_and_int8_stays_close(backbone, images, onnx_root):
    fp32, int8 = _onnx(backbone, "fp32", onnx_root)(images), _onnx(backbone, "int8", onnx_root)(images)
    with torch.no_grad():
        expected = backbone(images)  # (6, D)
    assert fp32.shape == expected.shape and fp32.dtype == torch.float32
    assert (fp32 - expected).abs().max() < 1e-4
    assert torch.nn.functional.cosine_similarity(int8, expected).min() > 0.95 and not torch.equal(int8, fp32)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_each_image_runs_alone_so_its_feature_never_depends_on_the_others(backbone, images, onnx_root, precision):
    onnx = _onnx(backbone, precision, onnx_root)
    together = onnx(images)
    assert all(torch.equal(together[i], onnx(images[i:i + 1])[0]) for i in range(len(images)))
    assert torch.equal(onnx(images[[0, 5]])[0], together[0])  # other companions, same bytes
    if precision == "int8":  # why: in one batch, dynamic quantization's scales come from every image
        session = onnx.session(SIZE)
        batch = torch.from_numpy(session.run(None, {"image": images.numpy()})[0])
        assert not torch.equal(batch[0], together[0])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_export_is_cached_once_and_a_cold_one_gives_the_same_bytes(backbone, images, tmp_path, onnx_root,
                                                                       precision):
    first = _onnx(backbone, precision, tmp_path)
    feats = first(images)
    (onnx_file,) = tmp_path.glob("*.onnx")
    assert first.export_seconds > 0 and onnx_file.stem == first.file_key(SIZE)
    assert onnx_file.with_suffix(".sha256").read_text().strip() == onnx_backbone.file_sha256(onnx_file)
    again = _onnx(backbone, precision, tmp_path)
    assert torch.equal(again(images), feats) and again.export_seconds == 0  # loaded, not exported
    other = _onnx(backbone, precision, onnx_root)  # exported by another test, in another folder
    assert torch.equal(other(images), feats)
    assert (onnx_root / onnx_file.name).read_bytes() == onnx_file.read_bytes()  # the export is deterministic


def test_the_file_key_follows_weights_precision_input_and_versions(backbone, monkeypatch):
    base = _onnx(backbone, "int8", None)
    key = base.file_key(SIZE)
    assert _onnx(backbone, "fp32", None).file_key(SIZE) != key
    assert base.file_key((48, 48)) != key
    assert OnnxBackbone(backbone, digest="0" * 64, precision="int8").file_key(SIZE) != key
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9" if name == "onnxruntime" else real(name))
    assert base.file_key(SIZE) != key


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "a flipped byte": lambda p: _flip_middle_byte(p),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:1000]),
    "no digest beside it": lambda p: p.with_suffix(".sha256").unlink(),
    "empty": lambda p: p.write_bytes(b""),
}


def _copy_cached(backbone, images, onnx_root, folder, precision="fp32"):
    """The module's cached export of ``precision`` copied into ``folder`` (no export), and its features."""
    feats = _onnx(backbone, precision, onnx_root)(images)
    name = _onnx(backbone, precision, None).file_key(SIZE)
    folder.mkdir(exist_ok=True)
    for suffix in (".onnx", ".sha256"):
        (folder / f"{name}{suffix}").write_bytes((onnx_root / f"{name}{suffix}").read_bytes())
    return folder / f"{name}.onnx", feats


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_file_is_rebuilt(backbone, images, tmp_path, onnx_root, damage, caplog):
    onnx_file, feats = _copy_cached(backbone, images, onnx_root, tmp_path)
    assert _onnx(backbone, "fp32", tmp_path)(images).equal(feats)  # intact: loaded as it is
    DAMAGE[damage](onnx_file)
    rebuilt = _onnx(backbone, "fp32", tmp_path)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(rebuilt(images), feats)
    assert rebuilt.export_seconds > 0 and "is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert onnx_file.with_suffix(".sha256").read_text().strip() == onnx_backbone.file_sha256(onnx_file)


def test_a_file_onnxruntime_cannot_load_is_rebuilt_even_with_a_matching_digest(backbone, images, tmp_path,
                                                                               onnx_root, caplog):
    onnx_file, feats = _copy_cached(backbone, images, onnx_root, tmp_path)
    onnx_file.write_bytes(b"not a graph")
    onnx_file.with_suffix(".sha256").write_text(onnx_backbone.file_sha256(onnx_file))
    with caplog.at_level(logging.WARNING):
        assert torch.equal(_onnx(backbone, "fp32", tmp_path)(images), feats)
    assert "onnxruntime cannot load it" in caplog.text and "rebuilding it" in caplog.text


def test_an_unwritable_cache_folder_warns_and_exports_for_the_run(backbone, images, tmp_path, onnx_root, caplog):
    (tmp_path / "a-file").write_text("not a folder")
    onnx = _onnx(backbone, "int8", tmp_path / "a-file" / "onnx")  # mkdir fails: ENOTDIR
    with caplog.at_level(logging.WARNING):
        feats = onnx(images)
    assert torch.equal(feats, _onnx(backbone, "int8", onnx_root)(images))
    assert "cannot keep the ONNX backbone" in caplog.text and "VITPIPE_CACHE_DIR" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_failed_write_into_the_cache_warns_and_goes_on(backbone, images, tmp_path, monkeypatch, caplog):
    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_backbone.shutil, "copyfile", refuse)
    with caplog.at_level(logging.WARNING):
        feats = _onnx(backbone, "fp32", tmp_path)(images)
    assert feats.shape[0] == len(images) and "the next run exports it again" in caplog.text
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.tmp"))


def test_bad_runtime_precision_device_or_size_is_one_line(backbone, monkeypatch):
    with pytest.raises(VitpipeError, match="train.feature_runtime: 'tensorrt' is not a feature runtime"):
        Extractor.for_backbone(backbone, CPU, "fp32", num_workers=0, runtime="tensorrt")
    with pytest.raises(VitpipeError, match="runs the feature pass on the CPU.*set train.device: cpu"):
        Extractor.for_backbone(backbone, torch.device("cuda"), "fp32", num_workers=0, runtime="onnxruntime")
    with pytest.raises(VitpipeError, match="'bf16' does not run on onnxruntime; use fp32 or int8"):
        OnnxBackbone(backbone, digest="0", precision="bf16")
    monkeypatch.setattr(onnx_backbone, "MAX_WEIGHT_BYTES", 1000)
    with pytest.raises(VitpipeError, match="over the 2 GiB.*set train.feature_runtime: torch") as err:
        _onnx(backbone, "fp32", None)(torch.zeros(1, 3, 32, 32))
    assert "\n" not in str(err.value)


# --- through the feature cache -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grown_index(tmp_path_factory):
    """40 train images: the first 20 are the dataset before it grew."""
    root = tmp_path_factory.mktemp("grown")
    generate(root, SyntheticParams(classes=2, train_per_class=20, valid_per_class=1, test_per_class=1,
                                   image_size=32), seed=1)
    return check_dataset(root, DataParams()).index


@pytest.fixture(scope="module")
def transforms():
    _, info = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)
    spec = eval_spec("seed", info)
    return build_eval_transform(spec), build_train_transform("seed", spec, info)


def _extractor(backbone, runtime, precision, onnx_root):
    extractor = Extractor.for_backbone(backbone, CPU, precision, num_workers=0, runtime=runtime)
    if extractor.onnx is not None:
        extractor.onnx.root = onnx_root
    return extractor


def _features(cache, extractor, index, tf, samples, view=0):
    return cache.features(extractor, index.root, samples, transform=tf, view_seed=view_seed(0, view), desc="v")


@pytest.mark.parametrize("view", [0, 1])
def test_int8_a_grown_cache_serves_the_bytes_a_cold_one_computes(backbone, grown_index, transforms, tmp_path,
                                                                onnx_root, view):
    samples = grown_index.samples("train")
    before = samples[::2]  # the new images fall between the old ones
    extractor = _extractor(backbone, "onnxruntime", "int8", onnx_root)
    grown = FeatureCache(tmp_path / "grown")
    _features(grown, extractor, grown_index, transforms[view], before, view)
    incremental = _features(grown, extractor, grown_index, transforms[view], samples, view)
    assert (grown.computed, grown.reused) == (len(before) + len(samples) - len(before), len(before))
    cold = _features(FeatureCache(tmp_path / "cold"), _extractor(backbone, "onnxruntime", "int8", onnx_root),
                     grown_index, transforms[view], samples, view)
    assert torch.equal(incremental, cold)


def test_torch_and_each_onnxruntime_precision_key_their_own_entries(backbone, grown_index, transforms, tmp_path,
                                                                    onnx_root):
    samples = grown_index.samples("train")[:5]
    cache = FeatureCache(tmp_path)
    runs = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    feats = [_features(cache, _extractor(backbone, r, p, onnx_root), grown_index, transforms[0], samples)
             for r, p in runs]
    assert cache.computed == 15 and cache.reused == 0  # never served another runtime's features
    assert not torch.equal(feats[1], feats[2])
    for (runtime, precision), expected in zip(runs, feats):
        again = FeatureCache(tmp_path)
        got = _features(again, _extractor(backbone, runtime, precision, onnx_root), grown_index, transforms[0],
                        samples)
        assert again.computed == 0 and torch.equal(got, expected)


def test_a_link_in_place_of_the_cached_file_is_not_read_and_only_the_link_is_replaced(backbone, images, tmp_path,
                                                                                      onnx_root, caplog):
    """A cached ONNX file that is a link to a file elsewhere (its digest beside it matching) was loaded
    through the link; links never read outside their root."""
    onnx_file, feats = _copy_cached(backbone, images, onnx_root, tmp_path / "cache")
    outside = tmp_path / "elsewhere.onnx"
    onnx_file.rename(outside)
    onnx_file.symlink_to(outside)
    before = outside.read_bytes()
    rebuilt = _onnx(backbone, "fp32", tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        assert torch.equal(rebuilt(images), feats)
    assert rebuilt.export_seconds > 0 and "is a link" in caplog.text and "rebuilding it" in caplog.text
    assert not onnx_file.is_symlink() and outside.read_bytes() == before
