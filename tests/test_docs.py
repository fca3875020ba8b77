"""docs/bad-inputs.md lists what vitpipe is tested against: every test it names exists."""

from __future__ import annotations

import re

from conftest import REPO


def test_every_test_named_in_the_bad_inputs_table_exists():
    text = (REPO / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", text)
    assert len(named) > 50
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (REPO / path).read_text(encoding="utf-8"), re.MULTILINE)]
    assert not missing, f"docs/bad-inputs.md names tests that do not exist: {missing}"
    assert "docs/bad-inputs.md" in (REPO / "README.md").read_text(encoding="utf-8")  # linked from the README
