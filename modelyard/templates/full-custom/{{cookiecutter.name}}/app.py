"""{{ cookiecutter.name }} as a service of its own: FastAPI in front of the model class,
speaking the V2 REST paths clients use (health, metadata, infer).

Run it with `uvicorn app:app --port 8080` (the Dockerfile does). This file is yours:
add what MLServer does not do for you (routes of your own, middleware, auth).
"""

from contextlib import asynccontextmanager
from pathlib import Path

import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from mlserver.errors import MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataServerResponse,
)

from {{ cookiecutter.module }} import Model

HERE = Path(__file__).resolve().parent
DECLARATION = yaml.safe_load((HERE / "model.yaml").read_text())

model = Model(
    ModelSettings(
        name=DECLARATION["name"],
        implementation=Model,
        parameters={
            "uri": str(HERE / DECLARATION["model"]["uri"]),
            "version": DECLARATION["version"],
        },
        inputs=DECLARATION.get("inputs", []),
        outputs=DECLARATION.get("outputs", []),
    )
)


@asynccontextmanager
async def lifespan(app: FastAPI):
    model.ready = await model.load()
    yield
    await model.unload()


app = FastAPI(title=DECLARATION["name"], version=DECLARATION["version"], lifespan=lifespan)


class NotFound(MLServerError):
    def __init__(self, name: str, version: str | None):
        version_part = f" version {version}" if version else ""
        super().__init__(
            f"model '{name}'{version_part} is not served here; this service serves "
            f"'{model.name}' version {model.version}",
            status_code=404,
        )


def served(name: str, version: str | None) -> Model:
    if name != model.name or (version is not None and version != model.version):
        raise NotFound(name, version)
    return model


# Errors as V2 clients expect them: {"error": message}.
@app.exception_handler(MLServerError)
async def mlserver_error(request: Request, exc: MLServerError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": f"not a V2 request: {exc.errors()}"}, status_code=400)


@app.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@app.get("/v2/health/ready")
async def ready() -> JSONResponse:
    return JSONResponse({"ready": model.ready}, status_code=200 if model.ready else 503)


@app.get("/v2", response_model_exclude_none=True)
async def server_metadata() -> MetadataServerResponse:
    return MetadataServerResponse(
        name=DECLARATION["name"], version=DECLARATION["version"], extensions=[]
    )


@app.get("/v2/models/{name}", response_model_exclude_none=True)
@app.get("/v2/models/{name}/versions/{version}", response_model_exclude_none=True)
async def model_metadata(name: str, version: str | None = None) -> MetadataModelResponse:
    return await served(name, version).metadata()


@app.get("/v2/models/{name}/ready")
@app.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(name: str, version: str | None = None) -> JSONResponse:
    ready = served(name, version).ready
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


@app.post("/v2/models/{name}/infer", response_model_exclude_none=True)
@app.post("/v2/models/{name}/versions/{version}/infer", response_model_exclude_none=True)
async def infer(
    name: str, payload: InferenceRequest, version: str | None = None
) -> InferenceResponse:
    response = await served(name, version).predict(payload)
    response.id = payload.id
    return response
