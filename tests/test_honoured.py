"""Every param is honoured: changing any key of params.yaml (where it applies) changes the stage's
outputs, is refused with one line naming the key, or is speed-only and changes no byte.

The walk runs the stages in-process on tiny data (timm's ``test_vit`` at 32 px): train and evaluate
for the model, train and evaluate sections, download and split-check for the data section.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from conftest import live_files, train_outputs
from safetensors.torch import load_file, save_file

from vitpipe.check.datacheck import run_split_check
from vitpipe.download import http_fetch
from vitpipe.download.sources import check_watch, fetch
from vitpipe.errors import VitpipeError
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.params import SPEED_ONLY, param_rows, parse_params
from vitpipe.train.training import run_training

CHANGES, REFUSED, SAME = "changes", "refused", "same"
# No effect on a CPU, by design and documentation ("CUDA only"); on CUDA it may change float rounding,
# so it stays in the resume key rather than in SPEED_ONLY.
CUDA_ONLY = {"train.channels_last"}

# On the CPU (deterministic), also on a CUDA host.
TINY = (("model.name", "test_vit"), ("model.img_size", 32), ("model.head_hidden", 16), ("train.epochs", 2),
        ("train.batch_size", 8), ("train.val_batch_size", 8), ("train.num_workers", 0), ("train.device", "cpu"))
# train.device: auto is the CPU on a host without CUDA (the same bytes); on a CUDA host it is the GPU, whose
# kernels round otherwise: there the device is part of the resume and feature-cache keys instead.
AUTO_IS_CPU = not torch.cuda.is_available()
BF16 = (("train.precision", "bf16"),)  # the image engine: exact is refused there (it covers the feature path)
IMAGES = (("train.freeze", "none"), ("train.epochs", 1)) + BF16  # the image engine (a fine-tune)
LOOP = (("train.cache_views", 0), ("train.epochs", 1)) + BF16  # the image engine, frozen backbone: the tutorial's loop
COSINE = (("train.scheduler", "cosine"),)
ORT = (("train.feature_runtime", "onnxruntime"), ("train.precision", "fp32"))  # the feature pass on onnxruntime
SYN = (("data.synthetic.classes", 3), ("data.synthetic.train_per_class", 4), ("data.synthetic.valid_per_class", 2),
       ("data.synthetic.test_per_class", 2), ("data.synthetic.image_size", 32))


@dataclass(frozen=True)
class Case:
    """Set ``key`` to ``value`` on top of ``context`` (pairs of key and value; values in <angle brackets>
    are files made by the fixtures), and expect ``outcome`` against the context alone."""

    key: str
    value: Any
    outcome: str
    context: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        where = ",".join(f"{k.split('.')[-1]}={v}" for k, v in self.context)
        return f"{self.key}={self.value}" + (f"[{where}]" if where else "")


TRAIN_CASES = [
    Case("train.seed", 7, CHANGES),
    Case("train.device", "auto", SAME if AUTO_IS_CPU else CHANGES),
    Case("train.epochs", 3, CHANGES),
    Case("train.patience", 1, CHANGES, (("train.epochs", 4), ("train.lr", 1e-9))),  # no gain: stops after epoch 1
    # lr 3e-3: val accuracy 0.33 -> 0.58 at epoch 1, a gain under 0.3: counted as none, so the run stops sooner
    Case("train.min_delta", 0.3, CHANGES, (("train.epochs", 4), ("train.patience", 2), ("train.lr", 3e-3))),
    Case("train.min_delta", 0.1, REFUSED),  # early stopping is off
    Case("train.class_weights", "balanced", CHANGES, (("<index>", "<imbalanced>"),)),
    Case("train.class_weights", "balanced", CHANGES, (("<index>", "<imbalanced>"),) + LOOP),
    Case("train.class_weights", "balanced", REFUSED, LOOP + (("train.mixup", 0.4),)),
    Case("train.batch_size", 4, CHANGES),
    Case("train.val_batch_size", 3, SAME),
    Case("train.val_batch_size", 3, SAME, IMAGES),
    Case("train.optimizer", "adamw", CHANGES, (("train.weight_decay", 0.05),)),  # adamw without decay is adam
    Case("train.lr", 5e-4, CHANGES),
    Case("train.weight_decay", 0.05, CHANGES),
    Case("train.scheduler", "cosine", CHANGES),
    Case("train.step_size", 1, CHANGES),
    Case("train.step_size", 1, REFUSED, COSINE),
    Case("train.gamma", 0.5, CHANGES, (("train.step_size", 1),)),
    Case("train.gamma", 0.5, REFUSED, COSINE),
    Case("train.warmup_epochs", 1, CHANGES),
    Case("train.min_lr", 1e-4, CHANGES, COSINE),
    Case("train.min_lr", 1e-4, REFUSED),
    Case("train.label_smoothing", 0.0, CHANGES),
    Case("train.freeze", "none", CHANGES, BF16),
    Case("train.unfreeze_epoch", 1, CHANGES, BF16),
    Case("train.backbone_lr_scale", 0.1, CHANGES, IMAGES),
    Case("train.backbone_lr_scale", 0.1, REFUSED),
    Case("train.layer_decay", 0.75, CHANGES, IMAGES),
    Case("train.layer_decay", 0.75, REFUSED),
    Case("train.mixup", 0.4, CHANGES, LOOP),
    Case("train.mixup", 0.4, REFUSED),
    Case("train.cutmix", 1.0, CHANGES, LOOP),
    Case("train.cutmix", 1.0, REFUSED),
    Case("train.ema_decay", 0.5, CHANGES),
    Case("train.grad_clip", 0.01, CHANGES),
    Case("train.augment", "timm", CHANGES, (("train.cache_views", 2),)),
    Case("train.augment", "timm", REFUSED),
    Case("train.precision", "fp32", CHANGES),
    Case("train.precision", "bf16", CHANGES),
    Case("train.precision", "exact", REFUSED, IMAGES),  # exact covers the feature path only
    Case("train.precision", "exact", REFUSED, LOOP),
    Case("train.precision", "int8", CHANGES, ORT),
    Case("train.precision", "int8", REFUSED),  # torch runs exact, bf16 or fp32
    Case("train.feature_runtime", "onnxruntime", CHANGES, (("train.precision", "fp32"),)),
    Case("train.feature_runtime", "onnxruntime", REFUSED),  # the default exact does not run on onnxruntime
    Case("train.feature_runtime", "onnxruntime", REFUSED, IMAGES + (("train.precision", "fp32"),)),
    Case("train.channels_last", False, SAME, IMAGES),
    Case("train.compile", True, REFUSED),  # takes effect on the image engine: test_compile_takes_effect
    Case("train.cache_views", 2, CHANGES),
    Case("train.cache_views", 0, CHANGES, BF16),
    Case("train.cache_views", 2, REFUSED, IMAGES),
    Case("train.image_source", "decoded", CHANGES, IMAGES),
    Case("train.image_source", "decoded", REFUSED),
    Case("train.num_workers", 2, SAME),
    Case("train.num_workers", 2, SAME, IMAGES),
    Case("train.num_workers", "auto", SAME),
    Case("model.name", "test_vit2", CHANGES),
    Case("model.pretrained", True, REFUSED),  # offline here: refused at once, naming the key
    Case("model.weights", "<weights>", CHANGES),
    Case("model.head_hidden", 0, CHANGES),
    Case("model.dropout", 0.0, CHANGES),
    Case("model.img_size", 48, CHANGES),
    Case("evaluate.batch_size", 5, SAME),
    Case("evaluate.batch_size", 5, SAME, (("evaluate.tta", True),)),
    Case("evaluate.tta", True, CHANGES),
]

DATA_CASES = [
    Case("data.source", "<train-only>", CHANGES, (("data.source", "<folder>"),)),
    Case("data.sha256", "0" * 64, REFUSED, (("data.source", "<http>"), ("data.sha256", "<sha>"))),
    Case("data.sha256", "0" * 64, REFUSED, (("data.source", "<folder>"),)),
    Case("data.seed", 1, CHANGES, SYN),
    Case("data.seed", 1, CHANGES, (("data.source", "<train-only>"),)),
    Case("data.val_fraction", 0.3, CHANGES, (("data.source", "<train-only>"),)),
    Case("data.test_fraction", 0.3, CHANGES, (("data.source", "<train-only>"),)),
    Case("data.bad_images", "skip", CHANGES, (("data.source", "<bad>"),)),  # refused -> accepted
    Case("data.strict", True, REFUSED, (("data.source", "<duplicate>"),)),
    Case("data.min_class_images", 2, CHANGES, SYN),  # 4 train images per class: reported, then not
    Case("data.max_extract_gb", 1e-6, REFUSED, (("data.source", "<archive>"),)),
    Case("data.workers", 1, SAME, (("data.source", "<folder>"),)),
    Case("data.synthetic.classes", 4, CHANGES, SYN),
    Case("data.synthetic.classes", 4, REFUSED, (("data.source", "<folder>"),)),
    Case("data.synthetic.train_per_class", 5, CHANGES, SYN),
    Case("data.synthetic.valid_per_class", 3, CHANGES, SYN),
    Case("data.synthetic.test_per_class", 3, CHANGES, SYN),
    Case("data.synthetic.image_size", 40, CHANGES, SYN),
    # the dvc.yaml dep that makes DVC see the folder: another path is refused (DVC would watch the wrong one)
    Case("data.watch", "<folder>", CHANGES, (("data.source", "<folder>"), ("data.watch", "<train-only>"))),
    Case("data.watch", "<folder>", REFUSED, SYN),  # the synthetic source is pinned by params
    Case("data.class_aliases", {"AZURE PEACOCK": "AMBER MONARCH"}, CHANGES, (("data.source", "<folder>"),)),
    Case("data.class_aliases", {"NO SUCH FOLDER": "AMBER MONARCH"}, REFUSED, (("data.source", "<folder>"),)),
    Case("data.drop_classes", ["AZURE PEACOCK"], CHANGES, (("data.source", "<folder>"),)),
    Case("data.drop_classes", ["NO SUCH FOLDER"], REFUSED, (("data.source", "<folder>"),)),
    Case("data.near_duplicate_distance", -1, CHANGES, (("data.source", "<folder>"),)),
]


def test_the_walk_covers_every_key_and_speed_only_means_byte_identical():
    keys = {key for key, default, _ in param_rows() if default != "(section)"}
    cases = TRAIN_CASES + DATA_CASES
    assert keys == {c.key for c in cases}, "a param without a case in the walk"
    assert all(k.startswith("<") or k in keys for c in cases for k, _ in c.context), "a context key that is no param"
    same = {c.key for c in cases if c.outcome == SAME}
    on_cuda = set() if AUTO_IS_CPU else {"train.device"}
    assert same == (SPEED_ONLY | CUDA_ONLY) - on_cuda, "a speed-only key must be shown byte-identical, and only those"
    assert not (SPEED_ONLY - on_cuda) & {c.key for c in cases if c.outcome != SAME}


def _set(raw: dict, key: str, value: Any) -> None:
    *sections, name = key.split(".")
    for section in sections:
        raw = raw.setdefault(section, {})
    raw[name] = value


def _raw(pairs, files: dict[str, str]) -> dict:
    raw: dict = {}
    for key, value in pairs:
        _set(raw, key, files.get(value, value) if isinstance(value, str) else value)
    return raw


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _train_and_evaluate(raw: dict, index, work: Path) -> tuple[str, str]:
    """("ok", digest of what train and evaluate wrote) or ("refused", the one-line message)."""
    try:
        params = parse_params(copy.deepcopy(raw))
        run_training(params, index, train_outputs(work))
        run_evaluation(params, index, work / "model.safetensors",
                       EvalOutputs(work / "test.json", work / "per_class.csv", work / "predictions.csv"))
    except VitpipeError as exc:
        return REFUSED, str(exc)
    weights = load_file(str(work / "model.safetensors"))  # the tensors: the metadata repeats the params
    test = json.loads((work / "test.json").read_text())
    return "ok", _digest(*live_files(work).values(), json.dumps(test).encode(),
                         (work / "per_class.csv").read_bytes(), (work / "predictions.csv").read_bytes(),
                         *(k.encode() + weights[k].view(torch.uint8).numpy().tobytes() for k in sorted(weights)))


def _download_and_check(raw: dict, work: Path) -> tuple[str, str]:
    """("ok", digest of data/raw, the index and data.json) or ("refused", the one-line message).

    The download stage checks data.watch before it fetches (stages/download.py); the walk does too
    where a case sets data.watch, so the other cases need not repeat a local source's path there."""
    try:
        data = parse_params(copy.deepcopy(raw)).data
        if "watch" in raw.get("data", {}):
            check_watch(data)
        fetch(data.source, work / "raw", data)
        run_split_check(work / "raw", data, index_path=work / "index.json", report_path=work / "data.json")
    except VitpipeError as exc:
        return REFUSED, str(exc)
    files = sorted(p for p in (work / "raw").rglob("*") if p.is_file())
    index = json.loads((work / "index.json").read_text())
    index.pop("root")
    return "ok", _digest(json.dumps(index).encode(), (work / "data.json").read_bytes(),
                         *(p.relative_to(work / "raw").as_posix().encode() + p.read_bytes() for p in files))


