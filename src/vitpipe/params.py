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
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from vitpipe.errors import VitpipeError

PARAMS_FILE = Path("params.yaml")


def _rule(doc: str = "", **limits: Any) -> dict[str, Any]:
    """Field metadata: ``ge``/``gt``/``le``/``lt`` bounds and a ``pattern`` for strings."""
    return {"doc": doc, **limits}


@dataclass(frozen=True)
class SyntheticParams:
    """The embedded synthetic butterfly set (``data.source: synthetic``)."""

    classes: int = field(default=8, metadata=_rule(ge=2, le=26))
    train_per_class: int = field(default=48, metadata=_rule(ge=1))
    valid_per_class: int = field(default=12, metadata=_rule(ge=1))
    test_per_class: int = field(default=12, metadata=_rule(ge=1))
    image_size: int = field(default=160, metadata=_rule(ge=32, le=1024))


@dataclass(frozen=True)
class DataParams:
    """Where the images come from and how strictly they are checked."""

    source: str = "synthetic"
    sha256: Optional[str] = field(default=None, metadata=_rule(pattern=r"[0-9a-fA-F]{64}"))
    seed: int = field(default=0, metadata=_rule(ge=0))
    val_fraction: float = field(default=0.1, metadata=_rule(ge=0.0, lt=1.0))
    test_fraction: float = field(default=0.1, metadata=_rule(ge=0.0, lt=1.0))
    bad_images: Literal["refuse", "skip"] = "refuse"
    strict: bool = False
    min_class_images: int = field(default=5, metadata=_rule(ge=1))
    max_extract_gb: float = field(default=50.0, metadata=_rule(gt=0.0))
    workers: int = field(default=0, metadata=_rule(ge=0))
    synthetic: SyntheticParams = SyntheticParams()

    def __post_init__(self) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise VitpipeError(
                f"{PARAMS_FILE}: data.val_fraction + data.test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}; lower one of them."
            )


@dataclass(frozen=True)
class ModelParams:
    """The timm model, its weights and the classifier head that replaces its own."""

    name: str = "deit_tiny_patch16_224"
    pretrained: bool = False
    weights: Optional[str] = None
    head_hidden: int = field(default=512, metadata=_rule(ge=0))
    dropout: float = field(default=0.3, metadata=_rule(ge=0.0, lt=1.0))
    img_size: Optional[int] = field(default=None, metadata=_rule(ge=16, le=1024))


@dataclass(frozen=True)
class TrainParams:
    """Optimisation, fine-tune mode, augmentation and speed settings of the train stage."""

    seed: int = field(default=42, metadata=_rule(ge=0))
    device: str = field(default="auto", metadata=_rule(pattern=r"auto|cpu|cuda(:\d+)?"))
    epochs: int = field(default=10, metadata=_rule(ge=1))
    batch_size: int = field(default=128, metadata=_rule(ge=1))
    val_batch_size: int = field(default=32, metadata=_rule(ge=1))
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = field(default=1e-3, metadata=_rule(gt=0.0, le=10.0))
    weight_decay: float = field(default=0.0, metadata=_rule(ge=0.0))
    scheduler: Literal["step", "cosine"] = "step"
    step_size: int = field(default=3, metadata=_rule(ge=1))
    gamma: float = field(default=0.97, metadata=_rule(gt=0.0, le=1.0))
    warmup_epochs: int = field(default=0, metadata=_rule(ge=0))
    min_lr: float = field(default=0.0, metadata=_rule(ge=0.0))
    label_smoothing: float = field(default=0.1, metadata=_rule(ge=0.0, lt=1.0))
    freeze: Literal["backbone", "none"] = "backbone"
    unfreeze_epoch: Optional[int] = field(default=None, metadata=_rule(ge=1))
    backbone_lr_scale: float = field(default=1.0, metadata=_rule(gt=0.0, le=1.0))
    layer_decay: Optional[float] = field(default=None, metadata=_rule(gt=0.0, le=1.0))
    mixup: float = field(default=0.0, metadata=_rule(ge=0.0))
    cutmix: float = field(default=0.0, metadata=_rule(ge=0.0))
    ema_decay: float = field(default=0.0, metadata=_rule(ge=0.0, lt=1.0))
    grad_clip: float = field(default=0.0, metadata=_rule(ge=0.0))
    augment: Literal["seed", "timm"] = "seed"
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    cache_views: int = field(default=1, metadata=_rule(ge=0, le=64))
    image_source: Literal["auto", "loader", "decoded"] = "auto"
    num_workers: int = field(default=2, metadata=_rule(ge=0))

    def __post_init__(self) -> None:
        if self.warmup_epochs >= self.epochs:
            _fail("train.warmup_epochs", f"must be < train.epochs ({self.epochs})", self.warmup_epochs)
        if self.unfreeze_epoch is not None:
            if self.freeze != "backbone":
                _fail("train.unfreeze_epoch", "needs train.freeze: backbone", self.unfreeze_epoch)
            if self.unfreeze_epoch >= self.epochs:
                _fail("train.unfreeze_epoch", f"must be < train.epochs ({self.epochs})", self.unfreeze_epoch)
        if self.image_source == "decoded" and self.augment != "seed":
            _fail("train.image_source", "decoded needs train.augment: seed (timm's crops need full images)",
                  self.image_source)
        if self.layer_decay is not None and self.freeze == "backbone" and self.unfreeze_epoch is None:
            _fail("train.layer_decay", "needs a trained backbone (train.freeze: none or train.unfreeze_epoch)",
                  self.layer_decay)

    @property
    def uses_feature_cache(self) -> bool:
        """Whether the backbone stays frozen for the whole run and its features are cached."""
        return self.freeze == "backbone" and self.unfreeze_epoch is None and self.cache_views > 0


@dataclass(frozen=True)
class EvaluateParams:
    """How the test split is scored."""

    batch_size: int = field(default=32, metadata=_rule(ge=1))
    tta: bool = False


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()

    def training_hash(self) -> str:
        """Hash of everything that shapes the trained weights; a checkpoint resumes only on a match."""
        shaping = {"data": dataclasses.asdict(self.data), "model": dataclasses.asdict(self.model),
                   "train": {k: v for k, v in dataclasses.asdict(self.train).items()
                             if k not in _NOT_SHAPING}}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


# Train settings that change speed or where work runs, never the result on a given device.
_NOT_SHAPING = {"num_workers", "compile", "channels_last", "device", "image_source"}


def _fail(key: str, what: str, value: Any) -> typing.NoReturn:
    raise VitpipeError(f"{PARAMS_FILE}: {key} {what}, got {value!r}. Fix it in {PARAMS_FILE} "
                       f"or with `dvc exp run -S {key}=...`.")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Checks ``value`` against the annotation ``kind`` and returns it in that type."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _coerce(key, value, args[0])
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            _fail(key, "must be one of " + " | ".join(map(str, choices)), value)
        return value
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


def _check_limits(key: str, value: Any, meta: dict[str, Any]) -> None:
    if value is None:
        return
    for name, test, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                             ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if name in meta and not test(value, meta[name]):
            _fail(key, f"must be {word} {meta[name]}", value)
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
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
        body = raw.get(section) or {}
        if not isinstance(body, dict):
            _fail(section, "must be a mapping of keys", body)
        values[section] = _build(cls, body, section)
    return Params(**values)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Reads and validates params.yaml."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VitpipeError(f"{path}: not found. Run from the repository root, where params.yaml lives.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise VitpipeError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}). "
                           f"Fix the syntax there.") from None
    return parse_params(raw)
