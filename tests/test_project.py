"""pyproject.toml: ``requires-python`` is the real floor of the pinned dependencies and of the stdlib we use."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from conftest import REPO
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DATA_FILTER = Version("3.11.4")  # tarfile.data_filter (PEP 706) on 3.11; 3.10 has it from 3.10.12 on


def _floor(spec: SpecifierSet) -> Version:
    (lower,) = [Version(s.version) for s in spec if s.operator == ">="]
    return lower


def _pins() -> dict[str, str]:
    pins = {}
    extras = PROJECT["optional-dependencies"]
    for requirement in PROJECT["dependencies"] + extras["pretrained"] + extras["dev"]:
        if requirement.startswith("vitpipe["):  # the dev extra includes the pretrained one
            continue
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", requirement).groups()
        pins[name] = version
    return pins


def test_requires_python_is_at_least_every_pinned_dependencys_floor():
    ours = _floor(SpecifierSet(PROJECT["requires-python"]))
    assert ours >= DATA_FILTER, f"requires-python {ours}: the archive filter needs {DATA_FILTER}"
    too_low = {}
    for name, version in _pins().items():
        assert metadata.version(name) == version, f"{name} installed is not the pinned {version}"
        needs = metadata.metadata(name).get("Requires-Python")
        if needs and not all(spec.contains(str(ours)) for spec in SpecifierSet(needs)):
            too_low[name] = needs
    assert not too_low, f"requires-python >={ours} admits Pythons these pins refuse: {too_low}"


def test_requires_python_is_not_higher_than_needed():
    floors = [_floor(SpecifierSet(s)) for n in _pins() if (s := metadata.metadata(n).get("Requires-Python"))]
    needed = max([DATA_FILTER, *floors])
    assert _floor(SpecifierSet(PROJECT["requires-python"])) == needed


PROJECT_PINS = [re.match(r"[A-Za-z0-9_.-]+", requirement).group() for requirement in PROJECT["dependencies"]]


def _imported_modules() -> set[str]:
    """Top-level modules that src/ and stages/ import (the stage scripts run them all)."""
    import ast

    found = set()
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_third_party_module_the_code_imports_comes_from_a_pinned_dependency():
    """A package installed by hand into the venv hides a missing pin until a fresh clone's `make repro`
    fails (dvclive did): every import outside the standard library and vitpipe must be provided by
    distribution pinned in pyproject.toml (one that another pin pulls in today may not tomorrow)."""
    import sys

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pinned = {norm(name) for name in PROJECT_PINS}
    providers = metadata.packages_distributions()
    third_party = {m for m in _imported_modules() if m not in sys.stdlib_module_names and m != "vitpipe"}
    assert {"torch", "dvclive", "timm"} <= third_party  # the walk sees the imports
    unpinned = sorted(m for m in third_party if not {norm(d) for d in providers.get(m, [])} & pinned)
    assert not unpinned, f"imported but not pinned in pyproject.toml's dependencies: {unpinned}"
