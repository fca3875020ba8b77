"""`dvc plots show` renders offline: Vega, Vega-Lite and Vega-Embed are inlined by the repo's HTML template."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from dvc_render.vega import VegaRenderer

TEMPLATE = REPO / ".dvc" / "offline_plots.html"
DVC = str(Path(sys.executable).with_name("dvc"))
MANIFEST = re.compile(r"^\s+([a-z-]+)@([0-9.]+) (\S+) sha256:([0-9a-f]{64})$", re.M)
# Renders every spec of a `dvc plots show` page to SVG with the page's own inline scripts, in node's
# vm: no DOM, no network. Prints "<title> <number of marks>" per plot.
RENDER_JS = r"""
const fs = require('fs'), vm = require('vm');
const html = fs.readFileSync(process.argv[1], 'utf8');
const ctx = {console, setTimeout, clearTimeout}; ctx.self = ctx; ctx.globalThis = ctx; vm.createContext(ctx);
for (const m of html.matchAll(/<script>([\s\S]*?)<\/script>/g)) vm.runInContext(m[1], ctx);
const specs = [...html.matchAll(/var spec = ([\s\S]*?);\n\s*vegaEmbed/g)].map(m => JSON.parse(m[1]));
(async () => { for (const spec of specs) {
  const view = new ctx.vega.View(ctx.vega.parse(ctx.vegaLite.compile(spec).spec), {renderer: 'none'});
  const svg = await view.toSVG();
  console.log(`${spec.title.text || spec.title} ${(svg.match(/<path|<rect/g) || []).length}`);
} })().catch(e => { console.error(e); process.exit(1); });
"""


def _inline_scripts(html: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", html, flags=re.S)


def test_the_template_inlines_the_versions_dvc_loads_from_its_cdn_unmodified():
    html = TEMPLATE.read_text(encoding="utf-8")
    manifest = MANIFEST.findall(html)
    assert {name: version for name, version, _, _ in manifest} == dict(
        re.findall(r"/npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS)), \
        "dvc-render loads other versions: rerun `python tools/vega_template.py`"
    scripts = _inline_scripts(html)
    assert [hashlib.sha256(s.encode()).hexdigest() for s in scripts] == [digest for *_, digest in manifest], \
        "an inlined script is not the npm build named in the template's header"
    assert "{scripts}" not in html  # DVC would put its CDN <script src=...> tags there
    assert "{plot_divs}" in html
    assert TEMPLATE.stat().st_size < 2_000_000
    notice = (REPO / "NOTICE").read_text(encoding="utf-8")
    assert all(re.search(rf"^- {name} {version} .* BSD-3-Clause", notice, flags=re.M) for name, version, *_ in manifest)


def test_the_dvc_config_sets_the_template():
    config = (REPO / ".dvc" / "config").read_text(encoding="utf-8")
    assert re.search(r"^\[plots\]\n(\s*#.*\n)*\s*html_template = offline_plots.html$", config, flags=re.M)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """`dvc plots show` in a copy of the repo's pipeline file, DVC config and committed metrics."""
    work = tmp_path_factory.mktemp("plots")
    for name in ("dvc.yaml", "params.yaml"):  # dvc.yaml interpolates ${data.watch} from params.yaml
        shutil.copy2(REPO / name, work / name)
    shutil.copytree(REPO / "metrics", work / "metrics")
    shutil.copytree(REPO / "dvclive", work / "dvclive")  # the training curves: DVCLive's files
    shutil.copytree(REPO / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    done = subprocess.run([DVC, "plots", "show", "-o", "out"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return work / "out" / "index.html"


def test_dvc_plots_show_writes_a_page_that_loads_nothing_from_the_network(page):
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.I)  # no script loaded at all
    assert "cdn.jsdelivr" not in html
    assert len(_inline_scripts(html)) == 3
    # DVCLive's 6 curves (one per metric file, as DVCLive lays them out), the confusion matrix,
    # per-class accuracy and per-class F1
    assert html.count("vegaEmbed('#") == 9


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's JavaScript")
def test_the_inlined_vega_renders_every_plot_of_the_page(page):
    done = subprocess.run(["node", "-e", RENDER_JS, str(page)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    marks = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()}
    curves = {f"dvclive/plots/metrics/{name}.tsv" for name in ("train/loss_smoothed", "train/accuracy",
              "val/loss_smoothed", "val/cross_entropy", "val/accuracy", "lr")}
    assert set(marks) == curves | {"Confusion matrix", "Per-class test accuracy", "Per-class test F1"}
    assert all(n > 10 for n in marks.values()), marks
