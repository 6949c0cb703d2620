"""Ray Serve serving the benchmark's models: one deployment per model with
`num_replicas=N`, behind Ray Serve's HTTP proxy. `max_ongoing_requests` is raised from
its default 5 to 32, as Ray's performance guide advises when replicas are cheap per
request (with 5, 16 callers over 2 replicas wait in the proxy's queue), and access
logs are off.

The request is the natural JSON of a handler that reads rows: {"rows": [[...], ...]}.
Run by the ray virtualenv's python: serve_ray.py MODELS HTTP_PORT REPLICAS TEMP_DIR
(Ray's session files there, not in /tmp/ray, so they go with the benchmark's folder).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import ray
from artifacts import MODELS, load
from ray import serve
from starlette.requests import Request

MAX_ONGOING_REQUESTS = 32
# No line per request (Ray's logging guide: access logs cost throughput), as the
# other servers are run.
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}


class Model:
    def __init__(self, models: str, name: str, dtype: str):
        self.predict = load(Path(models))[name]
        self.dtype = dtype

    async def __call__(self, request: Request) -> list[Any]:
        rows = np.asarray((await request.json())["rows"], dtype=self.dtype)
        return self.predict(rows).tolist()  # type: ignore[no-any-return]


def main() -> None:
    models, http_port, replicas, temp_dir = sys.argv[1:5]
    # A replica takes one of Ray's logical CPUs: one per replica of each model, so both
    # models get all their replicas (the kernel shares the real cores among them).
    ray.init(
        address="local", num_cpus=int(replicas) * len(MODELS), include_dashboard=False,
        object_store_memory=80 * 2**20, _temp_dir=temp_dir,
    )  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": int(http_port)}, logging_config=LOGGING)
    deployment = serve.deployment(
        Model, num_replicas=int(replicas), max_ongoing_requests=MAX_ONGOING_REQUESTS,
        logging_config=LOGGING,
    )  # fmt: skip
    for name, dtype in (("iris", "float64"), ("breast-cancer", "float32")):
        app = deployment.options(name=name).bind(models, name, dtype)
        serve.run(app, name=name, route_prefix=f"/{name}")

    def stop(*_: object) -> None:
        serve.shutdown()
        ray.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.pause()


if __name__ == "__main__":
    main()