def _check(case: Case, run) -> None:
    before, after = run(case.context), run(case.context + ((case.key, case.value),))
    if case.outcome == REFUSED:
        kind, message = after
        assert kind == REFUSED, f"{case.id}: not refused"
        assert case.key in message and "\n" not in message, f"{case.id}: {message}"
    elif case.outcome == SAME:
        assert before[0] == "ok" and after == before, f"{case.id}: changed a byte, or was refused: {after}"
    else:
        assert after[0] == "ok" and after != before, f"{case.id}: {after[1] if after[0] != 'ok' else 'no change'}"


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr("vitpipe.model.weights._hub_unreachable", lambda: "huggingface.co: unreachable (test)")


@pytest.mark.slow
def test_every_model_train_and_evaluate_key_is_honoured(tmp_path, tiny_index, offline_hub):
    torch.manual_seed(1)
    other = timm.create_model("test_vit", num_classes=0, img_size=32)
    weights = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    files, seen = {"<weights>": str(weights)}, {}

    # <index>: <imbalanced> trains on a copy of the tiny set with most of one class's images left out
    first = [s for s in tiny_index.samples("train") if s.label == 0]
    kept = tuple(s for s in tiny_index.samples("train") if s.label != 0 or s in first[:3])
    indexes = {"<imbalanced>": dataclasses.replace(tiny_index, splits={**tiny_index.splits, "train": kept})}

    def run(pairs):
        index = indexes[dict(pairs)["<index>"]] if "<index>" in dict(pairs) else tiny_index
        raw = _raw(TINY + tuple(p for p in pairs if p[0] != "<index>"), files)
        key = json.dumps(raw, sort_keys=True) + str(id(index))
        if key not in seen:
            seen[key] = _train_and_evaluate(raw, index, tmp_path / f"run{len(seen)}")
        return seen[key]

    failures = []
    for case in TRAIN_CASES:
        try:
            _check(case, run)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert not failures, failures


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def sources(tmp_path, tiny_data, monkeypatch) -> Iterator[dict[str, str]]:
    """The data sources of DATA_CASES: folders, an archive, and the archive served over http."""
    monkeypatch.setattr(http_fetch, "RETRY_DELAYS_S", (0.0, 0.0))
    made = tmp_path / "sources"
    folder = made / "folder"
    shutil.copytree(tiny_data, folder)
    shutil.copytree(tiny_data / "train", made / "train-only" / "train")
    shutil.copytree(tiny_data, made / "bad")
    next((made / "bad" / "train").glob("*/*")).write_bytes(b"")  # zero bytes: unreadable
    shutil.copytree(tiny_data, made / "duplicate")
    first = next((made / "duplicate" / "train").glob("*/*"))
    shutil.copy(first, first.with_name("copy-" + first.name))
    archive = made / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(made)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield {"<folder>": str(folder), "<train-only>": str(made / "train-only"), "<bad>": str(made / "bad"),
           "<duplicate>": str(made / "duplicate"), "<archive>": str(archive),
           "<http>": f"http://127.0.0.1:{httpd.server_address[1]}/tiny.zip",
           "<sha>": hashlib.sha256(archive.read_bytes()).hexdigest()}
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.mark.slow
def test_every_data_key_is_honoured(tmp_path, sources):
    seen = {}

    def run(pairs):
        raw = _raw(pairs, sources)
        key = json.dumps(raw, sort_keys=True)
        if key not in seen:
            seen[key] = _download_and_check(raw, tmp_path / f"run{len(seen)}")
        return seen[key]

    failures = []
    for case in DATA_CASES:
        try:
            _check(case, run)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert not failures, failures


@pytest.mark.slow
def test_compile_takes_effect_on_the_image_engine(tmp_path, tiny_index):
    """torch.compile changes float rounding (fused kernels): the bytes differ, so it shapes training.
    Its own test: compiling test_vit takes about a minute on 2 CPU cores."""
    case = Case("train.compile", True, CHANGES, IMAGES)
    seen = {}

    def run(pairs):
        key = json.dumps(pairs)
        if key not in seen:
            seen[key] = _train_and_evaluate(_raw(TINY + pairs, {}), tiny_index, tmp_path / f"run{len(seen)}")
        return seen[key]

    _check(case, run)
