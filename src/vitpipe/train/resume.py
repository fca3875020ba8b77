"""What shapes a training run, so a checkpoint is resumed only by the run that would have made it.

:func:`key_parts` lists it: the params that shape training (every model and train key but the
speed-only ones), the class list, the content of the train and valid images, vitpipe's code that
trains (a hash of its syntax trees), the versions of the libraries that compute (onnxruntime's too when
it computes the features), the device and the host's instruction-set class (``x86_64 exact`` for any x86-64
CPU with ``train.precision: exact``).
A checkpoint stores its parts; :func:`key_changes` names what differs, so a refused resume can say
"train.lr 0.001 -> 0.0005" or "the train images", as torchvision's references store their args.
:func:`key_digest` is one id for the whole, for a checkpoint folder keyed by what shapes training.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from vitpipe.data.index import DatasetIndex
from vitpipe.params import Params
from vitpipe.runtime import ONNX_LIBRARIES, code_digest, device_name, host_class, library_versions

# vitpipe's code that decides a trained model's numbers (the train stage's own deps in dvc.yaml).
TRAINING_CODE = ("train", "model", "data", "params.py", "runtime.py")


def key_parts(params: Params, index: DatasetIndex, device: torch.device) -> dict[str, Any]:
    """Everything that shapes the run, as plain JSON values."""
    parts = {
        "params": params.shaping(),
        "classes": list(index.classes),
        "data": {split: index.fingerprint(split) for split in ("train", "valid")},
        "code": code_digest(*TRAINING_CODE),
        "libraries": library_versions(*(ONNX_LIBRARIES if _onnx_features(params) else ())),
        "device": device_name(device),
        # the CPU's instruction-set class (bf16/fp32 round differently on each); "x86_64 exact" for any
        # x86-64 CPU with train.precision: exact, so a shared cache folder resumes across such hosts
        "host": host_class(device, params.train.precision),
    }
    return json.loads(json.dumps(parts))  # tuples -> lists: equal to what a checkpoint gives back


def _onnx_features(params: Params) -> bool:
    return params.train.uses_feature_cache and params.train.feature_runtime == "onnxruntime"


def key_digest(parts: dict[str, Any]) -> str:
    """A short id of ``parts`` (equal parts, equal id)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def key_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two :func:`key_parts`, in words; empty when they are equal."""
    out = []
    old_params, new_params = saved.get("params", {}), current["params"]
    for key in sorted(set(old_params) | set(new_params)):
        if old_params.get(key, "absent") != new_params.get(key, "absent"):
            out.append(f"{key} {_shown(old_params.get(key, 'absent'))} -> {_shown(new_params.get(key, 'absent'))}")
    if saved.get("classes") != current["classes"]:
        old = saved.get("classes") or []
        out.append(f"the class list ({len(old)} -> {len(current['classes'])} classes)")
    for split, fingerprint in current["data"].items():
        if saved.get("data", {}).get(split) != fingerprint:
            out.append(f"the {split} images")
    if saved.get("code") != current["code"]:
        out.append("vitpipe's training code")
    old_libs = saved.get("libraries", {})
    out += [f"{name} {old_libs.get(name, 'absent')} -> {version}" for name, version in current["libraries"].items()
            if old_libs.get(name) != version]
    if saved.get("device") != current["device"]:
        out.append(f"the device ({saved.get('device')} -> {current['device']})")
    elif saved.get("host") != current["host"]:
        out.append(f"the host ({saved.get('host')} -> {current['host']})")
    return out


def _shown(value: Any) -> str:
    return json.dumps(value)
