"""The model and what shapes its inputs and outputs, shared by train, evaluate and predict.

:mod:`~vitpipe.model.classifier` (``build_model``: a timm backbone and the recipe's head),
:mod:`~vitpipe.model.weights` (pretrained or local weights, loaded safely),
:mod:`~vitpipe.model.transforms` (eval and training transforms), :mod:`~vitpipe.model.model_file`
(``models/model.safetensors`` and its card), :mod:`~vitpipe.model.features` (the frozen-backbone
feature cache).
"""
