"""Where the work runs: a device spec is resolved or refused in one line (issue 10, item 6)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params, train_outputs

from vitpipe.cli import main
from vitpipe.errors import VitpipeError
from vitpipe.params import parse_params
from vitpipe.runtime import resolve_device


@pytest.mark.parametrize("spec", ["tpu", "mps", "cuda:99999999999999999999", "cuda:-1", "cuda:x", "", " ", "cpu:0"])
def test_a_device_vitpipe_cannot_use_is_one_line(spec):
    with pytest.raises(VitpipeError) as err:
        resolve_device(spec)
    assert "train.device" in str(err.value) and "\n" not in str(err.value)


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_huge_cuda_index_from_params_is_one_line(tmp_path, tiny_index):
    from vitpipe.train.training import run_training

    params = parse_params({"train": {"device": "cuda:99999999999999999999"}})  # the params pattern allows it
    assert params.train.device == "cuda:99999999999999999999"
    with pytest.raises(VitpipeError, match="train.device: cuda:99999999999999999999"):
        run_training(tiny_params(device=params.train.device), tiny_index,
                     train_outputs(tmp_path))


@pytest.mark.parametrize("device", ["tpu", "cuda:99999999999999999999"])
def test_predict_device_option_is_one_line_naming_it(tmp_path, capsys, device):
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "m.safetensors"),
                 "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--device: {device}" in err[0]
