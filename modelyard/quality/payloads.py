"""Sampled payload logging: a declared share of a model's online requests and responses
written to its store, never slowing the request path.

On the request path ``draw`` only draws a random number and, for a sampled request, ``log``
puts a shallow copy of the request and response objects in a bounded queue (it never
waits: when the queue is full the entry is dropped and counted in
``modelyard_payload_log_dropped_total``). A background thread serialises the entries
(JSON, each side capped at ``MAX_PAYLOAD_BYTES``) and writes them in batches, one
transaction per store. The row's ``request_id`` is the V2 response's ``id``, the one
the client receives and sends labels with (a sampled request without one is given one).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from mlserver.model import MLModel
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import generate_uuid

from modelyard.declarations.monitoring import QualityConfig
from modelyard.quality import metrics
from modelyard.quality.tables import QualityStore
from modelyard.store.tables import now

logger = logging.getLogger("modelyard.quality")

# Requests waiting for the writer; beyond this they are dropped (and counted).
QUEUE_SIZE = int(os.environ.get("MODELYARD_PAYLOAD_QUEUE", "10000"))
# The writer commits at most this many rows at once, and at least every FLUSH_S.
BATCH_ROWS = 500
FLUSH_S = 0.5
# Each of a request and its response is stored up to this many bytes of JSON; a
# longer one is cut (and flagged truncated: it cannot be joined with labels).
MAX_PAYLOAD_BYTES = int(os.environ.get("MODELYARD_PAYLOAD_MAX_BYTES", str(64 * 1024)))
# Where a model object keeps what record() needs, computed at its first request.
SAMPLING_ATTR = "_modelyard_sampling"
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Entry:
    config: QualityConfig
    request: InferenceRequest
    response: InferenceResponse
    logged_at: datetime


class PayloadLog:
    """The sampler, its bounded queue and the background writer (started on first use)."""

    def __init__(
        self,
        queue_size: int = QUEUE_SIZE,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        flush_s: float = FLUSH_S,
    ):
        self.queue: queue.Queue[_Entry] = queue.Queue(maxsize=queue_size)
        self.max_bytes = max_bytes
        self.flush_s = flush_s
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stores: dict[tuple[str, str], QualityStore] = {}

    # -- the request path --------------------------------------------------------------
    def record(
        self, model: MLModel, request: InferenceRequest, response: InferenceResponse
    ) -> None:
        """Queue the request and response for logging if the model samples this one."""
        if self.draw(model):
            self.log(model, request, response)

    def wants(self, model: MLModel) -> bool:
        """Whether the model logs a sample of its payloads."""
        return self._sampling(model) is not None

    def draw(self, model: MLModel) -> bool:
        """Whether this call of the model is one of its sample (a random draw)."""
        config = self._sampling(model)
        return config is not None and random.random() < config.sample_rate

    def log(self, model: MLModel, request: InferenceRequest, response: InferenceResponse) -> None:
        """Queue a call that `draw` chose (never waits: a full queue drops it, counted)."""
        config = self._sampling(model)
        if config is None:
            return
        if not response.id:
            # A gRPC client that sends no id gets "" back from MLServer: give this one
            # an id before it is answered, so the client can send labels with it.
            response.id = request.id = generate_uuid()
        if self._thread is None:
            self._start()
        metrics.PAYLOADS_SAMPLED.labels(model=config.model).inc()
        try:
            self.queue.put_nowait(_Entry(config, _copy(request), _copy(response), now()))
        except queue.Full:
            metrics.PAYLOAD_DROPS.labels(model=config.model, reason="queue_full").inc()

    @staticmethod
    def _sampling(model: MLModel) -> QualityConfig | None:
        config = getattr(model, SAMPLING_ATTR, _UNSET)
        if config is _UNSET:
            config = QualityConfig.from_settings(model.settings)
            if config is not None and config.sample_rate <= 0:
                config = None
            setattr(model, SAMPLING_ATTR, config)
        return config

    # -- the writer --------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="modelyard-payload-log", daemon=True
            )
            self._thread.start()
            atexit.register(self.flush, STOP_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.flush_s
            while len(batch) < BATCH_ROWS:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._write(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _write(self, batch: list[_Entry]) -> None:
        by_store: dict[tuple[str, str], list[_Entry]] = defaultdict(list)
        for entry in batch:
            by_store[(entry.config.store, str(entry.config.folder))].append(entry)
        for where, entries in by_store.items():
            try:
                store = self._stores.get(where)
                if store is None:
                    store = self._stores[where] = QualityStore.open(entries[0].config)
                store.write_payloads([self._row(e) for e in entries])
            except Exception as e:  # the log must never take the server down
                logger.error("payload log: %d payload(s) not written: %s", len(entries), e)
                for entry in entries:
                    metrics.PAYLOAD_DROPS.labels(model=entry.config.model, reason="error").inc()
                continue
            for entry in entries:
                metrics.PAYLOADS_LOGGED.labels(model=entry.config.model).inc()

    def _row(self, entry: _Entry) -> dict[str, Any]:
        request, truncated_request = self._json(entry.request)
        response, truncated_response = self._json(entry.response)
        return {
            "model": entry.config.model,
            "request_id": entry.response.id or entry.request.id or "",
            "version": entry.response.model_version or entry.config.version,
            "logged_at": entry.logged_at,
            "request": request,
            "response": response,
            "truncated": truncated_request or truncated_response,
        }

    def _json(self, message: InferenceRequest | InferenceResponse) -> tuple[str, bool]:
        data = orjson.dumps(
            message.model_dump(exclude_none=True, warnings=False),
            default=_jsonable,
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        if len(data) <= self.max_bytes:
            return data.decode("utf-8"), False
        return data[: self.max_bytes].decode("utf-8", errors="ignore"), True

    def flush(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def _copy(message: InferenceRequest | InferenceResponse) -> Any:
    """A copy of ``message`` whose tensors keep their data: the gRPC server replaces the
    data of the response it sends (``tensor.data = []``, the values going out as raw
    bytes) after the log has taken it. Shallow: the data itself is not copied."""
    field = "outputs" if isinstance(message, InferenceResponse) else "inputs"
    tensors = [t.model_copy() for t in getattr(message, field)]
    return message.model_copy(update={field: tensors})


def _jsonable(value: Any) -> Any:
    """What JSON cannot hold as is: bytes (BYTES tensors over gRPC) as text, numpy
    scalars as numbers, anything else as its text; the log never fails on a type."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "item"):
        return value.item()
    return str(value)


_UNSET: Any = object()

# The server's one payload log (see modelyard.serving.server).
PAYLOADS = PayloadLog()
