"""Annotation exporters: predictions (YTVIS results) -> files that people and other tools use.

One small module per format; each has a ``write_*(tracks, gt, out_dir, ...) -> Path`` and, where the format
can be read back, a ``read_*(path, gt) -> tracks``. :func:`data_tools.export.export` drives them.
"""
