"""The ``evaluate`` stage (:func:`vitpipe.evaluate.evaluation.run_evaluation`) and ``vitpipe predict``
(:mod:`~vitpipe.evaluate.predict`), both through :mod:`~vitpipe.evaluate.inference`."""
