"""``vitpipe export`` and the optional export stage: the trained model in formats other software loads.

:mod:`~vitpipe.export.onnx_file` (an ONNX graph with the class names and eval preprocessing in
its metadata; also the backbone alone, fp32 or dynamic int8), :mod:`~vitpipe.export.onnx_predictor`
(``vitpipe predict`` on a ``.onnx`` file, through onnxruntime), :mod:`~vitpipe.export.timm_folder`
(a timm / Hugging Face Hub folder), :mod:`~vitpipe.export.model_card` (its README.md) and
:mod:`~vitpipe.export.export` (the output folder's checks, the atomic write).
"""
