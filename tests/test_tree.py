"""The tree shows the pipeline: each stage's deps in dvc.yaml cover every module its script reaches.

No hand-kept map of which module belongs to which stage: the imports of each stage script are
walked (transitively, with ``ast``, imports inside functions included) and every vitpipe module
reached must lie under one of that stage's ``deps`` (a file, or a folder such as
``src/vitpipe/train``). A module added to a stage's folder is a dep without anyone remembering it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src"


def _module_file(name: str) -> Path | None:
    """The file of the vitpipe module ``name`` (a package's ``__init__.py``), or None if not ours."""
    if name != "vitpipe" and not name.startswith("vitpipe."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Dotted names ``path`` imports (absolute and relative), with ``from pkg import mod`` as ``pkg.mod``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def reached_files(script: Path) -> set[Path]:
    """Every vitpipe source file ``script`` imports, directly or not, parent packages' ``__init__`` included."""
    todo: list[tuple[Path, str]] = [(script, "__main__")]
    seen: set[Path] = set()
    while todo:
        path, module = todo.pop()
        for name in _imported_modules(path, module):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                prefix = ".".join(parts[:i])
                file = _module_file(prefix)
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append((file, prefix))
    return seen


# dvc.yaml holds the default pipeline; export/dvc.yaml the optional export stage (run from the repo root).
PIPELINE_FILES = ("dvc.yaml", "export/dvc.yaml")


def _stages() -> dict[str, dict]:
    stages = {}
    for name in PIPELINE_FILES:
        path = REPO / name
        for stage_name, stage in yaml.safe_load(path.read_text(encoding="utf-8"))["stages"].items():
            assert (path.parent / stage.get("wdir", ".")).resolve() == REPO, f"{name}:{stage_name} must run from the repo root"
            stages[stage_name] = stage
    return stages


def _script(stage: dict) -> Path:
    cmd = stage["cmd"].split()
    return REPO / next(word for word in cmd if word.endswith(".py"))


def uncovered(script: Path, deps: list[str]) -> list[str]:
    """The files ``script`` reaches that no dep (file or folder) covers, relative to the repo."""
    covered = [REPO / d for d in deps]
    return sorted(str(f.relative_to(REPO)) for f in reached_files(script)
                  if not any(f == c or c in f.parents for c in covered))


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_every_module_the_script_imports(name):
    stage = _stages()[name]
    script = _script(stage)
    assert str(script.relative_to(REPO)) in stage["deps"], f"{name}: its script is not a dep"
    missing = uncovered(script, stage["deps"])
    assert not missing, f"dvc.yaml stage {name!r} lacks deps for modules its script imports: {missing}"


def test_the_walk_finds_imports_inside_functions_and_fails_on_a_missing_dep(tmp_path):
    # The check itself can fail: drop the download folder from the download stage's deps.
    stage = _stages()["download"]
    script = _script(stage)
    reached = {str(f.relative_to(REPO)) for f in reached_files(script)}
    # synthetic is imported inside sources.fetch, not at module level
    assert "src/vitpipe/download/synthetic.py" in reached
    assert "src/vitpipe/data/images.py" in reached  # layout picks the split root with is_image_file
    deps = [d for d in stage["deps"] if d != "src/vitpipe/download"]
    assert "src/vitpipe/download/sources.py" in uncovered(script, deps)


def test_folder_deps_ignore_bytecode():
    ignored = (REPO / ".dvcignore").read_text(encoding="utf-8").split()
    assert "__pycache__/" in ignored


@pytest.mark.parametrize("stage,module", [("check-params", "vitpipe.params"),
                                          ("download", "vitpipe.download.sources"),
                                          ("split-check", "vitpipe.check.datacheck")])
def test_data_stages_do_not_import_torch(stage, module):
    # torch takes seconds to import and gigabytes to install: the data stages need neither.
    code = (f"import sys, {module}, vitpipe.logs, vitpipe.params, vitpipe.data.index; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{stage} imports {out.strip()}"
