"""vitpipe: a reproducible DVC pipeline that fine-tunes a timm Vision Transformer."""

__version__ = "0.1.0"
