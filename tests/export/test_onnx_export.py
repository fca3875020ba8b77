"""``vitpipe export --format onnx``: one graph with the card in its metadata, scored by onnxruntime
like PyTorch on real photos, and ``vitpipe predict`` on the ``.onnx`` file."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch

from vitpipe.cli import main
from vitpipe.data.images import load_rgb
from vitpipe.evaluate.inference import Predictor
from vitpipe.export.export import export_model
from vitpipe.export.onnx_file import OPSET, ExportedLogits, export_backbone
from vitpipe.export.onnx_predictor import load_onnx_predictor, open_session
from vitpipe.model.classifier import build_model
from vitpipe.model.model_file import card_for, load_model, save_model
from vitpipe.model.transforms import build_eval_transform, eval_spec
from vitpipe.params import ModelParams


@pytest.fixture(scope="module")
def photos(butterflies: Path) -> list[Path]:
    """The 50 real photos of the test split."""
    return sorted((butterflies / "test").rglob("*.jpg"))


@pytest.fixture(scope="module")
def classes(butterflies: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in (butterflies / "test").iterdir() if p.is_dir()))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, classes: tuple[str, ...]) -> Path:
    """A random test_vit with the MLP head, saved as the train stage saves it (bf16 features, bf16 autocast)."""
    params = ModelParams(name="test_vit", img_size=32, head_hidden=16)
    model, info = build_model(params, len(classes), seed=0)
    card = card_for(classes, params, info, spec=eval_spec("seed", info), precision="bf16", feature_dtype="bfloat16")
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model, card)
    return path


@pytest.fixture(scope="module")
def onnx_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = export_model(model_path, "onnx", tmp_path_factory.mktemp("export") / "onnx")
    return path


@pytest.fixture(scope="module")
def batch(photos: list[Path], model_path: Path) -> torch.Tensor:
    _, card = load_model(model_path)
    transform = build_eval_transform(card.eval_transform)
    return torch.stack([transform(load_rgb(p)) for p in photos])  # (50, 3, 32, 32)


def test_metadata_carries_class_names_preprocessing_and_the_card(onnx_path, model_path, classes):
    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    _, card = load_model(model_path)
    assert json.loads(meta["class_names"]) == list(classes)
    pre = json.loads(meta["preprocessing"])
    spec = card.eval_transform
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == (spec.resize, spec.crop, spec.interpolation)
    assert pre["mean"] == list(spec.mean) and pre["std"] == list(spec.std)
    assert meta["feature_rounding"] == "bfloat16" and meta["graph_precision"] == "float32"
    assert json.loads(meta["vitpipe"])["classes"] == list(classes)  # what predict reads
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
    (image,) = proto.graph.input
    batch_dim = image.type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # a named, dynamic batch axis


def test_any_batch_size_runs(onnx_path, batch):
    predictor = load_onnx_predictor(onnx_path)
    for n in (1, 3, len(batch)):
        assert predictor.logits(batch[:n]).shape == (n, len(predictor.card.classes))


def test_logits_equal_pytorch_fp32_on_real_photos_with_identical_top1(onnx_path, model_path, batch):
    # The graph is the model in fp32, features rounded to bf16 as the head was trained on them.
    model, _ = load_model(model_path)
    got = load_onnx_predictor(onnx_path).logits(batch)
    with torch.no_grad():
        expected = ExportedLogits(model, round_features=True)(batch)
        unrounded = ExportedLogits(model, round_features=False)(batch)
    diff = (got - expected).abs()
    print(f"onnxruntime vs PyTorch fp32 on {len(batch)} photos: max |dlogit| {diff.max():.2e}, mean {diff.mean():.2e}")
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert diff.max() < 1e-3  # measured 3.1e-4: one bf16 step where fp32 noise crosses a rounding boundary
    # Without the rounding in the graph the mean difference is 100x larger (measured 2.8e-4 vs 2.9e-6).
    assert diff.mean() < 3e-5 < (got - unrounded).abs().mean()


def test_against_the_bf16_autocast_predictor_top1_differs_only_within_its_rounding(onnx_path, model_path, batch):
    # evaluate and predict run the backbone under bf16 autocast (card.precision); the export is fp32.
    model, card = load_model(model_path)
    predictor = Predictor(model, card, torch.device("cpu"))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.backbone(batch)
    with torch.inference_mode():
        bf16 = predictor.head_logits(features)
    got = load_onnx_predictor(onnx_path).logits(batch)
    err = (got - bf16).abs().max()
    prob_err = (got.softmax(1) - bf16.softmax(1)).abs().max()
    print(f"onnxruntime vs bf16 autocast: max |dlogit| {err:.2e}, max |dprob| {prob_err:.2e}, "
          f"top-1 equal on {(got.argmax(1) == bf16.argmax(1)).sum()}/{len(batch)} (random-init model)")
    assert prob_err < 5e-3  # measured 4.6e-4
    rows = torch.arange(len(batch))
    flipped = got.argmax(1) != bf16.argmax(1)
    margin = bf16[rows, bf16.argmax(1)] - bf16[rows, got.argmax(1)]  # how far bf16 preferred its own class
    assert (margin[flipped] <= 2 * err).all()  # a different top-1 only where bf16's own margin is within its error


def _lines(argv: list[str], capsys) -> tuple[int, list[str]]:
    rc = main(argv)
    return rc, capsys.readouterr().out.splitlines()


def test_predict_on_the_onnx_file_prints_the_same_format_and_probabilities(onnx_path, model_path, photos, capsys):
    files = [str(p) for p in photos[:4]]
    rc_t, torch_lines = _lines(["predict", *files, "--model", str(model_path), "--device", "cpu", "--top-k", "3"], capsys)
    rc_o, onnx_lines = _lines(["predict", *files, "--model", str(onnx_path), "--top-k", "3"], capsys)
    assert rc_t == rc_o == 0 and len(onnx_lines) == len(torch_lines) == 4
    for a, b in zip(torch_lines, onnx_lines):
        assert a.split(": ")[0] == b.split(": ")[0]
        assert len(b.rpartition(": ")[2].split(", ")) == 3

    rc_t = main(["predict", *files, "--model", str(model_path), "--device", "cpu", "--top-k", "100", "--json"])
    doc_t = json.loads(capsys.readouterr().out)
    rc_o = main(["predict", *files, "--model", str(onnx_path), "--top-k", "100", "--json"])
    doc_o = json.loads(capsys.readouterr().out)
    assert rc_t == rc_o == 0 and doc_o["model"] == str(onnx_path) and doc_o["errors"] == []
    for a, b in zip(doc_t["results"], doc_o["results"]):
        assert a["path"] == b["path"] and list(a) == list(b)
        pa = {p["class"]: p["probability"] for p in a["predictions"]}
        pb = {p["class"]: p["probability"] for p in b["predictions"]}
        assert pa.keys() == pb.keys()
        assert max(abs(pa[c] - pb[c]) for c in pa) < 5e-3  # bf16 autocast vs fp32


def test_predict_tta_on_onnx_averages_with_the_flip(onnx_path, batch):
    plain, tta = load_onnx_predictor(onnx_path), load_onnx_predictor(onnx_path, tta=True)
    flipped = plain.logits(batch[:2].flip(-1)).softmax(-1)
    torch.testing.assert_close(tta.probabilities(batch[:2]), (plain.probabilities(batch[:2]) + flipped) / 2)


@pytest.mark.parametrize("content,device,expected", [
    (b"not an onnx graph", "cpu", "onnxruntime cannot load it"),
    (None, "cpu", "no ONNX file"),
    pytest.param("real", "cuda", "--device cuda: this onnxruntime has no CUDA provider",
                 marks=pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                                          reason="this onnxruntime has a CUDA provider")),
    ("real", "tpu", "--device 'tpu': use auto, cpu or cuda"),
])
def test_bad_onnx_file_or_device_is_one_line(tmp_path, onnx_path, photos, capsys, content, device, expected):
    path = tmp_path / "model.onnx"
    if content == "real":
        path = onnx_path
    elif content is not None:
        path.write_bytes(content)
    rc = main(["predict", str(photos[0]), "--model", str(path), "--device", device])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "ERROR" in line]) == 1


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return build_model(ModelParams(name="test_vit", img_size=32), 2, seed=0)[0].backbone.eval()


@pytest.fixture(scope="module")
def backbone_onnx(backbone, tmp_path_factory) -> Path:
    return export_backbone(backbone, tmp_path_factory.mktemp("backbone") / "fp32.onnx", input_size=32)


def test_an_onnx_file_without_the_vitpipe_card_is_refused(backbone_onnx, photos, capsys):
    rc = main(["predict", str(photos[0]), "--model", str(backbone_onnx)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a vitpipe model file" in err and "Traceback" not in err


def _with_card(graph: Path, card_from: Path, out: Path, *, classes: list[str] | None = None) -> Path:
    """``graph`` carrying the vitpipe card of ``card_from`` (its class list replaced by ``classes``)."""
    model, source = onnx.load(str(graph)), onnx.load(str(card_from))
    del model.metadata_props[:]
    for prop in source.metadata_props:
        value = prop.value
        if prop.key == "vitpipe" and classes is not None:
            value = json.dumps({**json.loads(value), "classes": classes})
        model.metadata_props.add(key=prop.key, value=value)
    onnx.save(model, str(out))
    return out


def test_a_graph_that_does_not_fit_its_card_is_refused_at_load(tmp_path, backbone_onnx, onnx_path, photos, capsys):
    """Before: a card on another graph (the backbone's: output features, not logits) or a class list
    longer or shorter than the graph's logits ended in a ValueError or IndexError traceback mid-predict."""
    cases = {_with_card(backbone_onnx, onnx_path, tmp_path / "backbone.onnx"): "has no output 'logits'",
             _with_card(onnx_path, onnx_path, tmp_path / "two.onnx", classes=["a", "b"]): "2 class names",
             _with_card(onnx_path, onnx_path, tmp_path / "many.onnx", classes=[str(i) for i in range(99)]):
                 "99 class names"}
    for path, expected in cases.items():
        rc = main(["predict", str(photos[0]), "--model", str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and expected in err and str(path) in err and "Traceback" not in err, err


def test_backbone_export_fp32_equals_pytorch_and_int8_stays_close(backbone, backbone_onnx, tmp_path, batch):
    fp32 = open_session(backbone_onnx)
    int8 = open_session(export_backbone(backbone, tmp_path / "int8.onnx", input_size=32, int8=True))
    with torch.no_grad():
        expected = backbone(batch[:8])  # (8, D)
    got32 = torch.from_numpy(fp32.run(None, {"image": batch[:8].numpy()})[0])
    got8 = torch.from_numpy(int8.run(None, {"image": batch[:8].numpy()})[0])
    assert (got32 - expected).abs().max() < 1e-4
    cosine = torch.nn.functional.cosine_similarity(got8, expected).min()
    print(f"int8 backbone: min cosine to fp32 {cosine:.4f}")
    assert cosine > 0.95 and not torch.equal(got8, got32)  # quantized, yet the same features
    assert (tmp_path / "int8.onnx").stat().st_size < backbone_onnx.stat().st_size / 2
