"""``train.precision: exact``: the default pipeline writes the committed bytes on any x86-64 CPU.

Other CPUs are emulated on this one by capping the instruction sets torch's own kernels (ATen),
oneDNN, MKL, libjpeg-turbo and NumPy pick; before the exact mode each cap below changed the bytes
(bf16 features, the fp32 random init, the fp32 head; see BENCHMARKS.md). The repository's committed
``dvc.lock``, ``metrics/`` and ``dvclive/`` are what ``make repro`` must leave unchanged on a fresh clone.
"""

from __future__ import annotations

import difflib
import subprocess

import pytest
from conftest import REPO
from repo_copy import copy_repo, run

# Two CPUs unlike this one (and unlike each other): an AVX2-only x86-64, and one with no SIMD beyond
# SSE4 in any of the libraries (torch's scalar kernels, libjpeg-turbo without SIMD).
EMULATED = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "sse4-scalar": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "JSIMD_FORCENONE": "1",
                    "NPY_DISABLE_CPU_FEATURES": "X86_V4 X86_V3 AVX512_ICL",
                    "TIMM_FUSED_ATTN": "0", "OMP_NUM_THREADS": "1"},
}


def _committed_outputs(root, names: list[str] | None = None) -> dict[str, bytes]:
    """dvc.lock and the pipeline's git-tracked outputs (DVC-cached ones are checked through dvc.lock's md5s)."""
    if names is None:
        names = subprocess.run(["git", "ls-files", "--", "dvc.lock", "metrics", "dvclive"], cwd=root, check=True,
                               capture_output=True, text=True).stdout.split()
    return {name: (root / name).read_bytes() for name in names if (root / name).is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("cpu", sorted(EMULATED))
def test_the_default_pipeline_writes_the_committed_bytes_on_another_cpu(tmp_path, cpu):
    committed = _committed_outputs(REPO)
    assert b"precision: exact" in (REPO / "params.yaml").read_bytes()  # the embedded default runs exact
    work, env = copy_repo(tmp_path, env={**EMULATED[cpu], "CUDA_VISIBLE_DEVICES": ""}, pin_cpu=False)
    for name, data in committed.items():  # a fresh clone: the committed dvc.lock and metrics are there
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    run(["dvc", "repro", "--force"], work, env)  # every stage computed again on this "CPU"
    produced = _committed_outputs(work, list(committed))
    assert produced.keys() == committed.keys()
    differ = sorted(name for name in committed if produced[name] != committed[name])
    lock = [ln for ln in difflib.unified_diff(committed["dvc.lock"].decode().splitlines(),
                                              produced["dvc.lock"].decode().splitlines(), lineterm="", n=1)][:40]
    assert not differ, (f"under {cpu} ({EMULATED[cpu]}), `dvc repro --force` on a fresh copy rewrote {differ}: a "
                        f"fresh clone's `make repro` would leave `git status` dirty. If the code changed on purpose, "
                        f"run `dvc repro` and commit dvc.lock, metrics/ and dvclive/. dvc.lock:\n" + "\n".join(lock))


_PROBE = """
import hashlib, json, torch
from vitpipe.params import ModelParams
from vitpipe.model.classifier import build_model
from vitpipe.model.features import Extractor, weights_digest
params = ModelParams(name="deit_tiny_patch16_224", img_size=64)  # big enough for fp32 to differ between CPUs
out = {}
for exact in (False, True):
    out[f"init exact={exact}"] = weights_digest(build_model(params, 3, seed=0, exact_init=exact)[0])
backbone = build_model(params, 3, seed=0, exact_init=True)[0].backbone.eval()
images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    for precision in ("exact", "bf16", "fp32"):
        feats = Extractor.for_backbone(backbone, torch.device("cpu"), precision, num_workers=0)._forward(images)
        out[precision] = hashlib.sha256(feats.view(torch.int16).numpy().tobytes()).hexdigest()
print(json.dumps(out))
"""


def _probe(env: dict[str, str]) -> dict[str, str]:
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, **env, "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("cpu", sorted(EMULATED))
def test_exact_init_and_features_are_the_same_bytes_under_another_cpu(cpu):
    native, emulated = _probe({}), _probe(EMULATED[cpu])
    # the fp32 init and the bf16 and fp32 features may differ (on an AVX-512 host they all do under sse4-scalar,
    # and the features under avx2: the emulation works); the exact ones may not
    assert emulated["init exact=True"] == native["init exact=True"], (native, emulated)
    assert emulated["exact"] == native["exact"], (native, emulated)


def test_the_feature_key_names_the_cpu_unless_exact(monkeypatch, tmp_path):
    import torch

    from vitpipe.model.classifier import build_model
    from vitpipe.model.features import Extractor, FeatureCache
    from vitpipe.params import ModelParams

    backbone = build_model(ModelParams(name="test_vit", img_size=32), 3, seed=0)[0].backbone.eval()

    def key(precision: str) -> dict:
        extractor = Extractor.for_backbone(backbone, torch.device("cpu"), precision, num_workers=0)
        return FeatureCache.key_parts(extractor, "transform", None)

    before = {p: key(p) for p in ("exact", "bf16", "fp32")}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # what another CPU would run
    assert key("bf16") != before["bf16"] and key("fp32") != before["fp32"]
    assert key("exact") == before["exact"]  # exact features are the same bytes on every x86-64 CPU: shared
    for module in backbone.modules():  # TIMM_FUSED_ATTN=0: the explicit softmax instead of fused attention
        if hasattr(module, "fused_attn"):
            monkeypatch.setattr(module, "fused_attn", not module.fused_attn)
    assert key("exact")["attention"] != before["exact"]["attention"]


def test_a_checkpoint_of_another_host_class_is_named_as_the_change(tiny_index, monkeypatch):
    import torch

    from conftest import tiny_params
    from vitpipe.train.resume import key_changes, key_parts

    for precision, changes in (("bf16", ["the host"]), ("exact", [])):
        params = tiny_params(precision=precision)
        saved = key_parts(params, tiny_index, torch.device("cpu"))
        with monkeypatch.context() as m:
            m.setenv("ATEN_CPU_CAPABILITY", "avx2")
            now = key_parts(params, tiny_index, torch.device("cpu"))
        assert [c.split(" (")[0] for c in key_changes(saved, now)] == changes


def test_exact_does_not_run_on_onnxruntime():
    from vitpipe.errors import VitpipeError
    from vitpipe.params import TrainParams

    with pytest.raises(VitpipeError, match="train.precision.*exact does not run on onnxruntime"):
        TrainParams(feature_runtime="onnxruntime", precision="exact")
