"""The served OpenAPI document is valid OpenAPI 3 with every V2 operation, and the
Swagger UI works offline: everything it loads comes from the server itself."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
from openapi_spec_validator import validate

from tests.support.server import ServerProcess, copy_model, running


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`modelyard serve` of iris alone: the documents do not depend on the models."""
    root = tmp_path_factory.mktemp("docs")
    copy_model("iris", root / "models")
    with running(ServerProcess(root / "models", root / "serve.log", ["--no-watch"])) as server:
        yield server


OPERATIONS = {
    ("get", "/v2"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/v2/models/{model_name}"),
    ("get", "/v2/models/{model_name}/ready"),
    ("get", "/v2/models/{model_name}/config"),
    ("post", "/v2/models/{model_name}/infer"),
    ("post", "/v2/models/{model_name}/infer_stream"),
    ("post", "/v2/models/{model_name}/generate"),
    ("post", "/v2/models/{model_name}/generate_stream"),
}
VERSIONED = {(m, p.replace("{model_name}", "{model_name}/versions/{model_version}"))
             for m, p in OPERATIONS if "{model_name}" in p}  # fmt: skip


def operations(document: dict) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }


def test_dataplane_document_is_valid_openapi(repo_server: ServerProcess) -> None:
    answer = requests.get(repo_server.base + "/v2/docs/dataplane.json", timeout=10)
    assert answer.status_code == 200
    document = answer.json()
    validate(document)  # raises on anything OpenAPI 3 does not allow
    assert operations(document) == OPERATIONS | VERSIONED
    tensor = document["components"]["schemas"]["TensorData"]
    assert {"type": "bytes"} not in tensor["oneOf"]


def test_model_document_is_valid_openapi(repo_server: ServerProcess) -> None:
    answer = requests.get(repo_server.base + "/v2/models/iris/docs/dataplane.json", timeout=10)
    assert answer.status_code == 200
    document = answer.json()
    validate(document)
    assert ("post", "/v2/models/iris/infer") in operations(document)
    missing = requests.get(repo_server.base + "/v2/models/nope/docs/dataplane.json", timeout=10)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


@pytest.mark.parametrize("page", ["/v2/docs", "/v2/models/iris/docs"])
def test_swagger_ui_loads_everything_from_the_server(page: str, repo_server: ServerProcess) -> None:
    answer = requests.get(repo_server.base + page, timeout=10)
    assert answer.status_code == 200
    html = answer.text
    assert "SwaggerUIBundle" in html
    # No address outside the server: every URL is a path on it.
    assert not re.search(r"(https?:)?//[a-z0-9]", html, re.I), html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    spec = re.search(r"url: '([^']+)'", html)
    assert spec is not None
    for path in [*assets, spec.group(1)]:
        loaded = requests.get(repo_server.base + path, timeout=10)
        assert loaded.status_code == 200, path
        assert len(loaded.content) > 100, path
    script = requests.get(repo_server.base + assets[-1], timeout=10)
    assert "SwaggerUIBundle" in script.text or "swagger" in script.text.lower()
