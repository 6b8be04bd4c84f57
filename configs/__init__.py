"""The hydra configs of ``avis train`` (see README.md here). In the wheel this folder is the package
``avis.configs``, which hydra reads as a config module (``pkg://avis.configs``)."""
