"""The ``split-check`` stage: one class map for every split, and the checks that refuse bad data.

:func:`vitpipe.check.datacheck.run_split_check` is the stage, :func:`~vitpipe.check.datacheck.check_dataset`
the check itself; :mod:`~vitpipe.check.imagescan` reads, hashes and decodes each file once.
Nothing here imports torch.
"""
