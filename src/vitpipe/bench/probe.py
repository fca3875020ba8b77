"""``vitpipe bench --probe``: a logistic-regression probe on the frozen backbone's pooled features.

The baseline a careful engineer would fit before any training loop: the same backbone, weights,
eval transform and precision as the train stage's view 0 (the features its head trains on with
``train.cache_views: 1``), standardised, then scikit-learn's ``LogisticRegression`` (L2, C=1,
lbfgs) on the train split; valid and test are scored. Its time covers the feature pass over
train, valid and test from an empty cache, and the fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vitpipe.data.index import DatasetIndex
from vitpipe.model.classifier import build_model
from vitpipe.model.features import Extractor, FeatureCache
from vitpipe.model.transforms import build_eval_transform, eval_spec
from vitpipe.params import Params
from vitpipe.runtime import configure, resolve_device, seed_everything

logger = logging.getLogger(__name__)

PROBE = "logistic regression probe (sklearn, view 0 features)"


@dataclass(frozen=True)
class ProbeResult:
    """The probe's counts and times."""

    seconds: float  # feature pass (train, valid, test) and fit
    feature_seconds: float
    images: int  # through the backbone
    train_images: int
    val_correct: int
    val_images: int
    test_correct: int
    test_images: int


def run_probe(params: Params, index: DatasetIndex, work: Path) -> ProbeResult:
    """Fits the probe on ``index``'s train features (an empty cache in ``work``) and scores valid and test."""
    t = params.train
    device = resolve_device(t.device)
    configure(device, t.precision)
    seed_everything(t.seed)
    start = time.perf_counter()
    model, info = build_model(params.model, len(index.classes), seed=t.seed)
    extractor = Extractor.for_backbone(model.backbone.to(device), device, t.precision, num_workers=t.num_workers,
                                       runtime=t.feature_runtime)
    transform = build_eval_transform(eval_spec(t.augment, info))
    cache = FeatureCache(work / "features")
    feats, labels = {}, {}
    for split in ("train", "valid", "test"):
        samples = index.samples(split)
        feats[split] = cache.features(extractor, index.root, samples, transform=transform, view_seed=None,
                                      desc=f"probe {split}").float().numpy()
        labels[split] = np.array([s.label for s in samples])
    feature_seconds = time.perf_counter() - start
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(feats["train"], labels["train"])
    seconds = time.perf_counter() - start
    correct = {split: int((probe.predict(feats[split]) == labels[split]).sum()) if len(labels[split]) else 0
               for split in ("valid", "test")}
    logger.info("bench: %s: test %d/%d, valid %d/%d; %.1f s (features %.1f s)", PROBE, correct["test"],
                len(labels["test"]), correct["valid"], len(labels["valid"]), seconds, feature_seconds)
    return ProbeResult(seconds=seconds, feature_seconds=feature_seconds, images=sum(len(v) for v in labels.values()),
                       train_images=len(labels["train"]), val_correct=correct["valid"],
                       val_images=len(labels["valid"]), test_correct=correct["test"], test_images=len(labels["test"]))
