"""`dvc plots show` renders offline: Vega, Vega-Lite and Vega-Embed are inlined by the repo's HTML template."""

from __future__ import annotations

import csv
import hashlib
import json
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
  console.log(JSON.stringify({title: spec.title.text || spec.title, marks: (svg.match(/<path|<rect/g) || []).length,
    texts: [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map(m => m[1]),
    white: (svg.match(/<path[^>]*fill="(white|#fff|#ffffff)"/g) || []).length}));
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


# DVCLive's curves as the train stage writes them (in DVC's cache, not git: a fresh clone has none)
CURVES = {"train/accuracy": [0.30, 0.45, 0.52], "train/loss_smoothed": [2.0, 1.6, 1.4],
          "val/accuracy": [0.33, 0.40, 0.41], "val/loss_smoothed": [1.9, 1.7, 1.65],
          "val/cross_entropy": [1.8, 1.6, 1.55], "lr": [0.001, 0.001, 0.00097]}


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """`dvc plots show` in a copy of the repo's pipeline file, DVC config and committed metrics."""
    work = tmp_path_factory.mktemp("plots")
    for name in ("dvc.yaml", "params.yaml"):  # dvc.yaml interpolates ${data.watch} from params.yaml
        shutil.copy2(REPO / name, work / name)
    shutil.copytree(REPO / "metrics", work / "metrics")
    for name, values in CURVES.items():
        tsv = work / "dvclive" / "plots" / "metrics" / f"{name}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text(f"step\t{Path(name).name}\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))
    shutil.copytree(REPO / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    done = subprocess.run([DVC, "plots", "show", "-o", "out"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return work / "out" / "index.html"


TITLES = {"Accuracy per epoch", "Loss per epoch", "Learning rate per epoch", "Confusion matrix",
          "Per-class test accuracy", "Per-class test F1"}


def test_dvc_plots_show_writes_a_page_that_loads_nothing_from_the_network(page):
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.I)  # no script loaded at all
    assert "cdn.jsdelivr" not in html
    assert len(_inline_scripts(html)) == 3
    # the training curves (accuracy, loss, lr: train and validation on one chart each), the confusion
    # matrix, per-class accuracy and per-class F1: each once
    assert html.count("vegaEmbed('#") == len(TITLES)


@pytest.fixture(scope="module")
def rendered(page) -> dict[str, dict]:
    """Each plot of the page drawn to SVG by the page's own Vega (node): its marks, texts, white fills."""
    if shutil.which("node") is None:
        pytest.skip("needs node to run the page's JavaScript")
    done = subprocess.run(["node", "-e", RENDER_JS, str(page)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plots = [json.loads(line) for line in done.stdout.splitlines()]
    return {plot["title"]: plot for plot in plots}


def test_the_inlined_vega_renders_every_plot_of_the_page(rendered):
    assert set(rendered) == TITLES  # titles in words, not file paths
    assert all(plot["marks"] > 10 for plot in rendered.values()), rendered


def test_train_and_validation_share_a_chart_labelled_in_words_and_axes_start_at_zero(rendered):
    """Issue 21, item 6: one chart per metric with both splits, legends in words (not file names), and
    the accuracy and lr axes from 0 (lr's 0.00097-0.001 looked like a cliff on an axis of its own)."""
    assert {"train accuracy", "validation accuracy"} <= set(rendered["Accuracy per epoch"]["texts"])
    assert {"train loss smoothed", "validation loss smoothed", "validation cross entropy"} <= set(
        rendered["Loss per epoch"]["texts"])
    assert not any(".tsv" in text for plot in rendered.values() for text in plot["texts"])
    for title, zero in (("Accuracy per epoch", "0.00"), ("Learning rate per epoch", "0.00000")):
        ticks = [t for t in rendered[title]["texts"] if re.fullmatch(r"[0-9.]+", t) and "." in t]
        assert ticks[0] == zero, (title, ticks)


def test_confusion_cells_without_an_image_are_blank(rendered, page):
    """A zero cell is white (DVC's template tints it with the scale's lowest colour)."""
    with open(page.parent.parent / "metrics" / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pairs = {(r["actual"], r["predicted"]) for r in rows}
    zero_cells = len({a for a, _ in pairs}) * len({p for _, p in pairs}) - len(pairs)
    assert zero_cells > 0  # the committed predictions have some
    background = rendered["Per-class test F1"]["white"]  # the page's white backdrop, in every plot
    assert rendered["Confusion matrix"]["white"] == zero_cells + background
