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


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation out, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_readme_and_the_docs_pages_resolves():
    """README.md is one page of links into docs/: each relative link names a file that exists, and an
    anchor a heading of that page; each docs page is linked from the README."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https://, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert all(f"(docs/{p.name}" in readme for p in pages[1:]), "a docs page is not linked from the README"
