"""Class reconciliation from params (vitpipe.check.classmap): aliases, drops, and the fix a refusal names."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vitpipe.check.classmap import class_fix, set_param_line
from vitpipe.check.datacheck import check_dataset, format_report, run_split_check
from vitpipe.errors import VitpipeError
from vitpipe.params import DataParams, load_params, parse_params

REPO = Path(__file__).resolve().parents[2]
DATA = DataParams(min_class_images=2)


def _dataset(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<i>.png``, each a distinct noise image."""
    seed = 0
    for split, classes in layout.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                rgb = np.random.default_rng(seed).integers(0, 256, (16, 24, 3), dtype=np.uint8)
                Image.fromarray(rgb).save(root / split / name / f"{i:03d}.png")
    return root


def _edition(root: Path) -> Path:
    """The 100-species edition's defects in small: POLYGONIA in train is QUESTION MARK in valid and
    test, and valid has no GREAT EGGFLY."""
    return _dataset(root, {"train": {"ADONIS": 3, "GREAT EGGFLY": 3, "POLYGONIA": 3},
                           "valid": {"ADONIS": 1, "QUESTION MARK": 2},
                           "test": {"ADONIS": 1, "GREAT EGGFLY": 1, "QUESTION MARK": 1}})


def _with(**data: object) -> DataParams:
    return dataclasses.replace(DATA, **data)


def test_the_edition_is_refused_with_the_fix_and_no_alias_is_picked(tmp_path):
    root = _edition(tmp_path / "raw")
    with pytest.raises(VitpipeError) as info:
        run_split_check(root, DATA, index_path=tmp_path / "index.json", report_path=tmp_path / "data.json")
    message = str(info.value)
    assert "\n" not in message
    assert "valid/QUESTION MARK: class not in train/" in message
    alias = "`dvc exp run -S '++data.class_aliases={QUESTION MARK: TRAIN_CLASS}'`"
    assert alias in message  # vitpipe never writes POLYGONIA into the line itself ...
    assert "train classes with no folder in valid/ and test/: POLYGONIA" in message  # ... it names the candidates
    assert "`dvc exp run -S 'data.drop_classes=[QUESTION MARK]'`" in message
    assert not (tmp_path / "index.json").exists()


def test_an_alias_maps_a_folder_of_every_split_to_the_train_class(tmp_path):
    root = _edition(tmp_path / "raw")
    data = _with(class_aliases={"QUESTION MARK": "POLYGONIA"})
    index = run_split_check(root, data, index_path=tmp_path / "index.json", report_path=tmp_path / "data.json")
    assert index.classes == ("ADONIS", "GREAT EGGFLY", "POLYGONIA")
    assert {s.path: s.label for s in index.samples("valid")} == {
        "valid/ADONIS/000.png": 0, "valid/QUESTION MARK/000.png": 2, "valid/QUESTION MARK/001.png": 2}
    assert [s.label for s in index.samples("test") if "QUESTION" in s.path] == [2]
    saved = json.loads((tmp_path / "index.json").read_text())
    assert saved["class_aliases"] == {"QUESTION MARK": "POLYGONIA"} and saved["dropped_classes"] == []
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["class_aliases"] == {"QUESTION MARK": "POLYGONIA"}
    assert report["missing_classes"] == {"valid": ["GREAT EGGFLY"]}  # still trained; valid has none of it
    assert report["splits"]["valid"]["classes"] == {"ADONIS": 1, "POLYGONIA": 2}


def test_two_folders_of_one_split_can_be_merged_into_one_class(tmp_path):
    root = _dataset(tmp_path, {"train": {"Cat": 2, "cat": 3, "Dog": 2}, "valid": {"Cat": 1, "Dog": 1},
                               "test": {"cat": 1, "Dog": 1}})
    result = check_dataset(root, _with(class_aliases={"cat": "Cat"}))
    assert result.accepted, result.errors
    assert result.index.classes == ("Cat", "Dog") and result.report["splits"]["train"]["classes"]["Cat"] == 5
    assert [s.path for s in result.index.samples("test") if s.label == 0] == ["test/cat/000.png"]


def test_names_that_differ_only_in_case_spaces_or_dashes_are_suggested(tmp_path):
    root = _dataset(tmp_path, {"train": {"RED ADMIRAL": 2, "MONARCH": 2}, "valid": {"red-admiral": 1, "Monarch": 1},
                               "test": {"RED ADMIRAL": 1, "MONARCH": 1}})
    result = check_dataset(root, DATA)
    text = format_report(result)
    assert "`dvc exp run -S '++data.class_aliases={Monarch: MONARCH, red-admiral: RED ADMIRAL}'`" in text
    assert "differ from a train class only in case" in text and "TRAIN_CLASS" not in text
    fixed = check_dataset(root, _with(class_aliases={"red-admiral": "RED ADMIRAL", "Monarch": "MONARCH"}))
    assert fixed.accepted, fixed.errors


