"""`modelyard batch run --candidate`: a model folder's new version scored beside the
incumbent's latest run, and the two compared entity by entity.

The candidate's run is recorded under the model's name with ``CANDIDATE_SUFFIX``
(``gender~candidate``), so it has a table of its own and never becomes the run the
lookup model and the readers of ``gender`` take; the incumbent's latest complete run
(of any version) is the one it is compared with. Numbers agree within the declaration's
``rollout.compare.tolerance`` (default 1e-6), every other column when equal, as the
serving comparison (`modelyard.serving.rollouts`) judges them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from modelyard.batch.run import BatchError, BatchJob, RunOptions, RunResult
from modelyard.declarations.integrity import EXTRA_KEY
from modelyard.store.connection import PredictionStore
from modelyard.store.runs import RunInfo, RunStatus

CANDIDATE_SUFFIX = "~candidate"
DEFAULT_TOLERANCE = 1e-6
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
# Entities whose predictions differ, named in the printed comparison.
SHOWN = 10


@dataclass
class BatchComparison:
    incumbent: RunInfo
    candidate: RunInfo
    compared: int = 0
    agreed: int = 0
    only_incumbent: int = 0
    only_candidate: int = 0
    columns: dict[str, dict[str, float]] = field(default_factory=dict)
    differing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def summary(self) -> str:
        agreement = f"{self.agreement:.4f}" if self.agreement is not None else "-"
        lines = [
            f"candidate version {self.candidate.version} (run {self.candidate.run_id}) against "
            f"version {self.incumbent.version} (run {self.incumbent.run_id}): "
            f"{self.compared:,} entities compared, agreement {agreement}; "
            f"{self.only_incumbent:,} only in the incumbent's run, "
            f"{self.only_candidate:,} only in the candidate's",
        ]
        for name, c in self.columns.items():
            diff = (
                f", mean |diff| {c['mean_abs']:.6g}, max {c['max_abs']:.6g}"
                if "mean_abs" in c
                else ""
            )
            lines.append(f"  {name}: agreement {c['agreement']:.4f}{diff}")
        for row in self.differing:
            lines.append(f"  differs: {row}")
        return "\n".join(lines)


def candidate_job(job: BatchJob) -> BatchJob:
    """``job`` recorded as its model's candidate: its own name in the store, no
    retention or export (those are the incumbent's)."""
    job.spec = dataclasses.replace(job.spec, model=job.spec.model + CANDIDATE_SUFFIX)
    job.keep_runs = None
    job.export = None
    return job


def run_candidate(job: BatchJob, options: RunOptions) -> tuple[RunResult, BatchComparison | None]:
    """Score ``job``'s folder as the candidate; the comparison once its run is complete."""
    model = job.spec.model
    store = job.open_store(writer=False)
    try:
        incumbent = store.ledger.latest_run(model)
    finally:
        store.close()
    if incumbent is None:
        raise BatchError(
            f"model '{model}' has no complete run to compare a candidate with; run "
            "`modelyard batch run` without --candidate first"
        )
    result = candidate_job(job).run(options)
    if result.error is not None or result.run is None or result.run.status != RunStatus.COMPLETE:
        return result, None
    store = job.open_store(writer=False)
    try:
        return result, compare_runs(store, job, incumbent, result.run)
    finally:
        store.close()


def _rows(store: PredictionStore, run: RunInfo, key: str, columns: list[str]) -> pd.DataFrame:
    table = sa.Table(run.table, sa.MetaData(), autoload_with=store.engine)
    present = [c for c in columns if c in table.c]
    query = sa.select(table.c[key], *[table.c[c] for c in present]).where(
        table.c.model == run.model, table.c.version == run.version, table.c.run_id == run.run_id
    )
    with store.engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(), columns=[key, *present])
    return frame.set_index(key)


def compare_runs(
    store: PredictionStore, job: BatchJob, incumbent: RunInfo, candidate: RunInfo
) -> BatchComparison:
    spec = job.spec
    key = spec.key
    values = [c for c in spec.columns if c != key]
    mine = _rows(store, incumbent, key, values)
    theirs = _rows(store, candidate, key, values)
    both = mine.index.intersection(theirs.index)
    out = BatchComparison(
        incumbent,
        candidate,
        compared=len(both),
        only_incumbent=len(mine.index.difference(theirs.index)),
        only_candidate=len(theirs.index.difference(mine.index)),
    )
    tolerance = _tolerance(job)
    agree = np.ones(len(both), dtype=bool)
    for name in values:
        if name not in mine.columns or name not in theirs.columns:
            continue
        a = mine.loc[both, name].to_numpy()
        b = theirs.loc[both, name].to_numpy()
        entry: dict[str, float] = {}
        if spec.columns[name] in FLOAT_DATATYPES:
            x, y = a.astype(np.float64), b.astype(np.float64)
            difference = np.abs(x - y)
            same = (difference <= tolerance) | (np.isnan(x) & np.isnan(y))
            finite = difference[~np.isnan(difference)]
            entry["mean_abs"] = float(finite.mean()) if finite.size else 0.0
            entry["max_abs"] = float(finite.max()) if finite.size else 0.0
        else:
            same = a == b
        entry["agreement"] = float(same.mean()) if len(same) else 1.0
        out.columns[name] = entry
        agree &= same
    out.agreed = int(agree.sum())
    for entity in both[~agree][:SHOWN]:
        out.differing.append(
            {key: entity, **{n: (mine.at[entity, n], theirs.at[entity, n]) for n in out.columns}}
        )
    return out


def _tolerance(job: BatchJob) -> float:
    extra = job.settings.parameters.extra if job.settings.parameters is not None else None
    rollout = ((extra or {}).get(EXTRA_KEY) or {}).get("rollout") or {}
    return float((rollout.get("compare") or {}).get("tolerance", DEFAULT_TOLERANCE))
