"""``vitpipe bench``: the tutorial's loop (:mod:`~vitpipe.bench.tutorial`) against the train stage
(:func:`vitpipe.bench.bench.run_bench`), with peak memory (:mod:`~vitpipe.bench.memory`)."""
