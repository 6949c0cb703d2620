"""A real `modelyard serve`: online requests logged at the declared rate under the ids
clients get, labels sent to `<name>-feedback` over REST and gRPC, and the metrics of
the two joined on the Prometheus endpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn import metrics as sk
from sklearn.datasets import load_iris

from tests.quality.served import poll, sample
from tests.support.clients import expect_error, ids, infer, make_client
from tests.support.server import copy_model

RATE = 0.5
MONITORING = f"""
monitoring:
  payload_sample_rate: {RATE}
  task: classification
  prediction: predict
"""


def payloads(folder: Path) -> dict[str, str]:
    engine = sa.create_engine(f"sqlite:///{folder}/predictions.db")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT request_id, response FROM modelyard_payloads"))
            return dict(rows.all())
    finally:
        engine.dispose()


@pytest.mark.timeout(240)
def test_logged_requests_and_v2_feedback_join_on_the_metrics_endpoint(
    tmp_path: Path, serve_dir
) -> None:  # type: ignore[no-untyped-def]
    folder = copy_model("iris", tmp_path / "models")
    (folder / "model.yaml").write_text((folder / "model.yaml").read_text() + MONITORING)
    server = serve_dir(tmp_path / "models", MODELYARD_QUALITY_REFRESH_S="0.5")
    assert server.status()["models"][0]["companions"] == ["iris-feedback"]

    x, y = load_iris(return_X_y=True)
    rest, grpc = make_client("http", server), make_client("grpc", server)
    answered: dict[str, tuple[int, int]] = {}  # response id -> (label, predicted)
    for i in range(300):
        client = rest if i % 3 else grpc
        result = infer(client, "iris", {"input-0": (x[i % 150 : i % 150 + 1], "FP64")})
        response = result.get_response()
        request_id = response["id"] if isinstance(response, dict) else response.id
        # MLServer answers "" to a gRPC request without an id; a sampled one gets one.
        answered[request_id or f"unsampled-{i}"] = (
            int(y[i % 150]),
            int(result.as_numpy("predict")[0, 0]),
        )

    def written(samples: dict) -> bool:
        queued = sample(samples, "modelyard_payload_log_sampled_total", model="iris")
        done = sample(samples, "modelyard_payload_log_written_total", model="iris")
        return queued == done

    poll(server, written)
    logged = payloads(folder)
    # Binomial(300, 0.5): 150 expected, standard deviation 8.7; 5 of them either side.
    assert abs(len(logged) - 300 * RATE) < 5 * math.sqrt(300 * RATE * (1 - RATE)), len(logged)
    assert set(logged) <= set(answered), "a logged id is not one a client received"

    # The truth for every answered request, half over REST, half over gRPC.
    everyone = list(answered)
    for client, part in ((rest, everyone[:150]), (grpc, everyone[150:])):
        labels = np.array([[answered[i][0]] for i in part], dtype=np.int64).ravel()
        result = infer(
            client, "iris-feedback", {"request_id": ids(*part), "label": (labels, "INT64")}
        )
        assert result.as_numpy("received").tolist() == [150]
        assert result.as_numpy("changed").tolist() == [150]
    first = everyone[0]
    label = (np.array([answered[first][0]]), "INT64")
    again = infer(rest, "iris-feedback", {"request_id": ids(first), "label": label})
    assert again.as_numpy("changed").tolist() == [0]  # the same label twice changes nothing

    for client in (rest, grpc):
        expect_error(
            client, lambda c=client: infer(c, "iris-feedback", {"request_id": ids("x")}),
            400, "INVALID_ARGUMENT", "missing input 'label'",
        )  # fmt: skip
        expect_error(
            client,
            lambda c=client: infer(c, "iris-feedback", {"user_id": ids("u1"), "label": ids("a")}),
            400, "INVALID_ARGUMENT", "unknown input 'user_id'", "'request_id'",
        )  # fmt: skip

    # Only the logged requests can be judged: scikit-learn's numbers on those.
    truth = [str(answered[i][0]) for i in logged]
    predicted = [str(answered[i][1]) for i in logged]
    classes = sorted(set(truth) | set(predicted))

    def scored(samples: dict) -> bool:
        return sample(samples, "modelyard_model_metric_samples", model="iris", window="day") == len(
            logged
        )

    samples = poll(server, scored)
    for metric, expected in (
        ("accuracy", sk.accuracy_score(truth, predicted)),
        ("precision_macro", sk.precision_score(truth, predicted, labels=classes,
                                               average="macro", zero_division=0)),
        ("recall_macro", sk.recall_score(truth, predicted, labels=classes, average="macro",
                                         zero_division=0)),
        ("f1_macro", sk.f1_score(truth, predicted, labels=classes, average="macro")),
    ):  # fmt: skip
        for window in ("day", "week"):
            got = sample(samples, "modelyard_model_metric", model="iris", version="1",
                         metric=metric, window=window, **{"class": ""})  # fmt: skip
            assert got == pytest.approx(expected, rel=1e-12), (metric, window)
