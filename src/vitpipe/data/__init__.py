"""What every stage reads images with: :mod:`~vitpipe.data.images` (decode any image to RGB),
:mod:`~vitpipe.data.index` (``Sample``, ``DatasetIndex``, ``SPLITS``; no torch import) and
:mod:`~vitpipe.data.torchdata` (``ImageDataset``, the torch side)."""
