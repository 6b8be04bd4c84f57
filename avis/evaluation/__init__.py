"""YouTube-VIS evaluation (exact to the official evaluator, fast) and significance tests.

* :func:`evaluate` (``ytvis_eval``): results vs ground truth -> the 12 numbers, precision / recall arrays.
* :func:`instance_samples` (``samples``): per ground-truth instance, the IoU and score of its greedy match.
* :func:`compare_recipes` (``recipes``): the verdict of ``avis ttest``: is recipe A better than B, over seeds
  and test videos (one run per arm: the two models).
* :func:`compare` (``ttest``): the per-model diagnostic tests of ``avis ttest``.

See ``docs/evaluation.md``.
"""

import importlib

# imported on first use, so that ``avis --help`` (which looks up the subcommand modules) stays light
_LAZY = {"evaluate": "ytvis_eval", "Evaluation": "ytvis_eval", "STAT_KEYS": "ytvis_eval",
         "instance_samples": "samples", "compare": "ttest", "compare_recipes": "recipes"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"avis.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(name)
