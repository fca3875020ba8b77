"""The report says when base and workspace numbers come from different hosts or precisions."""

import json
import subprocess
from pathlib import Path

from vitpipe.report import hosts


def _commit(repo: Path, host: str | None, precision: str) -> None:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics" / "train.json").write_text(json.dumps({"best_val_accuracy": 0.5, **({"host": host} if host else {})}))
    (repo / "params.yaml").write_text(f"train:\n  precision: {precision}\n")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True,
                   capture_output=True)


def test_a_different_host_or_precision_is_named_and_the_verdict_left_to_the_paired_test(tmp_path):
    _git(tmp_path, "init", "-q", "-b", "main")
    _commit(tmp_path, "x86_64 AVX512 bf16-native", "bf16")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "base")
    _commit(tmp_path, "x86_64 exact", "exact")
    base, head = hosts.origin(tmp_path, "main"), hosts.origin(tmp_path, None)
    assert base == hosts.Origin("x86_64 AVX512 bf16-native", "bf16") and head == hosts.Origin("x86_64 exact", "exact")
    text = "\n".join(hosts.markdown(base, head, base_name="main"))
    assert "Different hosts or precisions" in text and "`x86_64 AVX512 bf16-native`" in text
    assert "paired test" in text
    _commit(tmp_path, "x86_64 AVX2", "bf16")  # same precision, another CPU: still named
    assert "Different hosts" in "\n".join(hosts.markdown(base, hosts.origin(tmp_path, None), base_name="main"))


def test_the_same_exact_host_class_says_equal_code_gives_equal_bytes(tmp_path):
    same = hosts.Origin("x86_64 exact", "exact")
    text = "\n".join(hosts.markdown(same, same, base_name="main"))
    assert "Both sides computed on `x86_64 exact`" in text and "equal bytes" in text and "Different" not in text


def test_an_older_base_without_a_host_is_not_taken_for_the_same_host(tmp_path):
    _git(tmp_path, "init", "-q", "-b", "main")
    _commit(tmp_path, None, "bf16")
    (tmp_path / "metrics" / "train.json").write_text("[not, an, object]")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "base")
    base = hosts.origin(tmp_path, "main")
    assert base == hosts.Origin(None, "bf16")
    text = "\n".join(hosts.markdown(base, base, base_name="main"))
    assert "an unrecorded host" in text and "Different hosts" in text
    assert hosts.origin(tmp_path, "no-such-rev") == hosts.Origin(None, None)
