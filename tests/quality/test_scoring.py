"""The metrics equal scikit-learn's on the same labels, predictions and scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from modelyard.quality import scoring
from modelyard.quality.scoring import OVERALL

EXACT = {"rel": 1e-12, "abs": 1e-12}


def by_name(results: list[scoring.Metric]) -> dict[tuple[str, str], scoring.Metric]:
    return {(m.name, m.cls): m for m in results}


def check_classification(
    labels: list[str], predicted: list[str], classes: list[str], scores: dict[str, np.ndarray]
) -> None:
    got = by_name(scoring.classification(labels, predicted, classes, scores))
    assert got[("accuracy", OVERALL)].value == pytest.approx(
        sk.accuracy_score(labels, predicted), **EXACT
    )
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    for i, c in enumerate(classes):
        assert got[("precision", c)].value == pytest.approx(precision[i], **EXACT)
        assert got[("recall", c)].value == pytest.approx(recall[i], **EXACT)
        assert got[("f1", c)].value == pytest.approx(f1[i], **EXACT)
        assert got[("precision", c)].samples == support[i]
        truth = np.asarray(labels) == c
        assert got[("roc_auc", c)].value == pytest.approx(
            sk.roc_auc_score(truth, scores[c]), **EXACT
        )
    for name, average in (("precision", "precision"), ("recall", "recall"), ("f1", "f1")):
        expected = getattr(sk, f"{average}_score")(
            labels, predicted, labels=classes, average="macro", zero_division=0
        )
        assert got[(f"{name}_macro", OVERALL)].value == pytest.approx(expected, **EXACT)
    # Macro ROC AUC: each class against the rest, averaged (scikit-learn's multilabel form).
    matrix = np.column_stack([scores[c] for c in classes])
    onehot = np.column_stack([np.asarray(labels) == c for c in classes]).astype(int)
    assert got[("roc_auc_macro", OVERALL)].value == pytest.approx(
        sk.roc_auc_score(onehot, matrix, average="macro"), **EXACT
    )


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_classifier_metrics_equal_scikit_learns(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    classes = [f"c{i}" for i in range(n_classes)]
    n = 700
    labels = list(rng.choice(classes, n))
    raw = rng.random((n, n_classes)) + np.eye(n_classes)[[classes.index(x) for x in labels]] * 0.4
    probabilities = raw / raw.sum(axis=1, keepdims=True)
    # Ties in the scores, as percentiles and rounded probabilities have.
    probabilities = np.round(probabilities, 2)
    predicted = [classes[i] for i in np.argmax(probabilities, axis=1)]
    # A few predictions against the scores, so predicted and argmax differ.
    predicted[:20] = list(rng.choice(classes, 20))
    scores = {c: probabilities[:, i] for i, c in enumerate(classes)}
    check_classification(labels, predicted, classes, scores)


def test_a_class_never_predicted_has_zero_precision_and_one_never_true_no_auc() -> None:
    labels = ["a", "a", "b", "b", "a"]
    predicted = ["a", "a", "a", "a", "a"]
    scores = {"a": np.array([0.9, 0.8, 0.4, 0.3, 0.7]), "b": np.array([0.1, 0.2, 0.6, 0.7, 0.3])}
    check_classification(labels, predicted, ["a", "b"], scores)
    got = by_name(
        scoring.classification(labels, predicted, ["a", "b", "c"], {**scores, "c": np.zeros(5)})
    )
    assert got[("precision", "b")].value == 0.0
    assert got[("roc_auc", "c")].value is None  # never true: undefined, as scikit-learn says
    assert got[("roc_auc_macro", OVERALL)].value == pytest.approx(1.0)


def test_regressor_metrics_equal_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    labels = rng.normal(10, 3, 500)
    predicted = labels + rng.normal(0, 1, 500)
    got = by_name(scoring.regression(list(labels), list(predicted)))
    assert got[("mae", OVERALL)].value == pytest.approx(
        sk.mean_absolute_error(labels, predicted), **EXACT
    )
    assert got[("rmse", OVERALL)].value == pytest.approx(
        sk.root_mean_squared_error(labels, predicted), **EXACT
    )
    assert got[("mae", OVERALL)].samples == 500
