"""Nothing is served from an invalid folder: its neighbours serve, it is a 404, and the
server's status names every problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.declarations import SEVERAL, SEVERAL_EXPECTED, model_folder
from tests.support.server import copy_model


def test_an_invalid_folder_is_not_served_and_its_neighbour_is(tmp_path: Path, serve_dir) -> None:
    root = tmp_path / "models"
    copy_model("iris", root)
    invalid = model_folder(root / "several", SEVERAL)
    server = serve_dir(root, "--no-watch")
    client = httpclient.InferenceServerClient(server.http_url)

    x = httpclient.InferInput("input-0", [1, 4], "FP64")
    x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]), binary_data=False)
    out = httpclient.InferRequestedOutput("predict", binary_data=False)
    assert client.infer("iris", [x], outputs=[out]).as_numpy("predict").ravel().tolist() == [0]

    # Its declaration says `nmae: scorer`: no model of either name exists.
    for name in ("scorer", "several"):
        assert not client.is_model_ready(name)
        with pytest.raises(InferenceServerException) as info:
            client.infer(name, [x])
        assert info.value.status() == "404"

    (status,) = [s for s in server.status()["models"] if s["folder"] == str(invalid)]
    assert status["state"] == "failed"
    assert status["serving_version"] is None
    for pointer, fragment in SEVERAL_EXPECTED.items():
        assert f"{invalid / 'model.yaml'}: {pointer}: " in status["error"]
        assert fragment in status["error"]
