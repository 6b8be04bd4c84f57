"""YouTube-VIS evaluation (exact to the official evaluator, fast) and significance tests.

* :func:`evaluate` (``ytvis_eval``): results vs ground truth -> the 12 numbers, precision / recall arrays.
* :func:`instance_samples` (``samples``): per ground-truth instance, the IoU and score of its greedy match.
* :func:`compare` (``ttest``): the significance tests of ``avis ttest``.

See ``docs/evaluation.md``.
"""

from avis.evaluation.samples import instance_samples
from avis.evaluation.ttest import compare
from avis.evaluation.ytvis_eval import STAT_KEYS, Evaluation, evaluate

__all__ = ["STAT_KEYS", "Evaluation", "compare", "evaluate", "instance_samples"]
