"""Labels joined with stored predictions, per version and window, in SQLite and in a
real PostgreSQL: the numbers are scikit-learn's on the rows the join should pick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from modelyard.quality.evaluate import Evaluator
from modelyard.quality.scoring import OVERALL
from tests.quality.conftest import Stores, classifier, scores_frame

MONDAY = datetime(2025, 1, 6, 9, 30, tzinfo=UTC)


def window(frame: pd.DataFrame, kind: str, start: str, version: str = "1.0") -> pd.DataFrame:
    rows = frame[
        (frame["window"] == kind)
        & (frame["start"] == pd.Timestamp(start, tz="UTC"))
        & (frame["version"] == version)
    ]
    assert not rows.empty, f"no {kind} window {start} for version {version}"
    return rows


def value(rows: pd.DataFrame, metric: str, cls: str = OVERALL) -> float:
    match = rows[(rows["metric"] == metric) & (rows["class"] == cls)]
    assert len(match) == 1, (metric, cls)
    return float(match["value"].iloc[0])


def test_batch_predictions_and_labels_give_scikit_learns_numbers_per_window(
    stores: Stores,
) -> None:
    rng = np.random.default_rng(1)
    ids = [f"u{i:04d}" for i in range(300)]
    p_yes = rng.random(300)
    stores.run("r1", scores_frame(ids, p_yes))
    config = classifier(stores.folder, stores.url)
    truth = np.where(rng.random(300) < p_yes, "yes", "no")  # the scores mean something
    # 240 labels over two days of one week and a day of the next; 60 entities unlabelled.
    days = [MONDAY, MONDAY + timedelta(days=2), MONDAY + timedelta(days=8)]
    observed = [days[i % 3] + timedelta(minutes=i) for i in range(240)]
    stores.labels(config, ids[:240], list(truth[:240]), observed)
    # A label for an entity no run scored judges nothing.
    stores.labels(config, ["stranger"], ["yes"], [MONDAY])

    evaluator = Evaluator(config, stores.quality)
    assert evaluator.refresh() == 5  # 3 days, 2 weeks
    stored = evaluator.stored()

    def expected(which: list[int]) -> dict[str, float]:
        y = truth[which]
        score = p_yes[which]
        predicted = np.where(score >= 1 - score, "yes", "no")
        onehot = np.column_stack([y == "yes", y == "no"]).astype(int)
        return {
            "samples": len(which),
            "accuracy": sk.accuracy_score(y, predicted),
            "precision_macro": sk.precision_score(y, predicted, labels=["yes", "no"],
                                                  average="macro", zero_division=0),
            "recall_macro": sk.recall_score(y, predicted, labels=["yes", "no"], average="macro"),
            "f1_macro": sk.f1_score(y, predicted, labels=["yes", "no"], average="macro"),
            "roc_auc_macro": sk.roc_auc_score(onehot, np.column_stack([score, 1 - score])),
            "roc_auc:yes": sk.roc_auc_score(y == "yes", score),
        }  # fmt: skip

    cases = {
        ("day", "2025-01-06"): [i for i in range(240) if i % 3 == 0],
        ("day", "2025-01-08"): [i for i in range(240) if i % 3 == 1],
        ("day", "2025-01-14"): [i for i in range(240) if i % 3 == 2],
        ("week", "2025-01-06"): [i for i in range(240) if i % 3 in (0, 1)],
        ("week", "2025-01-13"): [i for i in range(240) if i % 3 == 2],
    }
    for (kind, start), which in cases.items():
        rows = window(stored, kind, start)
        want = expected(which)
        assert rows["window_samples"].iloc[0] == want.pop("samples")
        assert value(rows, "roc_auc", "yes") == pytest.approx(want.pop("roc_auc:yes"), rel=1e-9)
        for metric, number in want.items():
            assert value(rows, metric) == pytest.approx(number, rel=1e-9), (kind, start, metric)
    # Nothing changed: nothing is recomputed.
    assert evaluator.refresh() == 0
    assert evaluator.stored()["computed_at"].equals(stored["computed_at"])


def test_each_label_judges_the_run_current_when_it_was_observed(stores: Stores) -> None:
    ids = ["a", "b", "c"]
    first = stores.run("first", scores_frame(ids, np.full(3, 0.9)))  # says yes
    second = stores.run("second", scores_frame(ids, np.full(3, 0.1)))  # says no
    assert first.finished_at is not None and second.finished_at is not None
    config = classifier(stores.folder, stores.url)
    between = first.finished_at + (second.finished_at - first.finished_at) / 2
    later = second.finished_at + timedelta(days=1)
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    stores.labels(config, ids, ["yes"] * 3, [long_ago, between, later])

    evaluator = Evaluator(config, stores.quality)
    evaluator.refresh()
    stored = evaluator.stored(kind="day")
    # Before any run: the first run's prediction; between the runs: the first's; after
    # the second: the second's.
    assert value(window(stored, "day", "2020-01-01"), "accuracy") == 1.0
    assert value(window(stored, "day", f"{between:%Y-%m-%d}"), "accuracy") == 1.0
    assert value(window(stored, "day", f"{later:%Y-%m-%d}"), "accuracy") == 0.0


def test_late_labels_recompute_their_window_and_no_other(stores: Stores) -> None:
    ids = [f"u{i}" for i in range(40)]
    stores.run("r1", scores_frame(ids, np.linspace(0.01, 0.99, 40)))
    config = classifier(stores.folder, stores.url)
    wednesday_next_week = MONDAY + timedelta(days=9)
    stores.labels(config, ids[:10], ["yes"] * 10, [MONDAY] * 10)
    stores.labels(config, ids[10:20], ["no"] * 10, [wednesday_next_week] * 10)
    evaluator = Evaluator(config, stores.quality)
    assert evaluator.refresh() == 4
    before = evaluator.stored()

    # Labels observed on that Monday arrive a week late.
    stores.labels(config, ids[30:40], ["yes"] * 10, [MONDAY + timedelta(hours=3)] * 10)
    assert evaluator.refresh() == 2  # that day and its week
    after = evaluator.stored()

    def samples(frame: pd.DataFrame, kind: str, start: str) -> int:
        return int(window(frame, kind, start)["window_samples"].iloc[0])

    def computed(frame: pd.DataFrame, kind: str, start: str) -> pd.Timestamp:
        return window(frame, kind, start)["computed_at"].iloc[0]

    assert samples(before, "day", "2025-01-06") == 10
    assert samples(after, "day", "2025-01-06") == 20
    assert samples(after, "week", "2025-01-06") == 20
    # u0..u9 score low and are "yes" (wrong); u30..u39 score high and are "yes" (right).
    assert value(window(before, "day", "2025-01-06"), "accuracy") == 0.0
    assert value(window(after, "day", "2025-01-06"), "accuracy") == 0.5
    assert computed(after, "day", "2025-01-06") > computed(before, "day", "2025-01-06")
    for kind, start in (("day", "2025-01-15"), ("week", "2025-01-13")):
        assert computed(after, kind, start) == computed(before, kind, start)
        assert samples(after, kind, start) == 10


def test_a_changed_label_replaces_the_old_one_and_recomputes(stores: Stores) -> None:
    stores.run("r1", scores_frame(["a", "b"], np.array([0.9, 0.2])))
    config = classifier(stores.folder, stores.url)
    assert stores.labels(config, ["a", "b"], ["yes", "yes"], [MONDAY, MONDAY]) == 2
    evaluator = Evaluator(config, stores.quality)
    evaluator.refresh()
    assert value(window(evaluator.stored(), "day", "2025-01-06"), "accuracy") == 0.5
    # The same labels again change nothing; an older observation never wins.
    assert stores.labels(config, ["a", "b"], ["yes", "yes"], [MONDAY, MONDAY]) == 0
    assert stores.labels(config, ["b"], ["no"], [MONDAY - timedelta(days=1)]) == 0
    assert evaluator.refresh() == 0
    # A later observation of b replaces it (same day: the same window).
    assert stores.labels(config, ["b"], ["no"], [MONDAY + timedelta(hours=1)]) == 1
    assert evaluator.refresh() == 2
    assert value(window(evaluator.stored(), "day", "2025-01-06"), "accuracy") == 1.0


def test_regression_and_a_prediction_column(stores: Stores) -> None:
    columns = {"user_id": "BYTES", "value": "FP64"}
    labels = np.array([1.0, 2.5, 4.0, 10.0])
    predicted = np.array([1.5, 2.0, 4.0, 7.0])
    frame = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "value": predicted})
    stores.run("r1", frame, columns=columns)
    config = classifier(stores.folder, stores.url, task="regression", prediction="value", scores={})
    stores.labels(config, ["a", "b", "c", "d"], list(labels), [MONDAY] * 4)
    evaluator = Evaluator(config, stores.quality)
    evaluator.refresh()
    rows = window(evaluator.stored(), "week", "2025-01-06")
    assert value(rows, "mae") == pytest.approx(sk.mean_absolute_error(labels, predicted))
    assert value(rows, "rmse") == pytest.approx(sk.root_mean_squared_error(labels, predicted))


def test_versions_are_scored_apart(stores: Stores) -> None:
    ids = ["a", "b", "c", "d"]
    stores.run("r1", scores_frame(ids, np.array([0.9, 0.9, 0.9, 0.9])), version="1.0")
    stores.run("r1", scores_frame(ids, np.array([0.9, 0.9, 0.1, 0.1])), version="2.0")
    config = classifier(stores.folder, stores.url)
    stores.labels(config, ids, ["yes", "yes", "no", "no"], [MONDAY] * 4)
    evaluator = Evaluator(config, stores.quality)
    evaluator.refresh()
    stored = evaluator.stored(kind="week")
    assert value(window(stored, "week", "2025-01-06", "1.0"), "accuracy") == 0.5
    assert value(window(stored, "week", "2025-01-06", "2.0"), "accuracy") == 1.0
    assert set(evaluator.stored(version="2.0")["version"]) == {"2.0"}
