"""``vitpipe bench``'s feature-cache row: what a grown dataset costs, per-image entries vs one whole-split file.

On the train split of the benchmark data, with an empty cache: the **cold** pass computes and
stores all images but ``added`` (held back, spread over the split); the **incremental** pass asks
for every image, so only the ``added`` ones are computed; the **warm** read asks again from a new
cache object, computing nothing. Then the cache as it was before (one safetensors file per whole
split, keyed by the list of images): adding images changed the key, so it took one backbone pass
over every image (timed, with the file's write) and its warm read is one file load (timed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from safetensors.torch import load_file, save_file

from vitpipe.bench.bench import append_rows, checked_index, describe_device
from vitpipe.errors import VitpipeError
from vitpipe.model.classifier import build_model
from vitpipe.model.features import Extractor, FeatureCache
from vitpipe.model.featurestore import FILENAME
from vitpipe.model.transforms import build_eval_transform, eval_spec
from vitpipe.params import Params
from vitpipe.report.markdown import md_header, md_row
from vitpipe.runtime import configure, resolve_device

logger = logging.getLogger(__name__)

COLUMNS = ("date", "device", "data (train images)", "added", "cold s (images)", "cold img/s",
           "incremental s (computed)", "warm read s", "store MiB", "whole-split: pass s", "whole-split: read s",
           "whole-split MiB")
SECTION = """## Feature cache: adding images, and a warm read

`vitpipe bench` (unless `--skip-cache`; `--cache-only` runs just this) times the frozen backbone's
feature cache on the train split with the params' model, precision and eval transform (view 0).
**cold s**: an empty cache computes every image but **added** (held back, spread over the split).
**incremental s**: every image requested; only the added ones are computed (**computed**: how many
were). **warm read s**: every image again, from a new cache object (nothing computed). **store MiB**:
the SQLite file of per-image entries. **whole-split**: the cache as it was before, one safetensors
file per split keyed by the list of images, so adding images meant one backbone pass over every image
(**pass s**, the file's write included) and a warm read was one file load (**read s**)."""


@dataclass(frozen=True)
class CacheBench:
    """One feature-cache benchmark run."""

    date: str
    device: str
    data: str
    images: int
    added: int
    cold_s: float
    incremental_s: float
    computed: int
    warm_s: float
    store_mib: float
    whole_pass_s: float
    whole_read_s: float
    whole_mib: float

    def row(self) -> str:
        """The markdown row."""
        cold = self.images - self.added
        cells = (self.date, self.device, f"{self.data} ({self.images})", str(self.added),
                 f"{self.cold_s:.1f} ({cold})", f"{cold / self.cold_s:.1f}", f"{self.incremental_s:.2f} ({self.computed})", f"{self.warm_s:.3f}",
                 f"{self.store_mib:.3g}", f"{self.whole_pass_s:.1f}", f"{self.whole_read_s:.3f}", f"{self.whole_mib:.3g}")
        return md_row(cells)


def table_header() -> list[str]:
    """The markdown table's header and alignment lines."""
    return md_header(COLUMNS)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_cache_bench(params: Params, root: Path, *, out: Path, work: Path, data_name: str | None = None,
                    added: int = 50) -> CacheBench:
    """Runs the three passes and the whole-split comparison in ``work``; appends the row to ``out``."""
    index = checked_index(Path(root), params.data)
    samples = index.samples("train")
    if not 0 < added < len(samples):
        raise VitpipeError(f"--added {added}: must be between 1 and {len(samples) - 1}, the train images of {root} "
                           f"less one.")
    device = resolve_device(params.train.device)
    configure(device, params.train.precision)
    model, info = build_model(params.model, len(index.classes), seed=params.train.seed)
    eval_tf = build_eval_transform(eval_spec(params.train.augment, info))
    extractor = Extractor.for_backbone(model.backbone.to(device), device, params.train.precision,
                                       num_workers=params.train.loader_workers, runtime=params.train.feature_runtime)
    step = len(samples) / added
    held = {int(i * step) for i in range(added)}
    base = [s for i, s in enumerate(samples) if i not in held]

    def request(cache: FeatureCache, which, desc: str):
        return cache.features(extractor, index.root, which, transform=eval_tf, view_seed=None, desc=desc)

    cache = FeatureCache(work / "features")
    _, cold_s = _timed(lambda: request(cache, base, "cold"))
    after_cold = cache.computed
    _, incremental_s = _timed(lambda: request(cache, samples, "incremental"))
    warm = FeatureCache(work / "features")
    feats, warm_s = _timed(lambda: request(warm, samples, "warm"))
    if warm.computed:
        raise VitpipeError(f"the warm read computed {warm.computed} features; the cache in {work} is not reused.")
    whole = work / "whole-split.safetensors"
    _, whole_pass_s = _timed(lambda: save_file({"features": extractor(index.root, samples, eval_tf, seed=None,
                                                                      desc="whole split")}, str(whole)))
    loaded, whole_read_s = _timed(lambda: load_file(str(whole))["features"])
    if not loaded.equal(feats):
        raise VitpipeError("the whole-split pass and the per-image cache disagree; the benchmark is not comparable.")
    result = CacheBench(date=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"), device=describe_device(device),
                        data=data_name or Path(root).resolve().name, images=len(samples), added=added,
                        cold_s=cold_s, incremental_s=incremental_s, computed=cache.computed - after_cold,
                        warm_s=warm_s, store_mib=(work / "features" / FILENAME).stat().st_size / 2**20,
                        whole_pass_s=whole_pass_s, whole_read_s=whole_read_s, whole_mib=whole.stat().st_size / 2**20)
    append_rows(out, [result.row()], header=table_header(), section=SECTION)
    return result


def format_table(result: CacheBench) -> str:
    """The run's row under the table header, for stdout."""
    return "\n".join(table_header() + [result.row()])
