"""README.md of an exported folder: how to load it, the params, the test metrics with their counts,
the data-check summary and the provenance, read from the pipeline's files when they are present.

Each file is checked against the model before it is quoted (same class names, same architecture,
params hashed like the model's own ``params_hash``; dvc.lock's record of the model file when there
is one), and what is missing or does not match is said instead of quoted. The provenance is the
model file's own (its metadata): what made these very weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vitpipe.fileio import read_json
from vitpipe.model.model_file import ModelCard
from vitpipe.params import Params


def render_model_card(card: ModelCard, *, model_path: Path, metrics_dir: Path, params: Params | None,
                      dvc_lock: Path = Path("dvc.lock")) -> str:
    """The README.md text (Hugging Face model card: YAML front matter, then markdown)."""
    front = {"library_name": "timm", "pipeline_tag": "image-classification",
             "tags": ["image-classification", "timm", "vitpipe"]}
    parts = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {card.model.name}, fine-tuned by vitpipe: {len(card.classes)} classes", "",
             _usage(card), _settings(card), _params(params, card.provenance),
             _metrics(card, metrics_dir / "test.json", metrics_dir / "per_class.json",
                      _verified(model_path, dvc_lock, metrics_dir / "test.json", metrics_dir / "per_class.json")),
             _data(card, metrics_dir / "data.json"), _provenance(card)]
    return "\n".join(parts).rstrip() + "\n"


def _read_rows(path: Path) -> list[dict[str, Any]] | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, list) and all(isinstance(row, dict) for row in data) else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _usage(card: ModelCard) -> str:
    n, arch, spec = len(card.classes), card.model.name, card.eval_transform
    size = f", img_size={card.model.img_size}" if card.model.img_size else ""
    rounding = ("\nvitpipe's head was trained on backbone features rounded to bfloat16 (the feature cache); "
                "timm feeds it unrounded fp32 features, so its logits equal vitpipe's model run in fp32 "
                "without that rounding, and differ from `vitpipe predict` by the rounding (and by bf16 "
                "autocast when `precision` below is bf16).\n" if card.feature_dtype else "")
    classes = "\n".join(f"| {i} | {name} |" for i, name in enumerate(card.classes))
    return f"""## Use it

```python
import timm
model = timm.create_model("local-dir:path/to/this/folder", pretrained=True).eval()  # reads config.json
# after huggingface_hub.upload_folder(repo_id="USER/NAME", folder_path="path/to/this/folder"):
model = timm.create_model("hf-hub:USER/NAME", pretrained=True).eval()
# the weights file alone: give num_classes in the overlay too, or timm drops the classifier
model = timm.create_model("{arch}", pretrained=True, num_classes={n}{size},
                          pretrained_cfg_overlay=dict(file="model.safetensors", num_classes={n})).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
```

