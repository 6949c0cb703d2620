"""The metrics themselves, from labels and predictions, as scikit-learn defines them
(the tests hold them to ``sklearn.metrics`` on the same data):

- classifiers: accuracy; precision, recall and F1 per class and their macro average
  over the classes (0 where a ratio has nothing to divide by, scikit-learn's
  ``zero_division=0``); ROC AUC per class (one against the rest, from that class's
  score) and their mean, undefined (None) for a class that is always or never true;
- regressors: MAE and RMSE.

Computed with numpy alone: the server recomputes windows in the background, and
needs nothing heavier than a rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

OVERALL = ""  # the ``class`` of a metric of the model as a whole


@dataclass(frozen=True)
class Metric:
    name: str
    cls: str  # a class label, or OVERALL
    value: float | None
    samples: int  # the rows it is computed over (a class's support for per-class ones)


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """The area under the ROC curve of a binary ``truth`` ranked by ``score``: the
    Mann-Whitney statistic with ties counted half, which is what the trapezoids of
    scikit-learn's curve add up to. None when only one class is present."""
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def classification(
    labels: Sequence[str],
    predicted: Sequence[str],
    classes: Sequence[str],
    scores: dict[str, np.ndarray] | None = None,
) -> list[Metric]:
    """Metrics of a classifier; ``classes`` in the order they are reported (labels
    outside them count as errors for accuracy only, as with scikit-learn's ``labels=``)."""
    y = np.asarray(labels, dtype=object)
    p = np.asarray(predicted, dtype=object)
    n = len(y)
    out = [Metric("accuracy", OVERALL, float(np.mean(y == p)) if n else None, n)]
    per: dict[str, list[float]] = {"precision": [], "recall": [], "f1": [], "roc_auc": []}
    for c in classes:
        truth, guess = y == c, p == c
        tp = int(np.sum(truth & guess))
        fp = int(np.sum(~truth & guess))
        fn = int(np.sum(truth & ~guess))
        support = tp + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        for name, value in (("precision", precision), ("recall", recall), ("f1", f1)):
            per[name].append(value)
            out.append(Metric(name, c, value, support))
        if scores is not None and c in scores:
            auc = roc_auc(truth, np.asarray(scores[c], dtype=np.float64))
            if auc is not None:
                per["roc_auc"].append(auc)
            out.append(Metric("roc_auc", c, auc, support))
    for name, values in per.items():
        if name == "roc_auc" and scores is None:
            continue
        mean = float(np.mean(values)) if values else None
        out.append(Metric(f"{name}_macro", OVERALL, mean, n))
    return out


def regression(labels: Sequence[float], predicted: Sequence[float]) -> list[Metric]:
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    n = len(y)
    if not n:
        return [Metric("mae", OVERALL, None, 0), Metric("rmse", OVERALL, None, 0)]
    error = y - p
    return [
        Metric("mae", OVERALL, float(np.mean(np.abs(error))), n),
        Metric("rmse", OVERALL, float(np.sqrt(np.mean(error**2))), n),
    ]
