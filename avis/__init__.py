"""avis: audio-visual video instance segmentation toolkit."""

__version__ = "0.1.0"