def test_dropped_classes_are_left_out_of_every_split_unread_and_reported(tmp_path):
    root = _edition(tmp_path)
    (root / "valid" / "QUESTION MARK" / "broken.jpg").write_bytes(b"not a jpeg")  # never read: dropped
    result = check_dataset(root, _with(drop_classes=("QUESTION MARK", "POLYGONIA")))
    assert result.accepted, result.errors
    assert result.index.classes == ("ADONIS", "GREAT EGGFLY")
    assert not any("QUESTION" in s.path or "POLYGONIA" in s.path
                   for split in ("train", "valid", "test") for s in result.index.samples(split))
    assert result.report["dropped_classes"] == {"POLYGONIA": {"train": 3}, "QUESTION MARK": {"test": 1, "valid": 3}}
    assert result.index.dropped_classes == ("POLYGONIA", "QUESTION MARK")


def test_an_alias_or_drop_that_names_nothing_is_refused(tmp_path):
    root = _edition(tmp_path)
    result = check_dataset(root, _with(class_aliases={"QUESTION MARK": "POLYGONIA", "QUESTON MARK": "POLYGONIA"}))
    assert not result.accepted
    assert result.errors == ["data.class_aliases: no folder named 'QUESTON MARK' in train/, valid/, test/; "
                             "remove it from data.class_aliases (folder names match exactly)."]
    result = check_dataset(root, _with(class_aliases={"QUESTION MARK": "POLYGONIA"}, drop_classes=("MONARCH",)))
    assert result.errors == ["data.drop_classes: no class named 'MONARCH' (after data.class_aliases); "
                             "remove it from data.drop_classes: `dvc exp run -S 'data.drop_classes=[]'`."]
    result = check_dataset(root, _with(drop_classes=("ADONIS", "GREAT EGGFLY", "POLYGONIA", "QUESTION MARK")))
    assert "data.drop_classes leaves no class in train/; drop fewer." in result.errors


def test_an_alias_to_a_class_train_lacks_names_the_folder_in_the_fix(tmp_path):
    root = _edition(tmp_path)
    result = check_dataset(root, _with(class_aliases={"QUESTION MARK": "TRAIN_CLASS"}))  # placeholder kept
    text = format_report(result)
    assert "valid/QUESTION MARK (class TRAIN_CLASS): class not in train/" in text
    assert "'++data.class_aliases={QUESTION MARK: TRAIN_CLASS}'" in text
    assert "'data.drop_classes=[TRAIN_CLASS]'" in text  # drops the class; the folder name is an alias


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("class_aliases: {A: A}", "class_aliases"),
    ("class_aliases: {A: B, B: C}", "class_aliases"),
    ("class_aliases: [A, B]", "class_aliases"),
    ("class_aliases: {1: A}", "class_aliases"),
    ("class_aliases: {A: ''}", "class_aliases"),
    ("class_aliases: {A: x/y}", "class_aliases"),
    ("class_aliases: null", "class_aliases"),
    ("drop_classes: A", "drop_classes"),
    ("drop_classes: [A, A]", "drop_classes"),
    ("drop_classes: [true]", "drop_classes"),
    ("drop_classes: [..]", "drop_classes"),
    ("{class_aliases: {A: B}, drop_classes: [A]}", "drop_classes"),
    ("near_duplicate_distance: 17", "near_duplicate_distance"),
    ("near_duplicate_distance: -2", "near_duplicate_distance"),
    ("near_duplicate_distance: 1.5", "near_duplicate_distance"),
])
def test_bad_class_params_are_one_line_naming_the_key(yaml_text, key):
    with pytest.raises(VitpipeError) as info:
        parse_params({"data": yaml.safe_load(yaml_text)})
    message = str(info.value)
    assert f"data.{key}" in message and "\n" not in message


# Names a Kaggle folder might have. Each printed `dvc exp run -S` line must set exactly these names.
TRICKY = ["QUESTION MARK", "COMMON WOOD-NYMPH", "Cat (domestic)", "a:b", "x,y", "x=y", "[1]", "{k}", "a\\b",
          "1", "007", "true", "null", "yes", "no", "3.5", " lead", "trail ", "O'Brien", "Ünïcode", "say \"hi\"",
          "${oc.env:HOME}", "50% off", "a|b", "a@b", "#tag", "tab\there"]


def _apply_set_param(line: str, tmp_path: Path):
    """Runs the ``-S`` argument of ``line`` through DVC's own override code (what `dvc exp run -S` does)."""
    from dvc.utils.hydra import apply_overrides

    argv = shlex.split(line)
    assert argv[:4] == ["dvc", "exp", "run", "-S"] and len(argv) == 5
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_overrides(params, [argv[4]])
    return load_params(params).data


