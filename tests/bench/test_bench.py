"""`vitpipe bench`: the faithful tutorial loop, the markdown rows it appends, and the memory probe."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_params, train_outputs
from timm.loss import LabelSmoothingCrossEntropy
from timm.scheduler import StepLRScheduler
from torch import nn
from torchvision import transforms as T

from vitpipe.bench.bench import (
    HEADER,
    LOOP,
    VITPIPE,
    append_rows,
    run_bench,
    table_header,
    table_rows,
)
from vitpipe.bench.cachebench import table_header as cache_table_header
from vitpipe.bench.memory import PeakMemory
from vitpipe.bench.probe import PROBE
from vitpipe.bench.tutorial import build_recipe
from vitpipe.cli import main
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation
from vitpipe.model.classifier import build_model
from vitpipe.model.transforms import (
    build_eval_transform,
    build_train_transform,
    eval_spec,
)
from vitpipe.params import EvaluateParams
from vitpipe.train.recipe import current_lr
from vitpipe.train.training import run_training

ROW = re.compile(r"^\| (.+) \|$")
COUNTS = {"train": 30, "valid": 12, "test": 12}  # conftest's tiny_data; 12 test images < one batch of 32


def _table(path: Path) -> list[dict[str, str]]:
    """The rows of the markdown table in ``path``, as column -> cell."""
    lines = [m.group(1).split(" | ") for line in path.read_text().splitlines() if (m := ROW.match(line))]
    header = lines[0]
    return [dict(zip(header, cells)) for cells in lines[1:] if not cells[0].startswith("-")]


def _fraction(cell: str) -> tuple[float, int, int]:
    m = re.fullmatch(r"(\d\.\d\d) \((\d+)/(\d+)\)", cell)
    assert m, cell
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def test_bench_appends_both_methods(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    bench = run_bench(tiny_params(), tiny_data, out=out, data_name="tiny", loop_workers=0)
    text = out.read_text()
    assert text.startswith(HEADER)
    rows = _table(out)
    assert [r["method"] for r in rows] == [LOOP, VITPIPE]
    for row in rows:
        assert row["data (train/valid/test)"] == "tiny (30/12/12)"
        assert row["epochs"] == "2"
        for column, split in (("test acc", "test"), ("best val", "valid")):
            accuracy, correct, total = _fraction(row[column])
            assert total == COUNTS[split] and 0 <= correct <= total
            assert accuracy == pytest.approx(correct / total, abs=0.005)
        assert float(row["train s"]) >= 0 and float(row["recipe img/s"]) > 0
        assert float(row["peak RSS MiB"]) > 0
        low, high = map(float, row["test acc 95% CI"].split("-"))
        assert low <= _fraction(row["test acc"])[0] <= high
    assert rows[0]["minus loop's (95% CI)"] == "-"
    assert re.fullmatch(r"[+-]\d\.\d\d \([+-]\d\.\d\d to [+-]\d\.\d\d\)", rows[1]["minus loop's (95% CI)"])
    assert rows[0]["speedup"] == "1.00x"
    assert float(rows[1]["speedup"].rstrip("x")) > 0
    loop, vit = bench.results
    assert loop.backbone_images == 2 * (30 + 12)  # every train and valid image, every epoch
    views = tiny_params().train.cache_views
    assert vit.backbone_images == views * 30 + 12  # cache_views x train + valid, once
    assert bench.speedup(vit) == pytest.approx(loop.seconds / vit.seconds)

    append_rows(out, table_rows(bench))  # a second run joins the same table
    assert out.read_text().count(table_header()[0]) == 1
    assert [r["method"] for r in _table(out)] == [LOOP, VITPIPE, LOOP, VITPIPE]


def test_append_starts_a_table_after_other_text(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    out.write_text("# Notes\n\nSome prose after the table.\n")
    append_rows(out, ["| a | b |"])
    lines = out.read_text().splitlines()
    assert lines[:3] == ["# Notes", "", "Some prose after the table."]
    assert lines[-3:] == table_header() + ["| a | b |"]


def test_cli_bench_skip_loop(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("model: {head_hidden: 16}\ntrain: {num_workers: 0, batch_size: 8, epochs: 3}\n")
    out = tmp_path / "BENCH.md"
    code = main(["--params", str(params), "bench", "--data", str(tiny_data), "--out", str(out), "--epochs", "1",
                 "--model", "test_vit", "--img-size", "32", "--skip-loop", "--skip-cache"])
    assert code == 0
    rows = _table(out)
    assert [(r["method"], r["epochs"], r["speedup"]) for r in rows] == [(VITPIPE, "1", "-")]
    assert rows[0]["test acc"] in capsys.readouterr().out


def test_cli_bench_feature_cache_row(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("model: {head_hidden: 16}\ntrain: {num_workers: 0}\n")
    out = tmp_path / "BENCH.md"
    args = ["--params", str(params), "bench", "--data", str(tiny_data), "--out", str(out), "--model", "test_vit",
            "--img-size", "32", "--cache-only", "--added", "7"]
    assert main(args) == 0
    assert main(args) == 0  # a second run joins the same table
    rows = _table(out)
    assert len(rows) == 2 and out.read_text().count(cache_table_header()[0]) == 1
    for row in rows:
        assert row["data (train images)"] == "tiny-data0 (30)" and row["added"] == "7"
        assert row["cold s (images)"].endswith(" (23)") and row["incremental s (computed)"].endswith(" (7)")
        assert float(row["warm read s"]) >= 0 and float(row["store MiB"]) > 0 and float(row["whole-split MiB"]) > 0
    assert "## Feature cache" in out.read_text() and rows[0]["warm read s"] in capsys.readouterr().out


def test_cli_bench_runtimes_give_one_row_each_from_a_cold_cache_folder(tiny_data: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(tmp_path / "user-cache"))
    params = tmp_path / "params.yaml"
    params.write_text("model: {head_hidden: 16}\ntrain: {num_workers: 0, batch_size: 8}\n")
    out = tmp_path / "BENCH.md"
    code = main(["--params", str(params), "bench", "--data", str(tiny_data), "--out", str(out), "--epochs", "1",
                 "--model", "test_vit", "--img-size", "32", "--skip-loop", "--skip-cache",
                 "--runtimes", "torch,onnxruntime-fp32,onnxruntime-int8"])
    assert code == 0
    rows = _table(out)
    assert [r["method"] for r in rows] == [f"{VITPIPE} (cache_views=1, exact)",
                                           f"{VITPIPE} (cache_views=1, onnxruntime fp32)",
                                           f"{VITPIPE} (cache_views=1, onnxruntime int8)"]
    for row in rows:
        assert _fraction(row["test acc"])[2] == 12 and float(row["backbone img/s"]) > 0
    assert not (tmp_path / "user-cache").exists()  # each run's cache folder (its ONNX export too) was its own


@pytest.mark.parametrize(("args", "message"), [
    (["--runtimes", "tensorrt"], "--runtimes: must be torch, onnxruntime-fp32, onnxruntime-int8"),
    (["--runtimes", ","], "--runtimes: must be torch"),
    (["--runtimes", "onnxruntime-bf16"], "--runtimes: must be torch"),
    (["--precisions", "int8"], "--precisions: must be exact, bf16 and/or fp32"),
])
def test_cli_bench_bad_runtime_is_one_line_error(tiny_data: Path, tmp_path: Path, capsys, args, message) -> None:
    try:
        code = main(["bench", "--data", str(tiny_data), "--out", str(tmp_path / "B.md"), "--skip-loop", *args])
    except SystemExit as exit_:  # argparse's own refusal: usage and one error line
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_bench_refuses_bf16_on_an_onnxruntime_params_file_in_one_line(tiny_data: Path, tmp_path: Path,
                                                                      capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train: {feature_runtime: onnxruntime, precision: int8}\n")
    code = main(["--params", str(params), "bench", "--data", str(tiny_data), "--out", str(tmp_path / "B.md"),
                 "--skip-loop", "--skip-cache", "--model", "test_vit", "--img-size", "32", "--precisions", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and "train.precision bf16 does not run on onnxruntime" in err and "Traceback" not in err


@pytest.mark.parametrize(("added", "message"), [("0", "must be at least 1"), ("30", "--added 30: must be between 1")])
def test_cli_bench_bad_added_is_one_line_error(tiny_data: Path, tmp_path: Path, capsys, added, message) -> None:
    args = ["bench", "--data", str(tiny_data), "--out", str(tmp_path / "B.md"), "--cache-only", "--model",
            "test_vit", "--img-size", "32", "--added", added]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own refusal: usage and one error line
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_bench_missing_data_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "B.md")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--data" in err and "not a folder" in err and "Traceback" not in err
    assert not (tmp_path / "B.md").exists()


def test_tutorial_recipe_is_vitpipes() -> None:
    params = tiny_params()
    recipe = build_recipe(params, 3, torch.device("cpu"))
    reference, info = build_model(params.model, 3, seed=params.train.seed)
    spec = eval_spec("seed", info)
    assert repr(recipe.transforms["train"]) == repr(build_train_transform("seed", spec, info))
    assert repr(recipe.transforms["valid"]) == repr(recipe.transforms["test"]) == repr(build_eval_transform(spec))
    kinds = [type(t) for t in recipe.transforms["train"].transforms]
    assert kinds == [T.RandomHorizontalFlip, T.RandomVerticalFlip, T.RandomApply, T.Resize, T.CenterCrop,
                     T.ToTensor, T.Normalize, T.RandomErasing]
    # Same head, same initial weights as the train stage's model (same seed).
    head = recipe.model.head
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].out_features, head[2].p, head[3].out_features) == (16, 0.3, 3)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, recipe.model.state_dict()[name]), name
    assert not any(p.requires_grad for p in recipe.model.backbone.parameters())
    assert isinstance(recipe.criterion, LabelSmoothingCrossEntropy) and recipe.criterion.smoothing == 0.1
    optimizer = recipe.optimizer
    assert type(optimizer) is torch.optim.Adam
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in head.parameters()}
    assert isinstance(recipe.scheduler, StepLRScheduler)
    lrs = []
    for epoch in range(7):  # torch's StepLR(step_size=3, gamma=0.97), stepped once per epoch
        lrs.append(current_lr(optimizer))
        recipe.scheduler.step(epoch + 1)
    assert lrs == pytest.approx([1e-3] * 3 + [0.97e-3] * 3 + [0.97 ** 2 * 1e-3])


def test_peak_memory_sees_an_allocation() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    with PeakMemory() as before:
        pass
    with PeakMemory() as mem:
        block = b"\x01" * (64 << 20)  # 64 MiB, every page touched
    del block
    assert mem.rss_mib >= before.rss_mib + 60


def test_the_default_benchmark_data_is_the_shared_butterflies():
    from conftest import BUTTERFLIES

    from vitpipe.bench.bench import DEFAULT_DATA
    assert DEFAULT_DATA == BUTTERFLIES


def test_accuracy_comes_with_its_interval_and_the_difference_with_its_own():
    from vitpipe.bench.bench import difference_interval, wilson_interval

    low, high = wilson_interval(20, 50)  # the README's 20/50
    assert (round(low, 3), round(high, 3)) == (0.276, 0.538)
    diff, low, high = difference_interval((20, 50), (20, 50))
    assert diff == 0 and (round(low, 3), round(high, 3)) == (-0.186, 0.186)  # no difference is not "equal"
    diff, low, high = difference_interval((18, 50), (20, 50))
    assert round(diff, 2) == -0.04 and low < -0.2 < 0 < high
    assert difference_interval((50, 50), (0, 50))[1] > 0.8  # a real difference shows


def test_rows_of_other_columns_start_a_new_table(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    out.write_text("# Bench\n\n| date | method |\n|---|---|\n| then | loop |\n")
    append_rows(out, ["| a | b |"])
    lines = out.read_text().splitlines()
    assert lines[:5] == ["# Bench", "", "| date | method |", "|---|---|", "| then | loop |"]
    assert lines[5:] == [""] + table_header() + ["| a | b |"]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


OUTS = {
    "a folder": (lambda d: d / "folder", "is a folder"),
    "a link": (lambda d: _link(d), "is a link"),
    "a FIFO": (lambda d: _fifo(d / "fifo.md"), "is not a regular file"),
    "not UTF-8": (lambda d: _write(d / "bin.md", b"\xff\xfe\x00"), "not UTF-8 text"),
    "read-only": (lambda d: _read_only(_write(d / "ro.md", b"# mine\n")), "is read-only"),
    "under a file": (lambda d: _write(d / "file", b"x") / "BENCH.md", "is a file, not a folder"),
    "in a read-only folder": (lambda d: _read_only(d / "rodir", folder=True) / "BENCH.md", "is read-only"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _link(folder: Path) -> Path:
    (folder / "elsewhere.md").write_text("# elsewhere\n")
    (folder / "link.md").symlink_to(folder / "elsewhere.md")
    return folder / "link.md"


def _read_only(path: Path, *, folder: bool = False) -> Path:
    if folder:
        path.mkdir()
    path.chmod(0o555 if folder else 0o444)
    return path


@pytest.mark.parametrize("case", sorted(OUTS))
def test_cli_bench_checks_out_before_any_benchmarking(case, tiny_data, tmp_path, monkeypatch, capsys):
    """Issue 22, case 8: `--out DIR` ran 22 s of benchmarks, then ended in IsADirectoryError, the results lost."""
    import vitpipe.bench.bench as bench

    make, expected = OUTS[case]
    (tmp_path / "folder").mkdir()
    out = make(tmp_path)
    before = sorted((p.name, p.is_file() and not p.is_fifo() and p.read_bytes()) for p in tmp_path.rglob("*")
                    if not p.is_symlink() and p.stat().st_mode & 0o444)
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("benchmarked before checking --out"))
    try:
        assert main(["bench", "--data", str(tiny_data), "--out", str(out), "--skip-cache"]) == 2
    finally:
        for p in tmp_path.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"--out {out}" in errors[0] and expected in errors[0] and "Traceback" not in err
    after = sorted((p.name, p.is_file() and not p.is_fifo() and p.read_bytes()) for p in tmp_path.rglob("*")
                   if not p.is_symlink() and p.stat().st_mode & 0o444)
    assert after == before


def test_bench_variant_rows_and_the_logistic_regression_probe(tiny_data: Path, tiny_index, tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    bench = run_bench(tiny_params(), tiny_data, out=out, data_name="tiny", skip_loop=True, probe=True,
                      variants=[{"evaluate.tta": True}, {"train.class_weights": "balanced", "train.epochs": 1}])
    rows = _table(out)
    assert [r["method"] for r in rows] == [
        f"{VITPIPE} (cache_views=1, exact)", f"{VITPIPE} (evaluate.tta=True)",
        f"{VITPIPE} (train.class_weights=balanced, train.epochs=1)", PROBE]
    assert [r["epochs"] for r in rows] == ["2", "2", "1", "-"]  # each variant trained with its own params
    assert all(_fraction(r["test acc"])[2] == COUNTS["test"] for r in rows)
    assert rows[-1]["recipe img/s"] == "-"
    probe = bench.results[-1]
    assert probe.backbone_images == sum(COUNTS.values()) and probe.val_images == COUNTS["valid"]
    # the tta row is the train stage and evaluate with evaluate.tta: true, as `dvc repro` would run them
    tta = dataclasses.replace(tiny_params(), evaluate=EvaluateParams(tta=True))
    run_training(tta, tiny_index, train_outputs(tmp_path / "tta"))
    scored = run_evaluation(tta, tiny_index, tmp_path / "tta" / "model.safetensors",
                            EvalOutputs(metrics=tmp_path / "t.json", per_class=tmp_path / "p.csv",
                                        predictions=tmp_path / "q.csv"))
    assert bench.results[1].test_correct == scored["correct"]


@pytest.mark.parametrize(("variant", "expected"), [
    ("evaluate.ttx=true", "--variant: evaluate.ttx is not a params key"),
    ("train.class_weights=sometimes", "train.class_weights must be one of none | balanced"),
])
def test_a_bad_variant_is_refused_in_one_line_before_any_run(tiny_data: Path, tmp_path: Path, capsys, variant,
                                                             expected) -> None:
    code = main(["bench", "--data", str(tiny_data), "--out", str(tmp_path / "B.md"), "--skip-loop", "--skip-cache",
                 "--variant", variant])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "B.md").exists()
    assert "bench: vitpipe" not in err  # refused before the first run
