"""The lookup model: the stored predictions of the latest complete run by entity id,
called directly and through a real `modelyard serve` over REST and gRPC."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from mlserver.types import InferenceRequest
from modelyard_runtimes.lookup import LookupRuntime, NoPredictions

from modelyard.declarations.companions import lookup_settings
from modelyard.declarations.folders import load_model_folder
from tests.batch.conftest import EXAMPLE, VALUES, batch, direct_scores, ok, stored
from tests.support.clients import expect_error, ids, infer, make_client, texts

ASKED = ["u0000042", "nobody", "u0000007", "u0000042"]


def request(*user_ids: str) -> InferenceRequest:
    return InferenceRequest.model_validate(
        {
            "inputs": [
                {
                    "name": "user_id",
                    "datatype": "BYTES",
                    "shape": [len(user_ids)],
                    "data": list(user_ids),
                }
            ]
        }
    )


def outputs(response) -> dict[str, list]:  # type: ignore[no-untyped-def]
    return {
        o.name: [v.decode() if isinstance(v, bytes) else v for v in o.data.root]
        for o in response.outputs
    }


async def test_called_directly_answers_the_latest_complete_run(
    folder: Path, sqlite_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREDICTIONS_DB_URL", sqlite_store)
    settings = lookup_settings(load_model_folder(folder))
    assert settings is not None and settings.name == "gender-lookup"
    model = LookupRuntime(settings.model_copy(update={"parameters": settings.parameters}))
    model._settings.parameters.extra["refresh_s"] = 0  # type: ignore[union-attr]
    assert await model.load()
    try:
        with pytest.raises(NoPredictions, match="no batch run has written"):
            await model.predict(request("u0000042"))
        ok(batch(folder, sqlite_store, "--run-id", "first"))
        response = await model.predict(request(*ASKED))
        got = outputs(response)
        expected = direct_scores(folder)
        assert got["user_id"] == ASKED
        assert got["missing"] == [False, True, False, False]
        for name in VALUES:
            want = [float(expected.loc[u, name]) for u in ("u0000042", "u0000007", "u0000042")]
            assert [np.float32(v) for i, v in enumerate(got[name]) if i != 1] == want
            assert np.isnan(got[name][1])
        stamps = [datetime.fromisoformat(t) for t in got["predicted_at"] if t]
        assert len(stamps) == 3 and all(t.utcoffset().total_seconds() == 0 for t in stamps)  # type: ignore[union-attr]
        assert got["predicted_at"][1] == ""
        assert response.parameters.run_id == "first"  # type: ignore[union-attr]
    finally:
        await model.unload()


async def test_concurrent_first_requests_all_get_the_run(
    folder: Path, sqlite_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREDICTIONS_DB_URL", sqlite_store)
    ok(batch(folder, sqlite_store, "--run-id", "only"))
    settings = lookup_settings(load_model_folder(folder))
    model = LookupRuntime(settings)  # type: ignore[arg-type]
    assert await model.load()
    try:
        # The first requests arrive together, while the run is being looked up.
        responses = await asyncio.gather(*[model.predict(request(f"u{i:07d}")) for i in range(20)])
        assert [r.parameters.run_id for r in responses] == ["only"] * 20  # type: ignore[union-attr]
    finally:
        await model.unload()


def wait_for_run(client, run_id: str, timeout: float = 30) -> object:  # type: ignore[no-untyped-def]
    """The lookup's answer once it comes from ``run_id`` (it looks every refresh_s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = infer(client, "gender-lookup", {"user_id": ids(*ASKED)})
        params = result.get_response()
        params = params["parameters"] if isinstance(params, dict) else params.parameters
        found = params["run_id"]
        found = found if isinstance(found, str) else found.string_param
        if found == run_id:
            return result
        assert time.monotonic() < deadline, f"still answering from {found}, not {run_id}"
        time.sleep(0.1)


def test_served_over_rest_and_grpc_before_and_after_a_new_run(
    folder: Path, sqlite_store: str, serve_dir
) -> None:  # type: ignore[no-untyped-def]
    server = serve_dir(
        folder, "--no-watch", PREDICTIONS_DB_URL=sqlite_store, MODELYARD_LOOKUP_REFRESH_S="0.2"
    )
    rest, grpc = make_client("http", server), make_client("grpc", server)
    # Served before any run, saying what to do.
    for client, code in ((rest, 503), (grpc, "UNAVAILABLE")):
        expect_error(
            client, lambda c=client: infer(c, "gender-lookup", {"user_id": ids("u0000042")}),
            code, code, "modelyard batch run",
        )  # fmt: skip
    ok(batch(folder, sqlite_store, "--run-id", "first"))
    first = stored(sqlite_store, "first")
    for client in (rest, grpc):
        result = wait_for_run(client, "first")
        assert texts(result, "user_id") == ASKED
        assert result.as_numpy("missing").tolist() == [False, True, False, False]
        male = result.as_numpy("male_percentile")
        assert male.dtype == np.float32
        assert male[[0, 2, 3]].tolist() == first.loc[["u0000042", "u0000007", "u0000042"],
                                                     "male_percentile"].tolist()  # fmt: skip
        assert texts(result, "predicted_at")[1] == ""

    # New features for user 42, a new run: served without a restart.
    with sqlite3.connect(folder / "features.db") as db:
        db.execute("UPDATE events SET category = 'beauty' WHERE user_id = 'u0000042'")
    ok(batch(folder, sqlite_store, "--run-id", "second"))
    second = stored(sqlite_store, "second")
    before, after = (r.loc["u0000042", "male_percentile"] for r in (first, second))
    assert before != after
    for client in (rest, grpc):
        result = wait_for_run(client, "second")
        assert result.as_numpy("male_percentile")[0] == after
    # The online model agrees with what the batch stored.
    online = infer(grpc, "gender", {"user_id": ids("u0000042")})
    assert online.as_numpy("male_percentile")[0] == after
    assert server.status()["models"][0]["companions"] == ["gender-lookup", "gender-feedback"]


def test_the_example_batch_run_is_served_by_user_id(tmp_path: Path, serve_dir) -> None:  # type: ignore[no-untyped-def]
    """`modelyard batch run examples/customer-profile` fills the store; a client gets
    those predictions by user id over V2."""
    store = f"sqlite:///{tmp_path}/predictions.db"
    out = ok(batch(EXAMPLE, store, "--run-id", "example"))
    assert "5,000 rows" in out and "run complete" in out
    rows = stored(store, "example")
    server = serve_dir(EXAMPLE, "--no-watch", PREDICTIONS_DB_URL=store)
    client = make_client("grpc", server)
    user_ids = [f"u{i:07d}" for i in range(0, 5000, 250)]
    result = infer(client, "gender-lookup", {"user_id": ids(*user_ids)})
    assert texts(result, "user_id") == user_ids
    assert not result.as_numpy("missing").any()
    for name in VALUES:
        assert result.as_numpy(name).tolist() == rows.loc[user_ids, name].tolist()
