"""The served OpenAPI documents and a Swagger UI that needs no internet.

MLServer's document (``/v2/docs/dataplane.json``) is not valid OpenAPI 3: its
``TensorData`` is ``{"type": "bytes"}``, a type OpenAPI does not have, and its datatype
enum sits in ``components.enums``, a section OpenAPI does not have; spec-driven tools
stop there or generate only part of the API. Here it is served corrected (a tensor's
data is a JSON array, nested or flat, or a base64 string; the enum among the schemas),
with the model configuration's paths that this server adds; the per-model documents
get the same corrections. The Swagger UI loads its script and style from this server
(PyPI's swagger-ui-bundle), where MLServer's loads them from a CDN and is blank offline.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, ORJSONResponse
from fastapi.staticfiles import StaticFiles
from mlserver.rest.openapi import get_model_schema, get_model_schema_uri, get_openapi_schema
from swagger_ui_bundle import swagger_ui_path

from modelyard.serving.dataplane import DataPlane

DOCS = "/v2/docs"
STATIC = "/v2/docs/static"
TENSOR_DATA = {
    "title": "TensorData",
    "description": "A tensor's elements in row-major order, flat or nested as its shape, "
    "or base64 text for BYTES.",
    "oneOf": [{"type": "array", "items": {}}, {"type": "string"}],
}


def _config_path(versioned: bool) -> dict[str, Any]:
    parameters = [{"name": "model_name", "in": "path", "required": True,
                   "schema": {"type": "string"}}]  # fmt: skip
    if versioned:
        parameters.append(
            {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    return {
        "get": {
            "summary": "Model Configuration" + (" (version)" if versioned else ""),
            "description": "Triton's model configuration, derived from the declaration.",
            "operationId": "model-config" + ("-version" if versioned else ""),
            "tags": ["model"],
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "The model's configuration",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "404": {"description": "No such model (or version)"},
            },
        }
    }


def _corrected(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` as valid OpenAPI 3: ``TensorData`` as it is sent, and the datatype
    enum among the schemas (``components.enums`` is no section of OpenAPI)."""
    fixed = copy.deepcopy(document)
    components = fixed["components"]
    components["schemas"]["TensorData"] = TENSOR_DATA
    components["schemas"].update(components.pop("enums", {}))
    return _moved_refs(fixed)


def _moved_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: v.replace("#/components/enums/", "#/components/schemas/")
            if k == "$ref" and isinstance(v, str)
            else _moved_refs(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_moved_refs(v) for v in node]
    return node


@cache
def dataplane_document() -> dict[str, Any]:
    """MLServer's V2 document, valid, with the model configuration's paths."""
    document = _corrected(get_openapi_schema())
    document["paths"]["/v2/models/{model_name}/config"] = _config_path(False)
    document["paths"]["/v2/models/{model_name}/versions/{model_version}/config"] = _config_path(
        True
    )
    return document


def swagger_page(openapi_url: str, title: str) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
        # No badge fetched from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


def add_docs_routes(app: FastAPI, data_plane: DataPlane) -> None:
    """These documents and pages in place of MLServer's, at MLServer's paths."""

    async def document() -> dict[str, Any]:
        return dataplane_document()

    async def docs() -> HTMLResponse:
        return swagger_page(f"{DOCS}/dataplane.json", "modelyard V2 API")

    async def model_document(model_name: str, model_version: str | None = None) -> dict:
        await data_plane.model_metadata(model_name, model_version)  # 404 for an unknown one
        return _corrected(get_model_schema(model_name, model_version))

    async def model_docs(model_name: str, model_version: str | None = None) -> HTMLResponse:
        await data_plane.model_metadata(model_name, model_version)
        title = f"modelyard: model {model_name}"
        return swagger_page(get_model_schema_uri(model_name, model_version), title)

    routes: dict[str, Any] = {
        f"{DOCS}/dataplane.json": document,
        DOCS: docs,
        "/v2/models/{model_name}/docs/dataplane.json": model_document,
        "/v2/models/{model_name}/versions/{model_version}/docs/dataplane.json": model_document,
        "/v2/models/{model_name}/docs": model_docs,
        "/v2/models/{model_name}/versions/{model_version}/docs": model_docs,
    }
    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) not in routes
    ]
    for path, handler in routes.items():
        response = ORJSONResponse if path.endswith(".json") else HTMLResponse
        app.add_api_route(path, handler, methods=["GET"], response_class=response)
    app.mount(STATIC, StaticFiles(directory=swagger_ui_path), name="swagger-ui")
