"""The GPU and host rows of `vitpipe bench --suite`, run small on the CPU."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import tiny_params

from vitpipe.bench.ceiling import fine_tune_params, measure_fine_tune
from vitpipe.bench.datapath import measure_data_path, measure_scan
from vitpipe.bench.startup import STAGES, measure_startup
from vitpipe.cli import _bench_suite


def test_the_data_path_rows_time_both_paths_with_each_worker_count(tmp_path, tiny_index):
    rows = measure_data_path(tiny_index, tiny_params(), workers=(0, 1))
    assert [(r.workers, r.path.split(",")[0].split(" ")[0]) for r in rows] == [
        (0, "uint8"), (0, "float32"), (1, "uint8"), (1, "float32")]
    assert all(r.images == len(tiny_index.samples("train")) and r.rate > 0 and r.cpu >= 0 for r in rows)  # os.times ticks 10 ms: a tiny set may read 0
    assert rows[0].bytes_per_image * 4 == rows[1].bytes_per_image == 4 * 3 * 32 * 32


def test_the_scan_rows_time_each_process_count(tiny_data):
    rows = measure_scan(tiny_data, processes=(1, 2), repeats=1)
    assert [r.processes for r in rows] == [1, 2] and all(r.files == 54 and r.rate > 0 and r.cpu > 0 for r in rows)


def test_the_fine_tune_row_times_the_engine_and_the_ceiling(tiny_index):
    params = tiny_params(epochs=1)
    assert fine_tune_params(params).train.freeze == "none"
    rate = measure_fine_tune(params, tiny_index, epochs=1, ceiling_steps=2)
    assert rate.engine_rate > 0 and rate.ceiling_rate > 0 and rate.batch_size == 8 and rate.ratio > 0


def test_auto_is_the_gpu_suite_where_cuda_is_visible_unless_a_cpu_suite_option_is_given():
    plain = argparse.Namespace(suite="auto", data=None, cache_only=False, skip_cache=False, skip_loop=False,
                               views=(), precisions=(), runtimes=())
    assert _bench_suite(plain) == ("gpu" if torch.cuda.is_available() else "cpu")
    assert _bench_suite(argparse.Namespace(**{**vars(plain), "skip_loop": True})) == "cpu"
    assert _bench_suite(argparse.Namespace(**{**vars(plain), "suite": "host"})) == "host"


@pytest.mark.slow
def test_stage_start_up_runs_every_stage_script_against_another_checkout(tmp_path):
    """The other checkout is this one: both columns filled, every stage run as its own process."""
    from conftest import REPO

    rows = measure_startup(tiny_params(), tmp_path, rounds=1, against=REPO)
    assert [r.stage for r in rows] == [name for name, _, _ in STAGES]
    assert all(r.seconds > 0 and r.imports > 0 and r.against_seconds > 0 for r in rows)


@pytest.mark.slow
def test_a_failing_stage_is_one_line_naming_its_script_and_why(tmp_path):
    from vitpipe.errors import VitpipeError
    from vitpipe.params import ModelParams, Params

    with pytest.raises(VitpipeError, match=r"stages/train.py failed in .*no_such_model_anywhere") as err:
        measure_startup(Params(model=ModelParams(name="no_such_model_anywhere")), tmp_path, rounds=1)
    assert "\n" not in str(err.value)


def test_the_hosts_two_process_ceiling_is_measured_beside_the_scan():
    from vitpipe.bench.datapath import host_scaling

    scaling = host_scaling(n=2 * 10**5, repeats=1)
    assert scaling.one > 0 and scaling.two > 0 and scaling.speedup == 2 * scaling.one / scaling.two
