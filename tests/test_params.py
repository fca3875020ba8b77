"""The params loader: defaults are the recipe; every bad key or value is one line naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitpipe.errors import VitpipeError
from vitpipe.params import SPEED_ONLY, Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_are_the_tutorial_recipe_with_offline_choices():
    params = load_params(REPO / "params.yaml")
    m, t = params.model, params.train
    assert (m.name, m.head_hidden, m.dropout) == ("deit_tiny_patch16_224", 512, 0.3)
    assert (t.optimizer, t.lr, t.scheduler, t.step_size, t.gamma) == ("adam", 1e-3, "step", 3, 0.97)
    assert (t.epochs, t.batch_size, t.val_batch_size, t.label_smoothing) == (10, 128, 32, 0.1)
    assert (t.freeze, t.augment) == ("backbone", "seed")
    assert params.data.source == "synthetic" and m.pretrained is False
    assert params.evaluate.batch_size == 32


def test_committed_params_equal_the_dataclass_defaults():
    """params.yaml lists every key, with the same values as the code's defaults."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert parse_params(raw) == Params()
    assert set(raw) == {"data", "model", "train", "evaluate"}


def test_scientific_notation_from_dvc_exp_run_is_a_float():
    # PyYAML reads 5e-4 (no dot) as a string; `dvc exp run -S train.lr=5e-4` writes exactly that.
    params = parse_params(yaml.safe_load("train:\n  lr: 5e-4\n"))
    assert params.train.lr == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train:\n  lr: -0.001\n", "train.lr"),
        ("train:\n  lr: fast\n", "train.lr"),
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  epochs: 2.5\n", "train.epochs"),
        ("train:\n  batch_size: true\n", "train.batch_size"),
        ("train:\n  optimizer: sgd\n", "train.optimizer"),
        ("train:\n  scheduler: linear\n", "train.scheduler"),
        ("train:\n  freeze: head\n", "train.freeze"),
        ("train:\n  gamma: 0\n", "train.gamma"),
        ("train:\n  label_smoothing: 1.0\n", "train.label_smoothing"),
        ("train:\n  device: tpu\n", "train.device"),
        ("train:\n  warmup_epochs: 10\n", "train.warmup_epochs"),
        ("train:\n  unfreeze_epoch: 3\n  freeze: none\n", "train.unfreeze_epoch"),
        ("train:\n  unfreeze_epoch: 10\n", "train.unfreeze_epoch"),
        ("train:\n  layer_decay: 0.75\n", "train.layer_decay"),
        ("train:\n  backbone_lr_scale: 0\n", "train.backbone_lr_scale"),
        ("train:\n  ema_decay: 1.0\n", "train.ema_decay"),
        ("train:\n  mixup: -1\n", "train.mixup"),
        ("train:\n  cache_views: -1\n", "train.cache_views"),
        ("train:\n  precision: fp16\n", "train.precision"),
        ("train:\n  feature_runtime: tensorrt\n", "train.feature_runtime"),
        ("train:\n  feature_runtime: 1\n", "train.feature_runtime"),
        ("train:\n  feature_runtime: [onnxruntime]\n", "train.feature_runtime"),
        ("train:\n  feature_runtime: ''\n", "train.feature_runtime"),
        ("train:\n  precision: int8\n", "train.precision"),  # torch runs bf16 or fp32
        ("train:\n  precision: INT8\n  feature_runtime: onnxruntime\n", "train.precision"),
        ("train:\n  feature_runtime: onnxruntime\n", "train.precision"),  # the default bf16 has no ORT kernels
        ("train:\n  compile: yes please\n", "train.compile"),
        ("train:\n  num_workers: AUTO\n", "train.num_workers"),
        ("train:\n  num_workers: -1\n", "train.num_workers"),
        ("train:\n  num_workers: 2.5\n", "train.num_workers"),
        ("train:\n  num_workers: true\n", "train.num_workers"),
        ("train:\n  num_workers: ''\n", "train.num_workers"),
        ("train:\n  num_workers: [2]\n", "train.num_workers"),
        ("train:\n  num_workers: 100000\n", "train.num_workers"),  # each worker a process: a typo, not a plan
        ("data:\n  workers: 100000\n", "data.workers"),
        ("train:\n  lrr: 0.1\n", "train.lrr"),
        ("model:\n  dropout: 1.5\n", "model.dropout"),
        ("model:\n  head_hidden: -1\n", "model.head_hidden"),
        ("model:\n  pretrained: 1\n", "model.pretrained"),
        ("model:\n  name: ''\n", "model.name"),
        ("data:\n  bad_images: ignore\n", "data.bad_images"),
        ("data:\n  sha256: abc\n", "data.sha256"),
        ("data:\n  val_fraction: 0.6\n  test_fraction: 0.5\n", "data.val_fraction"),
        ("data:\n  synthetic:\n    classes: 1\n", "data.synthetic.classes"),
        ("data:\n  synthetic: 3\n", "data.synthetic"),
        ("evaluate:\n  tta: maybe\n", "evaluate.tta"),
        ("evalute:\n  tta: true\n", "evalute"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(text, key):
    with pytest.raises(VitpipeError) as err:
        parse_params(yaml.safe_load(text))
    message = str(err.value)
    assert key in message
    assert "\n" not in message


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(VitpipeError, match=r"unknown key train\.lrr.*\blr\b"):
        parse_params({"train": {"lrr": 0.1}})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(VitpipeError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(VitpipeError, match="not valid YAML"):
        load_params(bad)


def test_num_workers_auto_is_the_cores_this_process_may_use_and_a_number_wins(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert Params().train.num_workers == "auto" and Params().train.loader_workers == 3
    assert parse_params({"train": {"num_workers": 5}}).train.loader_workers == 5
    assert parse_params({"train": {"num_workers": 0}}).train.loader_workers == 0
    assert parse_params({"train": {"num_workers": "auto"}}).train.loader_workers == 3
    with pytest.raises(VitpipeError, match=r"train.num_workers must be an integer or auto, got 'AUTO'"):
        parse_params({"train": {"num_workers": "AUTO"}})


def test_params_are_frozen():
    params = Params()
    with pytest.raises(AttributeError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_training_hash_ignores_speed_settings_only():
    base = Params()
    same = parse_params({"train": {"num_workers": 0, "val_batch_size": 7, "device": "cpu"},
                         "evaluate": {"batch_size": 3}})
    other = parse_params({"train": {"lr": 5e-4}})
    assert base.training_hash() == same.training_hash()
    assert base.training_hash() != other.training_hash()
    # compile and channels_last change float rounding (measured: torch.compile on a CPU), so they shape
    tuned = parse_params({"train": {"freeze": "none", "compile": True, "channels_last": False, "precision": "bf16"}})
    assert {"train.compile", "train.channels_last"} <= set(tuned.shaping())
    assert not SPEED_ONLY & set(tuned.shaping())


def _yaml_comments() -> dict[str, str]:
    """Dotted key -> the comment on its line in params.yaml ('' when it has none)."""
    import re

    comments, stack = {}, []
    for line in (REPO / "params.yaml").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^( *)([A-Za-z_0-9]+):(?: +[^#]*?)?(?: +# (.*))?$", line)
        if not m:
            continue
        stack = stack[: len(m.group(1)) // 2] + [m.group(2)]
        comments[".".join(stack)] = m.group(3) or ""
    return comments


def test_params_yaml_comments_are_the_fields_help():
    """One source for param docs: every key's comment in params.yaml is its field's help text."""
    from vitpipe.params import param_rows

    comments = _yaml_comments()
    wrong = {key: (comments.get(key), text) for key, _, text in param_rows() if comments.get(key) != text}
    assert not wrong, f"params.yaml comments differ from the help in src/vitpipe/params.py: {wrong}"


def test_the_parameter_tables_are_generated_from_the_fields_help():
    from vitpipe.params import reference_markdown

    page = (REPO / "docs" / "parameters.md").read_text(encoding="utf-8")
    block = page.split("<!-- params:begin", 1)[1].split("-->", 1)[1].split("<!-- params:end -->")[0]
    assert block.strip() == reference_markdown().strip(), (
        "docs/parameters.md's parameter tables are stale; replace the block between the params markers with "
        "`python -c 'from vitpipe.params import reference_markdown; print(reference_markdown())'`")


# --- bad params files (issue 10, items 6, 7 and 8) ---------------------------------------------

STAGE_ARGS = {"check_params.py": [], "download.py": ["data/raw"],
              "split_check.py": ["data/raw", "--index", "i.json", "--report", "r.json", "--totals", "t.json"],
              "train.py": ["--index", "i", "--model", "m", "--metrics", "t", "--live", "l"],
              "evaluate.py": ["--index", "i", "--model", "m", "--metrics", "t", "--per-class", "p",
                              "--per-class-json", "j", "--predictions", "q"],
              "export.py": ["--model", "m", "--out", "o"]}


@pytest.mark.parametrize("script", sorted(STAGE_ARGS))
def test_every_stage_script_refuses_an_unknown_section_in_one_line(tmp_path, script):
    assert {p.name for p in (REPO / "stages").glob("*.py")} == set(STAGE_ARGS)  # no stage left out
    (tmp_path / "params.yaml").write_text("trian:\n  lr: 0.1\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / script), *STAGE_ARGS[script]], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "unknown section 'trian'" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


@pytest.mark.parametrize(("content", "expected"), [
    (b"train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", "line 4 is not valid YAML (the key 'lr' appears twice"),
    (b"train:\n  lr: 0.1\ntrain:\n  epochs: 2\n", "line 3 is not valid YAML (the key 'train' appears twice"),
    (b"train:\n  lr: 0.1 # caf\xe9\n", "not UTF-8 text (byte 22 is 0xe9); save it as UTF-8"),
    (None, "is a folder; name the params file itself"),
])
def test_duplicate_keys_non_utf8_and_a_folder_are_one_line(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(VitpipeError) as err:
        load_params(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("what", ["missing", "folder", "duplicate"])
def test_cli_params_option_is_read_or_refused_never_replaced_by_defaults(tmp_path, capsys, what):
    from vitpipe.cli import main

    path = tmp_path / "mine.yaml"
    if what == "folder":
        path.mkdir()
    elif what == "duplicate":
        path.write_text("data:\n  strict: true\n  strict: false\n")
    assert main(["--params", str(path), "check-data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]
@pytest.mark.parametrize(
    ("text", "key", "needs"),
    [
        # the default frozen backbone trains the head on cached features: no mixup, no augmentation
        ("train:\n  mixup: 0.2\n", "train.mixup", "train.cache_views: 0"),
        ("train:\n  cutmix: 1.0\n", "train.cutmix", "train.cache_views: 0"),
        ("train:\n  augment: timm\n", "train.augment", "train.cache_views >= 2"),
        ("train:\n  compile: true\n", "train.compile", "the image engine"),
        ("train:\n  image_source: decoded\n", "train.image_source", "the image engine"),
        ("train:\n  backbone_lr_scale: 0.1\n", "train.backbone_lr_scale", "a trained backbone"),
        ("train:\n  layer_decay: 0.75\n", "train.layer_decay", "a trained backbone"),
        ("train:\n  freeze: none\n  cache_views: 4\n", "train.cache_views", "a frozen backbone"),
        ("train:\n  unfreeze_epoch: 2\n  cache_views: 0\n", "train.cache_views", "a frozen backbone"),
        ("train:\n  min_lr: 0.00001\n", "train.min_lr", "train.scheduler: cosine"),
        ("train:\n  scheduler: cosine\n  step_size: 5\n", "train.step_size", "train.scheduler: step"),
        ("train:\n  scheduler: cosine\n  gamma: 0.5\n", "train.gamma", "train.scheduler: step"),
        # onnxruntime computes the cached features: a trained backbone or the image engine has none
        ("train:\n  feature_runtime: onnxruntime\n  precision: int8\n  freeze: none\n", "train.feature_runtime",
         "the frozen-backbone feature pass"),
        ("train:\n  feature_runtime: onnxruntime\n  precision: fp32\n  unfreeze_epoch: 2\n",
         "train.feature_runtime", "the frozen-backbone feature pass"),
        ("train:\n  feature_runtime: onnxruntime\n  precision: fp32\n  cache_views: 0\n", "train.feature_runtime",
         "train.cache_views >= 1"),
        # the download stage checks the data keys against the source it fetches
        ("data:\n  sha256: " + "a" * 64 + "\n", "data.sha256", "an https:// data.source"),
        ("data:\n  source: /photos\n  synthetic:\n    classes: 3\n", "data.synthetic.classes", "data.source: synthetic"),
    ],
)
def test_a_key_set_where_it_is_not_used_is_refused_naming_what_to_change(text, key, needs):
    """Before: train.mixup with the default frozen backbone got a new params hash and the baseline's
    numbers; every key now takes effect or is refused."""
    with pytest.raises(VitpipeError) as err:
        params = parse_params(yaml.safe_load(text))
        params.data.refuse_unused(params.data.source)
    message = str(err.value)
    assert "\n" not in message and f"{key} is set" in message and needs in message.split("it needs", 1)[1]
    assert f"set {key} back to" in message


@pytest.mark.parametrize("text", [
    "train:\n  mixup: 0.2\n  cache_views: 0\n  precision: bf16\n",
    "train:\n  cutmix: 1.0\n  freeze: none\n  precision: fp32\n",
    "train:\n  augment: timm\n  cache_views: 2\n",
    "train:\n  compile: true\n  unfreeze_epoch: 1\n  precision: bf16\n",
    "train:\n  image_source: loader\n  cache_views: 0\n  precision: bf16\n",
    "train:\n  backbone_lr_scale: 0.1\n  unfreeze_epoch: 1\n  precision: bf16\n",
    "train:\n  min_lr: 0.00001\n  scheduler: cosine\n",
    "train:\n  freeze: none\n  cache_views: 1\n  precision: bf16\n",  # the default value is never refused
    "train:\n  feature_runtime: onnxruntime\n  precision: int8\n",
    "train:\n  feature_runtime: onnxruntime\n  precision: fp32\n  cache_views: 4\n  augment: timm\n",
    "data:\n  sha256: " + "a" * 64 + "\n  source: https://example.org/b.zip\n",
])
def test_the_same_keys_are_accepted_where_they_apply(text):
    params = parse_params(yaml.safe_load(text))
    params.data.refuse_unused(params.data.source)


@pytest.mark.parametrize(("text", "key"), [
    ("data:\n  drop_classes: [[a]]\n", "data.drop_classes"),  # was a TypeError (unhashable) traceback
    ("data:\n  drop_classes: [{a: 1}]\n", "data.drop_classes"),
    ("train: 0\n", "train"),  # a section that is a scalar was read as empty: every key at its default
    ("train: false\n", "train"),
    ("train: []\n", "train"),
    ("data: ''\n", "data"),
    # the first epoch always counts as a gain, so 9 epochs without one end the run at its last epoch anyway
    ("train:\n  patience: 9\n", "train.patience"),
    ("train:\n  epochs: 3\n  patience: 5\n", "train.patience"),
])
def test_hostile_values_of_sections_and_new_keys_are_one_line_naming_the_key(text, key):
    with pytest.raises(VitpipeError) as err:
        parse_params(yaml.safe_load(text))
    message = str(err.value)
    assert key in message and "\n" not in message


def test_patience_that_can_stop_a_run_early_is_accepted():
    assert parse_params(yaml.safe_load("train:\n  patience: 8\n")).train.patience == 8  # epochs 10
    assert parse_params(yaml.safe_load("train:\n  epochs: 3\n  patience: 1\n")).train.patience == 1
    assert parse_params(yaml.safe_load("train:\n")).train == parse_params({}).train  # an empty section
