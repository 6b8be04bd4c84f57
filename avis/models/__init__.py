"""Models: backbones, the audio branch, RCF and the visual-only baselines. See :mod:`avis.models.base`."""
