"""The ``download`` stage: ``data.source`` -> ``data/raw/{train,valid,test}/<class>/``.

:func:`vitpipe.download.sources.fetch` is the entry point; :mod:`~vitpipe.download.layout` writes what
:mod:`vitpipe.data.layout` finds (the split root; missing splits carved off train),
:mod:`~vitpipe.download.archive` extracts safely, :mod:`~vitpipe.download.http_fetch` streams https,
:mod:`~vitpipe.download.synthetic` draws the embedded default set. Nothing here imports torch.
"""
