"""The batch gauges come from the store's runs table: complete and failed runs, the
latest success, and when the schedule last fired."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from croniter import croniter
from prometheus_client import REGISTRY

from modelyard.quality.exporter import export_runs
from modelyard.store.tables import PredictionsSpec
from tests.quality.conftest import COLUMNS, KEY, MODEL, VERSION, Stores, classifier, scores_frame


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"model": MODEL, **labels})


def test_batch_gauges_follow_the_runs_table(stores: Stores) -> None:
    config = classifier(stores.folder, stores.url)
    done = stores.run("r1", scores_frame(["a", "b", "c"], np.array([0.1, 0.5, 0.9])))
    spec = PredictionsSpec.of(MODEL, VERSION, KEY, COLUMNS)
    stores.predictions.ledger.start_shard(spec, "r2", 0, 1)
    stores.predictions.ledger.fail_shard(spec, "r2", 0, "features database down")

    export_runs(config, stores.quality, "0 3 * * *")
    version = {"version": VERSION}
    assert gauge("modelyard_batch_last_run_failed", **version) == 1
    assert gauge("modelyard_batch_runs", status="failed", **version) == 1
    assert gauge("modelyard_batch_runs", status="complete", **version) == 1
    assert gauge("modelyard_batch_last_run_rows", **version) == 3
    assert done.finished_at is not None
    assert gauge("modelyard_batch_last_success_timestamp_seconds", **version) == pytest.approx(
        done.finished_at.timestamp()
    )
    duration = gauge("modelyard_batch_last_run_duration_seconds", **version)
    assert duration is not None and 0 <= duration < 60
    due = croniter("0 3 * * *", datetime.now(UTC)).get_prev(datetime)
    assert gauge("modelyard_batch_last_due_timestamp_seconds") == due.timestamp()

    # Run again with the same id and complete it: no longer failed.
    rerun = stores.run("r2", scores_frame(["a", "b"], np.array([0.2, 0.4])))
    export_runs(config, stores.quality, None)
    assert gauge("modelyard_batch_last_run_failed", **version) == 0
    assert gauge("modelyard_batch_runs", status="complete", **version) == 2
    assert gauge("modelyard_batch_last_run_rows", **version) == 2
    assert rerun.finished_at is not None
    assert gauge("modelyard_batch_last_success_timestamp_seconds", **version) == pytest.approx(
        rerun.finished_at.timestamp()
    )
