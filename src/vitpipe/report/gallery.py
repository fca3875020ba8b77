"""The gallery of ``vitpipe report``: the most confidently wrong test images, as fastai's ``plot_top_losses``.

People look at pictures: the report shows the wrong predictions with the highest confidence as
thumbnails with their actual and predicted class (:func:`vitpipe.report.plots.top_losses`), read
through the dataset index.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from vitpipe.data.images import BadImageError, load_rgb
from vitpipe.data.index import DatasetIndex

GALLERY_SIZE = 12  # test images in the gallery
THUMBNAIL = 160  # their longest side, in pixels


def worst_predictions(predictions: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` wrong predictions with the highest confidence (ties by path)."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    return wrong.sort_values(["confidence", "path"], ascending=[False, True], kind="stable").head(top)


def _thumbnail(data_root: Path, rel: str) -> Image.Image | None:
    path = (data_root / rel).resolve()
    if not path.is_relative_to(data_root.resolve()):
        return None  # a path that leaves the dataset is not read
    try:
        image = load_rgb(path)
    except (BadImageError, OSError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def gallery_images(root: Path, index_rel: str, rows: pd.DataFrame) -> list[Image.Image | None] | None:
    """Thumbnails of ``rows``' test images (None for one not found), or None without the dataset index."""
    if not (root / index_rel).is_file():
        return None
    data_root = DatasetIndex.load(root / index_rel).root
    data_root = data_root if data_root.is_absolute() else root / data_root
    return [_thumbnail(data_root, rel) for rel in rows["path"]]
