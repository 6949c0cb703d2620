"""Nothing is served from an invalid folder: its neighbours serve, it is a 404, and the
server's status names every problem."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from tests.support.clients import expect_error, infer, make_client
from tests.support.declarations import SEVERAL, SEVERAL_EXPECTED, model_folder
from tests.support.server import copy_model

SETOSA = {"input-0": (np.array([[5.1, 3.5, 1.4, 0.2]]), "FP64")}


def test_an_invalid_folder_is_not_served_and_its_neighbour_is(tmp_path: Path, serve_dir) -> None:
    root = tmp_path / "models"
    copy_model("iris", root)
    invalid = model_folder(root / "several", SEVERAL)
    server = serve_dir(root, "--no-watch")

    for protocol in ("http", "grpc"):
        client = make_client(protocol, server)
        assert infer(client, "iris", SETOSA).as_numpy("predict").ravel().tolist() == [0]
        # Its declaration says `nmae: scorer`: no model of either name exists.
        for name in ("scorer", "several"):
            expect_error(client, partial(infer, client, name, SETOSA), 404, "NOT_FOUND", name)

    # (Over gRPC, MLServer answers a readiness question about an unknown model with UNKNOWN.)
    rest = make_client("http", server)
    assert not rest.is_model_ready("scorer") and not rest.is_model_ready("several")

    (status,) = [s for s in server.status()["models"] if s["folder"] == str(invalid)]
    assert status["state"] == "failed"
    assert status["serving_version"] is None
    for pointer, fragment in SEVERAL_EXPECTED.items():
        assert f"{invalid / 'model.yaml'}: {pointer}: " in status["error"]
        assert fragment in status["error"]
