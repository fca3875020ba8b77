"""Writes .dvc/offline_plots.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined.

`dvc plots show` writes a page that loads these three scripts from a CDN, so offline it is blank.
This template (set in .dvc/config, ``[plots] html_template``) carries them inline instead, at the
versions DVC's own page references (read from the installed dvc-render), fetched from the npm
registry with ``npm pack``. It omits DVC's ``{scripts}`` placeholder, so no CDN script is added.

    python tools/vega_template.py            # needs npm and the registry; rewrites the template

Licenses: BSD-3-Clause, see NOTICE. tests/report/test_offline_plots.py checks the result.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from dvc_render.vega import VegaRenderer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "offline_plots.html"
BUILDS = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- Written by tools/vega_template.py: the scripts DVC's page loads from a CDN, inlined from npm
{manifest}
         BSD-3-Clause, (c) University of Washington Interactive Data Lab; see NOTICE. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def dvc_versions() -> dict[str, str]:
    """The package versions DVC's plots page loads (``https://cdn.jsdelivr.net/npm/NAME@VERSION``)."""
    found = dict(re.findall(r"/npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS))
    assert set(found) == set(BUILDS), f"dvc-render's scripts changed: {found}"
    return found


def fetch(name: str, version: str, scratch: Path) -> str:
    """The minified browser build of ``name@version``, from the tarball ``npm pack`` downloads."""
    subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=scratch, check=True,
                   capture_output=True)
    with tarfile.open(scratch / f"{name}-{version}.tgz") as tgz:  # read one member, extract nothing
        text = tgz.extractfile(f"package/{BUILDS[name]}").read().decode("utf-8")
    if re.search(r"</script|\{(scripts|plot_divs|refresh_tag)\}", text, flags=re.I):
        raise SystemExit(f"{name}@{version}: its build holds text that would break an inline <script>")
    return text


def main() -> int:
    versions = dvc_versions()
    with tempfile.TemporaryDirectory() as scratch:
        builds = {name: fetch(name, version, Path(scratch)) for name, version in versions.items()}
    manifest = "\n".join(f"         {name}@{versions[name]} {BUILDS[name]} "
                         f"sha256:{hashlib.sha256(text.encode()).hexdigest()}" for name, text in builds.items())
    scripts = "\n".join(f"    <script>{text}</script>" for text in builds.values())
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(PAGE.format(manifest=manifest, scripts=scripts), encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1e6:.2f} MB)")  # noqa: T201 - the tool's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
