"""The ``train`` stage: :func:`vitpipe.train.training.run_training`.

:mod:`~vitpipe.train.engines` runs epochs on cached features or on images,
:mod:`~vitpipe.train.batches` and :mod:`~vitpipe.train.decoded` feed the image engine,
:mod:`~vitpipe.train.recipe` builds loss, optimizer and schedule with timm,
:mod:`~vitpipe.train.checkpoint` resumes a killed run, :mod:`~vitpipe.train.distributed` runs under torchrun.
"""
