"""What every stage reads images with: :mod:`~vitpipe.data.images` (decode any image to RGB),
:mod:`~vitpipe.data.index` (``Sample``, ``DatasetIndex``, ``SPLITS``; no torch import),
:mod:`~vitpipe.data.layout` (the split root of a dataset folder and the per-image carve of missing
splits, shared by download and split-check; no torch import) and :mod:`~vitpipe.data.torchdata`
(``ImageDataset``, the torch side)."""
