"""``vitpipe report``: the pull-request report (:func:`vitpipe.report.report.write_report`) and its
PNG plots (:mod:`~vitpipe.report.plots`)."""