The transform is vitpipe's eval transform: resize the shorter side to {spec.resize} ({spec.interpolation}),
center-crop {spec.crop}, mean {list(spec.mean)}, std {list(spec.std)}.
{rounding}
| index | class |
| --- | --- |
{classes}
"""


def _settings(card: ModelCard) -> str:
    rows = {**{f"model.{k}": v for k, v in dataclasses.asdict(card.model).items()},
            "precision": card.precision, "feature_dtype": card.feature_dtype,
            "feature_runtime": card.feature_runtime, "weights_source": card.weights_source}
    return "## Model settings (from the model file)\n\n" + _table(rows)


def _params(params: Params | None, provenance: dict[str, Any]) -> str:
    head = "## Params\n\n"
    if params is None:
        return head + "No params.yaml here: the params of the run are not known beyond the model settings above.\n"
    if provenance.get("params_hash") != params.training_hash():
        return head + (f"params.yaml (hash {params.training_hash()}) is not the run's (the model file's: "
                       f"{provenance.get('params_hash')}): not listed.\n")
    rows = {f"{section}.{k}": v for section in ("data", "model", "train")
            for k, v in _flat(dataclasses.asdict(getattr(params, section))).items()}
    return head + (f"params.yaml, the run's (params_hash {params.training_hash()} as in the model "
                   f"file):\n\n") + _table(rows)


def _tolerant(title: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """A section renderer that says "not quoted" for a metrics file of another shape (edited by hand,
    another tool's) instead of failing the export on a missing key or a wrong type."""
    def wrap(render: Callable[..., str]) -> Callable[..., str]:
        @functools.wraps(render)
        def guarded(card: ModelCard, path: Path, *args: Any) -> str:
            try:
                return render(card, path, *args)
            except (KeyError, TypeError, ValueError, AttributeError):
                return f"## {title} ({path})\n\n{path}: not laid out as vitpipe writes it: not quoted.\n"
        return guarded
    return wrap


@_tolerant("Test metrics")
def _metrics(card: ModelCard, path: Path, per_class_path: Path, verified: str) -> str:
    head = f"## Test metrics ({path}, {per_class_path.name})\n\n"
    test, rows = _read(path), _read_rows(per_class_path)
    for file, data in ((path, test), (per_class_path, rows)):
        if data is None:
            return head + f"{file}: not found or unreadable (run `dvc repro evaluate`).\n"
    per_class = {row.get("class"): row for row in rows}
    if set(per_class) != set(card.classes):
        return head + f"{per_class_path} scores other classes than this model's: not quoted.\n"
    lines = [verified, "",
             f"- accuracy: {test['accuracy']:.4f} ({test['correct']}/{test['n_images']} images)",
             f"- top-5 accuracy: {test.get('top5_accuracy')}", f"- macro F1: {test.get('macro_f1')}",
             f"- loss: {test.get('loss')}", "", "| class | accuracy | correct / images |", "| --- | --- | --- |"]
    try:
        lines += [f"| {name} | {'—' if c.get('accuracy') is None else format(c['accuracy'], '.4f')} | "
                  f"{c['correct']}/{c['support']} |" for name, c in per_class.items()]
    except (KeyError, TypeError, ValueError, AttributeError):  # the rows, not test.json, are another shape
        return head + f"{per_class_path}: not laid out as vitpipe writes it: not quoted.\n"
    return head + "\n".join(lines) + "\n"


@_tolerant("Data check")
def _data(card: ModelCard, path: Path) -> str:
    head = f"## Data check ({path})\n\n"
    data = _read(path)
    if data is None:
        return head + f"{path}: not found or unreadable (run `dvc repro split-check`).\n"
    if list(data.get("classes", [])) != list(card.classes):
        return head + f"{path} lists other classes than this model's: not quoted.\n"
    dup = data.get("duplicates", {})
    rows = {"accepted": data.get("accepted"), "classes": data.get("n_classes"),
            **{f"images ({split})": s.get("images") for split, s in data.get("splits", {}).items()},
            "errors": data.get("n_errors"), "warnings": data.get("n_warnings"),
            "duplicates within a split": dup.get("within_split"), "duplicates across splits": dup.get("cross_split"),
            "skipped images": data.get("n_skipped_images"), "stray files": data.get("n_stray_files"),
            "converted to RGB": data.get("converted")}
    return head + _table(rows)


def _provenance(card: ModelCard) -> str:
    head = "## Provenance (the model file's metadata)\n\n"
    if not card.provenance:
        return head + "This model file records no provenance (an older vitpipe's): retrain it to record one.\n"
    return head + _table(card.provenance)


def _verified(model_path: Path, dvc_lock: Path, *metrics: Path) -> str:
    """Whether dvc.lock says the evaluate stage scored this very file, and wrote ``metrics`` as they are."""
    def rel(path: Path) -> str:
        return Path(os.path.relpath(Path(path).absolute(), dvc_lock.absolute().parent)).as_posix()

    def md5(path: Path) -> str | None:
        try:
            return hashlib.md5(Path(path).read_bytes()).hexdigest()  # noqa: S324 - DVC's own file hash
        except OSError:
            return None

    try:
        stage = yaml.safe_load(dvc_lock.read_text(encoding="utf-8"))["stages"]["evaluate"]
        deps, outs = ({d.get("path"): d.get("md5") for d in stage.get(kind) or () if isinstance(d, dict)}
                      for kind in ("deps", "outs"))
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):  # ValueError: not UTF-8
        return f"Not checked against the model file ({dvc_lock} has no evaluate stage here)."
    recorded, actual = deps.get(rel(model_path)), md5(model_path)
    if recorded is None:  # evaluate scored another path (export --model elsewhere), or dvc.lock has no md5 for it
        scored = ", ".join(sorted(p for p in deps if str(p).endswith((".safetensors", ".onnx")))) or "no model file"
        return (f"Caution: {dvc_lock} records evaluate scoring {scored}, not {rel(model_path)}: these metrics may "
                f"be another model's.")
    if recorded != actual:
        return (f"Caution: {dvc_lock} records evaluate's {rel(model_path)} as md5 {recorded}, this model file is "
                f"{actual}: these metrics may be another model's.")
    edited = [rel(m) for m in metrics if rel(m) in outs and outs[rel(m)] != md5(m)]
    if edited:
        return (f"Caution: {dvc_lock} records evaluate writing other bytes to {', '.join(edited)} (edited after "
                f"`dvc repro`?): these numbers may not be the evaluate stage's.")
    return f"Scored on this very model file ({dvc_lock}: evaluate's {rel(model_path)}, md5 {actual})."


def _flat(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _table(rows: dict[str, Any]) -> str:
    body = "\n".join(f"| {k} | {'null' if v is None else v} |" for k, v in _flat(rows).items())
    return f"| key | value |\n| --- | --- |\n{body}\n"