@pytest.mark.parametrize("name", TRICKY)
def test_printed_lines_set_exactly_the_names_or_the_fix_says_params_yaml(name, tmp_path):
    alias_line = set_param_line("data.class_aliases", mapping={name: "TRAIN CLASS"})
    value_line = set_param_line("data.class_aliases", mapping={"FOLDER": name})
    drop_line = set_param_line("data.drop_classes", names=[name, "OTHER"])
    if alias_line is not None:
        assert _apply_set_param(alias_line, tmp_path).class_aliases == {name: "TRAIN CLASS"}
    if value_line is not None and "\t" in name:  # a class name with a control character: refused (issue 22)
        with pytest.raises(VitpipeError, match="control character"):
            _apply_set_param(value_line, tmp_path)
    elif value_line is not None:
        assert _apply_set_param(value_line, tmp_path).class_aliases == {"FOLDER": name}
    if drop_line is not None:
        assert _apply_set_param(drop_line, tmp_path).drop_classes == (name, "OTHER")
    if alias_line is None:  # the fix falls back to params.yaml, with the name quoted as YAML
        fix = class_fix({name: ["valid"]}, ["TRAIN CLASS"], {}, aliases={}, drop=())
        assert "in params.yaml" in fix
        flow = fix.split("set data.class_aliases: ", 1)[1].split(" in params.yaml")[0]
        assert yaml.safe_load(flow) == {name: "TRAIN_CLASS"}


def test_common_names_get_a_command_line():
    for name in ("QUESTION MARK", "COMMON WOOD-NYMPH", "Cat (domestic)", "a:b", "x,y", " lead", "trail "):
        assert set_param_line("data.class_aliases", mapping={name: "X"}) is not None, name
    for name in TRICKY:
        expressible = (not set(name) & set('"\\$') and name not in ("yes", "no")  # YAML 1.1 booleans: params.yaml
                       and name.isprintable())  # a control character: refused as a class name anyway
        assert (set_param_line("data.drop_classes", names=[name]) is not None) == expressible, name


def test_a_second_alias_line_adds_to_the_aliases_already_set(tmp_path):
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    for line in (set_param_line("data.class_aliases", mapping={"QUESTION MARK": "POLYGONIA"}),
                 set_param_line("data.class_aliases", mapping={"adonis": "ADONIS"})):
        apply_overrides(params, [shlex.split(line)[4]])
    assert load_params(params).data.class_aliases == {"QUESTION MARK": "POLYGONIA", "adonis": "ADONIS"}


@pytest.mark.parametrize("char", ["\n", "\x00", "\t", "\r", "\x85", "\u2028"])
def test_an_alias_to_a_name_with_a_control_character_is_refused(char):
    """Issue 22, case 9: a newline or NUL in a class name (via data.class_aliases) was accepted, then split
    predict's lines and the report's tables."""
    with pytest.raises(VitpipeError) as info:
        parse_params({"data": {"class_aliases": {"QUESTION MARK": f"POLY{char}GONIA"}}})
    message = str(info.value)
    assert "data.class_aliases" in message and f"U+{ord(char):04X}" in message and "\n" not in message
    parse_params({"data": {"class_aliases": {f"QUESTION{char}MARK": "POLYGONIA"}}})  # a folder name may: the fix


def _refusal(root: Path, data: DataParams) -> str:
    result = check_dataset(root, data)
    assert not result.accepted
    from vitpipe.check.datacheck import refused

    message = str(refused(result))
    assert "\n" not in message and "\x00" not in message
    return message


def _params_yaml_fix(message: str) -> dict:
    flow = message.split("set data.class_aliases: ", 1)[1].split(" in params.yaml")[0]
    return yaml.safe_load(flow)


def test_a_folder_name_with_a_control_character_is_refused_and_the_printed_fix_works(tmp_path):
    root = _dataset(tmp_path / "d", {split: {"ADONIS": 3, "RED\nADMIRAL": 3} for split in ("train", "valid", "test")})
    message = _refusal(root, DATA)
    assert 'train/"RED\\nADMIRAL": the class name holds a control character (U+000A)' in message
    aliases = _params_yaml_fix(message)
    assert aliases == {"RED\nADMIRAL": "RED ADMIRAL"}
    assert check_dataset(root, _with(class_aliases=aliases)).index.classes == ("ADONIS", "RED ADMIRAL")


def test_folders_that_differ_only_in_unicode_normalisation_are_told_apart_and_paired(tmp_path):
    """Issue 22, case 12: train/CAFÉ (NFC) and valid/CAFÉ (NFD, as macOS writes it) looked identical in the refusal."""
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "CAFÉ"), unicodedata.normalize("NFD", "CAFÉ")
    root = _dataset(tmp_path / "d", {"train": {"ADONIS": 3, nfc: 3}, "valid": {"ADONIS": 1, nfd: 1},
                                     "test": {"ADONIS": 1, nfd: 1}})
    message = _refusal(root, DATA)
    assert 'valid/"CAFE\\u0301": class not in train/' in message and "only in Unicode normalisation" in message
    aliases = _params_yaml_fix(message)
    assert aliases == {nfd: nfc}
    assert check_dataset(root, _with(class_aliases=aliases)).accepted
