"""Safe rollouts: a new version served beside the old as a candidate, compared, then
promoted or aborted.

A folder whose declaration has ``rollout`` does not swap its new version in: the
registry loads it as the candidate beside the serving version (the incumbent,
`LoadedModels.add_candidate`) and `Rollouts.begin` starts comparing them.

- shadow: the incumbent answers every call; a share (``sample``) of the calls is also
  queued for the candidate, which a task of its own answers off the request path. A call
  that finds the queue full is dropped and counted, never waited for.
- canary: ``weight``% of the calls are answered by the candidate, sticky by a hash of a
  header or of an input's first value when ``sticky_by`` names one.

`Comparison` keeps, per (incumbent, candidate), the calls compared and how many agreed
(equal for labels, within ``tolerance`` for numbers), the mean and largest absolute
difference per output, each side's answers, errors and latencies. Each process of a
server writes its own to the state folder every quarter second; `Rollouts.status`
merges them (the other processes' numbers as of their last write). Promote and
abort act on every process through the repository's action log (`repository.py`);
``promote_when`` / ``abort_when`` are judged by the first process on the merged numbers.

A candidate may also be another server's (`RemoteCandidate`: ``modelyard serve
--rollout-candidate-url NAME=URL``, which the Kubernetes operator gives the Model's pods
while its candidate Deployment runs): shadow and canary send its share to that server's
V2 REST endpoint over one keep-alive connection pool, its failures and timeouts counted
as the candidate's errors, with the same comparison and rules. Abort stops sending;
promote is the version change of the Model (the operator's), not the server's.

The data plane looks a model up in `Rollouts.active` once per call; a model without a
rollout costs nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import aiohttp
import numpy as np
import orjson
import sqlalchemy as sa
from mlserver.context import model_context
from mlserver.errors import MLServerError
from mlserver.model import MLModel
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from modelyard.declarations.integrity import EXTRA_KEY
from modelyard.declarations.monitoring import QualityConfig
from modelyard.serving import metrics
from modelyard.serving.models import InFlight, LoadedModels
from modelyard.serving.siblings import ABORT, PROMOTE, Siblings

logger = logging.getLogger(__name__)

SHADOW, CANARY = "shadow", "canary"
INCUMBENT, CANDIDATE = "incumbent", "candidate"
DEFAULT_WEIGHT = 10.0
DEFAULT_QUEUE = 256
DEFAULT_TOLERANCE = 1e-6
# The most of a process's time an in-process shadow candidate takes while the process is
# busy answering requests (`ShadowShare`); an idle one leaves it all the time it wants.
# What it measures (its predictions and comparisons) is about half of what it costs the
# incumbent's calls, which also wait on its event-loop turns and allocations: a shadow
# of every call cost a saturated process 4-9% of its throughput at 0.02 and up to 6% on
# p99, at 0.05 4-10% and up to 13% (benchmarks/README.md).
DEFAULT_SHADOW_SHARE = 0.02
DEFAULT_ABORT_MIN_REQUESTS = 100
# Latencies kept per side for the percentiles (the latest ones).
LATENCY_WINDOW = 2000
# How often each process writes its comparison and the first judges the rules.
INTERVAL_S = 0.25
# Answers of at most this many values are compared in plain Python (`_agree`).
SMALL_ANSWER = 16
FILE_PREFIX = "rollouts-"
# Shadow calls of a classifier waiting for their labels (the feedback path), and the
# labelled ones kept per side for accuracy, precision and recall (the latest).
PENDING_LABELS = 10_000
LABELLED_WINDOW = 10_000
LABELS_INTERVAL_S = 2.0
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


# A remote candidate's answer: how long one call may take, connections kept open.
REMOTE_TIMEOUT_S = 10.0
REMOTE_CONNECTIONS = 16


class NoRollout(MLServerError):
    def __init__(self, name: str):
        super().__init__(
            f"model '{name}' has no candidate: a rollout starts when the folder of a model "
            "whose declaration has 'rollout' changes (GET /modelyard/rollouts lists them)",
            status_code=409,
        )


class RemotePromote(MLServerError):
    def __init__(self, name: str, url: str):
        super().__init__(
            f"model '{name}': its candidate is served elsewhere ({url}); it is promoted by "
            "giving the model the candidate's version (on Kubernetes: spec.rollout.action "
            "promote on the Model), abort stops sending to it",
            status_code=409,
        )


class RemoteFailed(Exception):
    pass


def parse_remote(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``NAME=URL`` pairs (``--rollout-candidate-url``) by model name."""
    found: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(
                f"--rollout-candidate-url {value!r}: expected NAME=URL with an http(s) URL, "
                "e.g. iris=http://iris-candidate.default.svc:8080"
            )
        found[name] = url.rstrip("/")
    return found


JSON = {"Content-Type": "application/json"}


def _plain(value: Any) -> Any:
    """What orjson leaves: arrays it cannot take as they are, numpy scalars."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


class RemoteCandidate:
    """A candidate answered by another server's V2 REST endpoint (its version is the
    one that server answers with)."""

    def __init__(self, name: str, url: str, version: str = ""):
        self.name = name
        self.url = url
        self.version = version
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=REMOTE_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=REMOTE_TIMEOUT_S),
            )
        return self._session

    async def find_version(self) -> None:
        """The version the remote serves (its model metadata), when it answers."""
        try:
            async with self._client().get(f"{self.url}/v2/models/{self.name}") as r:
                if r.status == 200:
                    versions = (await r.json()).get("versions") or []
                    self.version = str(versions[0]) if versions else self.version
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            logger.info(
                "model '%s': remote candidate %s not answering yet: %s", self.name, self.url, e
            )

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # The data plane may have decoded the inputs in place (arrays): as JSON again.
        body = payload.model_dump(exclude_none=True)
        body.get("parameters", {}).pop("headers", None)
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)
        url = f"{self.url}/v2/models/{self.name}/infer"
        try:
            async with self._client().post(url, data=data, headers=JSON) as r:
                text = await r.read()
                if r.status != 200:
                    raise RemoteFailed(f"{url}: HTTP {r.status}: {text[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RemoteFailed(f"{url}: {e!r}") from e
        response = InferenceResponse.model_validate_json(text)
        if response.model_version:
            self.version = response.model_version
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass(frozen=True)
class RolloutConfig:
    """A declaration's ``rollout``."""

    mode: str
    weight: float = DEFAULT_WEIGHT
    sticky_header: str | None = None
    sticky_input: str | None = None
    sample: float = 1.0
    queue: int = DEFAULT_QUEUE
    share: float = DEFAULT_SHADOW_SHARE
    tolerance: float = DEFAULT_TOLERANCE
    outputs: tuple[str, ...] = ()
    promote_when: dict[str, float] = field(default_factory=dict)
    abort_when: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> RolloutConfig | None:
        extra = settings.parameters.extra if settings.parameters is not None else None
        carried = (extra or {}).get(EXTRA_KEY) or {}
        data = carried.get("rollout")
        if not data:
            return None
        sticky = data.get("sticky_by") or {}
        compare = data.get("compare") or {}
        return cls(
            mode=data["mode"],
            weight=float(data.get("weight", DEFAULT_WEIGHT)),
            sticky_header=sticky.get("header", "").lower() or None,
            sticky_input=sticky.get("input") or None,
            sample=float(data.get("sample", 1.0)),
            queue=int(data.get("queue", DEFAULT_QUEUE)),
            share=float(data.get("share", DEFAULT_SHADOW_SHARE)),
            tolerance=float(compare.get("tolerance", DEFAULT_TOLERANCE)),
            outputs=tuple(compare.get("outputs") or ()),
            promote_when=dict(data.get("promote_when") or {}),
            abort_when=dict(data.get("abort_when") or {}),
        )


class Comparison:
    """One process's numbers for one (incumbent, candidate) pair."""

    def __init__(self) -> None:
        self.compared = 0
        self.agreed = 0
        self.dropped = 0
        self.answered = {INCUMBENT: 0, CANDIDATE: 0}
        self.errors = {INCUMBENT: 0, CANDIDATE: 0}
        self.latencies: dict[str, deque[float]] = {
            INCUMBENT: deque(maxlen=LATENCY_WINDOW),
            CANDIDATE: deque(maxlen=LATENCY_WINDOW),
        }
        # output -> [sum of mean abs differences, calls, max abs difference]
        self.differences: dict[str, list[float]] = {}
        # (label, predicted class) of the shadow calls labels arrived for, per side
        self.labelled: dict[str, deque[tuple[str, str]]] = {
            INCUMBENT: deque(maxlen=LABELLED_WINDOW),
            CANDIDATE: deque(maxlen=LABELLED_WINDOW),
        }

    def answer(self, side: str, seconds: float, failed: bool) -> None:
        self.answered[side] += 1
        if failed:
            self.errors[side] += 1
        else:
            self.latencies[side].append(seconds)

    def compare(
        self,
        incumbent: list[Answered],
        candidate: InferenceResponse,
        tolerance: float,
        outputs: tuple[str, ...],
    ) -> bool:
        theirs = {o.name: o for o in candidate.outputs}
        agree = True
        for mine in incumbent:
            if outputs and mine.name not in outputs:
                continue
            other = theirs.get(mine.name)
            if other is None:
                agree = False
                continue
            same, difference = _agree(mine, answered(other), tolerance)
            agree = agree and same
            if difference is not None:
                entry = self.differences.setdefault(mine.name, [0.0, 0.0, 0.0])
                mean, largest = difference
                entry[0] += mean
                entry[1] += 1
                entry[2] = max(entry[2], largest)
        self.compared += 1
        self.agreed += agree
        return agree

    def dump(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "agreed": self.agreed,
            "dropped": self.dropped,
            "answered": dict(self.answered),
            "errors": dict(self.errors),
            "latencies": {k: list(v) for k, v in self.latencies.items()},
            "differences": self.differences,
            "labelled": {k: [list(p) for p in v] for k, v in self.labelled.items()},
        }


class Answered(NamedTuple):
    """One output of an answer, its values taken out of the response (a gRPC response is
    emptied as it is written to the client)."""

    name: str
    datatype: str
    values: np.ndarray


def answered(output: ResponseOutput) -> Answered:
    data = output.data
    raw = getattr(data, "root", data)
    if output.datatype == "BYTES":
        values = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in raw], object)
    else:
        values = np.asarray(raw).reshape(-1)
    return Answered(output.name, output.datatype, values)


def _agree(
    mine: Answered, other: Answered, tolerance: float
) -> tuple[bool, tuple[float, float] | None]:
    """Whether two answers of one output agree, and (numbers) their mean and largest
    absolute difference."""
    a, b = mine.values, other.values
    if a.shape != b.shape:
        return False, None
    if mine.datatype == "BYTES" or a.dtype == object or b.dtype == object:
        return bool(np.array_equal(a, b)), None
    if a.size == 0:
        return True, (0.0, 0.0)
    floats = mine.datatype in FLOAT_DATATYPES or other.datatype in FLOAT_DATATYPES
    if a.size <= SMALL_ANSWER:
        # A few values (the usual online call): plain Python costs a fraction of
        # numpy's per-call overhead, on the loop the incumbent's calls wait for.
        xs, ys = a.tolist(), b.tolist()
        gaps = [abs(float(x) - float(y)) for x, y in zip(xs, ys, strict=True)]
        agree = all(g <= tolerance for g in gaps) if floats else xs == ys
        return agree, (sum(gaps) / len(gaps), max(gaps))
    difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
    # Labels agree when equal.
    same = bool((difference <= tolerance).all()) if floats else bool(np.array_equal(a, b))
    return same, (float(difference.mean()), float(difference.max()))


def summary(dumps: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparison of every process, merged."""
    compared = sum(d["compared"] for d in dumps)
    agreed = sum(d["agreed"] for d in dumps)
    out: dict[str, Any] = {
        "compared": compared,
        "agreement": agreed / compared if compared else None,
        "dropped": sum(d["dropped"] for d in dumps),
    }
    sides: dict[str, dict[str, Any]] = {}
    for side in (INCUMBENT, CANDIDATE):
        answered = sum(d["answered"][side] for d in dumps)
        errors = sum(d["errors"][side] for d in dumps)
        latencies = np.asarray([x for d in dumps for x in d["latencies"][side]], np.float64)
        pairs = [p for d in dumps for p in d.get("labelled", {}).get(side, [])]
        sides[side] = {
            **_quality(pairs),
            "answered": answered,
            "errors": errors,
            "error_rate": errors / answered if answered else 0.0,
            "p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies.size else None,
            "p99_ms": float(np.percentile(latencies, 99) * 1000) if latencies.size else None,
        }
    differences: dict[str, dict[str, float]] = {}
    for d in dumps:
        for name, (total, calls, largest) in d["differences"].items():
            entry = differences.setdefault(name, {"total": 0.0, "calls": 0.0, "max_abs": 0.0})
            entry["total"] += total
            entry["calls"] += calls
            entry["max_abs"] = max(entry["max_abs"], largest)
    out["outputs"] = {
        name: {"mean_abs": e["total"] / e["calls"] if e["calls"] else 0.0, "max_abs": e["max_abs"]}
        for name, e in sorted(differences.items())
    }
    out["sides"] = sides
    p99s = sides[INCUMBENT]["p99_ms"], sides[CANDIDATE]["p99_ms"]
    out["p99_ratio"] = p99s[1] / p99s[0] if p99s[0] and p99s[1] is not None else None
    return out


def _quality(pairs: list[list[str]]) -> dict[str, Any]:
    """Accuracy and macro precision and recall of one side on its labelled calls."""
    from modelyard.quality.scoring import OVERALL, classification

    if not pairs:
        return {"labelled": 0, "accuracy": None, "precision": None, "recall": None}
    labels = [p[0] for p in pairs]
    predicted = [p[1] for p in pairs]
    metrics_ = {
        m.name: m.value
        for m in classification(labels, predicted, sorted(set(labels)))
        if m.cls == OVERALL
    }
    return {
        "labelled": len(pairs),
        "accuracy": metrics_.get("accuracy"),
        "precision": metrics_.get("precision_macro"),
        "recall": metrics_.get("recall_macro"),
    }


def judge(config: RolloutConfig, merged: dict[str, Any]) -> tuple[str, str] | None:
    """("abort" | "promote", why) when the declared rules decide, else None."""
    seen = merged["compared"] if config.mode == SHADOW else merged["sides"][CANDIDATE]["answered"]
    agreement = merged["agreement"]
    ratio = merged["p99_ratio"]
    error_rate = merged["sides"][CANDIDATE]["error_rate"]
    rules = config.abort_when
    if rules and seen >= rules.get("min_requests", DEFAULT_ABORT_MIN_REQUESTS):
        below = rules.get("agreement_below")
        if below is not None and agreement is not None and agreement < below:
            return "abort", f"agreement {agreement:.4f} < {below}"
        if "p99_ratio_above" in rules and ratio is not None and ratio > rules["p99_ratio_above"]:
            return "abort", f"p99 ratio {ratio:.2f} > {rules['p99_ratio_above']}"
        if "error_rate_above" in rules and error_rate > rules["error_rate_above"]:
            return "abort", f"error rate {error_rate:.4f} > {rules['error_rate_above']}"
    rules = config.promote_when
    if not rules or seen < rules.get("min_requests", 1):
        return None
    why = [f"{seen} requests"]
    if "min_agreement" in rules:
        if agreement is None or agreement < rules["min_agreement"]:
            return None
        why.append(f"agreement {agreement:.4f} >= {rules['min_agreement']}")
    if "max_p99_ratio" in rules:
        if ratio is None or ratio > rules["max_p99_ratio"]:
            return None
        why.append(f"p99 ratio {ratio:.2f} <= {rules['max_p99_ratio']}")
    if "max_error_rate" in rules:
        if error_rate > rules["max_error_rate"]:
            return None
        why.append(f"error rate {error_rate:.4f} <= {rules['max_error_rate']}")
    return "promote", ", ".join(why)


Answer = Callable[[MLModel | None], Awaitable[InferenceResponse]]


class ShadowShare:
    """Keeps an in-process shadow candidate to its share of the process's time while the
    incumbent is busy: the candidate runs on the incumbent's event loop, so every second
    it computes is a second the incumbent's calls wait. Over windows of ``window`` s,
    once the candidate's time (``spend``) passes ``share`` of the window's wall time,
    ``pause`` says how long to wait before the next shadow call; calls queued meanwhile
    beyond the queue's bound are dropped and counted, as always. When no incumbent call
    is in flight, the candidate takes what it wants: there is nobody to slow down."""

    def __init__(
        self, share: float, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ):
        self.share = share
        self.window = window
        self._clock = clock
        self._start = clock()
        self._spent = 0.0

    def spend(self, seconds: float) -> None:
        now = self._clock()
        if now - self._start >= self.window:
            # A new window; what the last one overdrew is carried, not forgiven.
            self._spent = max(0.0, self._spent - self.share * (now - self._start))
            self._start = now
        self._spent += seconds

    def pause(self, busy: bool) -> float:
        if not busy or self.share >= 1.0:
            return 0.0
        return max(0.0, self._spent / self.share - (self._clock() - self._start))


class Rollout:
    """One model's candidate beside its incumbent, and their comparison."""

    def __init__(
        self,
        name: str,
        incumbent: str,
        candidate: MLModel | RemoteCandidate,
        config: RolloutConfig,
        settings: ModelSettings | None = None,
        busy: Callable[[bool], bool] = lambda within_a_call: False,
    ):
        self.name = name
        self.incumbent = incumbent
        self.candidate = candidate
        self.remote = candidate if isinstance(candidate, RemoteCandidate) else None
        self.config = config
        self.started_at = time.time()
        self.comparison = Comparison()
        self.decided: str | None = None
        # A classifier with a prediction output and a store: its shadow calls wait
        # there for the labels the feedback path brings (by request id and row).
        quality = QualityConfig.from_settings(
            settings if settings is not None else cast(MLModel, candidate).settings
        )
        self.quality = (
            quality
            if quality is not None and quality.task == "classification" and quality.prediction
            else None
        )
        self.pending: dict[tuple[str, int], tuple[str, str]] = {}
        labels = {"model": name, "incumbent": incumbent, "candidate": candidate.version or ""}
        self.key = f"{name}/{incumbent}/{candidate.version or ''}"
        self._requests = {
            side: metrics.ROLLOUT_REQUESTS.labels(**labels, side=side)
            for side in (INCUMBENT, CANDIDATE)
        }
        self._dropped = metrics.ROLLOUT_DROPPED.labels(**labels)
        self._queue: asyncio.Queue[tuple[InferenceRequest, list[Answered]]] = asyncio.Queue(
            config.queue
        )
        self._worker: asyncio.Task[None] | None = None
        # Whether the process answers other requests (`Rollouts.busy`).
        self.busy = busy
        self._share = ShadowShare(config.share)
        if config.mode == SHADOW:
            self._worker = asyncio.get_running_loop().create_task(self._shadow())

    async def infer(self, payload: InferenceRequest, answer: Answer) -> InferenceResponse:
        """One call: answered by the side the mode picks; shadowed when it says so."""
        config = self.config
        side = INCUMBENT
        if config.mode == CANARY and self._canary(payload):
            side = CANDIDATE
        start = time.perf_counter()
        try:
            if side == CANDIDATE and self.remote is not None:
                response = await self.remote.predict(payload)
            else:
                response = await answer(self.candidate if side == CANDIDATE else None)
        except Exception:
            self._answered(side, time.perf_counter() - start, failed=True)
            raise
        self._answered(side, time.perf_counter() - start, failed=False)
        if config.mode == SHADOW and (config.sample >= 1.0 or random.random() < config.sample):
            # A call the candidate would only get to once its share is spent again is
            # dropped here, before its answer is copied for the comparison (busy: a
            # request in flight besides this one).
            if self._queue.full() or (
                self.remote is None and self._share.pause(self.busy(True)) > 0
            ):
                self.comparison.dropped += 1
                self._dropped.inc()
            else:
                began = time.perf_counter()
                self._queue.put_nowait((payload, [answered(o) for o in response.outputs]))
                if self.remote is None:
                    self._share.spend(time.perf_counter() - began)
        return response

    def _answered(self, side: str, seconds: float, failed: bool) -> None:
        self.comparison.answer(side, seconds, failed)
        self._requests[side].inc()

    def _canary(self, payload: InferenceRequest) -> bool:
        config = self.config
        key: str | None = None
        if config.sticky_header is not None:
            headers = payload.parameters.headers if payload.parameters is not None else None
            for k, v in (headers or {}).items():
                if k.lower() == config.sticky_header:
                    key = str(v)
                    break
        elif config.sticky_input is not None:
            for tensor in payload.inputs:
                if tensor.name == config.sticky_input:
                    values = getattr(tensor.data, "root", tensor.data)
                    first = np.asarray(values).reshape(-1)[:1]
                    key = str(first[0]) if first.size else None
                    break
        if key is None:
            return random.random() * 100.0 < config.weight
        return (zlib.crc32(key.encode()) % 10000) < config.weight * 100.0

    async def _shadow(self) -> None:
        """Answer the queued calls with the candidate, one at a time, and compare."""
        candidate = self.candidate
        local = not isinstance(candidate, RemoteCandidate)
        while True:
            payload, response = await self._queue.get()
            # A remote candidate's time is spent on its own machine, not this loop's.
            while local and (pause := self._share.pause(self.busy(False))) > 0:
                await asyncio.sleep(min(pause, 0.01))
            start = time.perf_counter()
            try:
                if isinstance(candidate, RemoteCandidate):
                    theirs = await candidate.predict(payload)
                else:
                    with InFlight(candidate), model_context(candidate.settings):
                        theirs = await candidate.predict(payload.model_copy())
            except Exception as e:
                logger.debug("model '%s' candidate failed: %s", self.name, e)
                took = time.perf_counter() - start
                self._answered(CANDIDATE, took, failed=True)
                if local:
                    self._share.spend(took)
                continue
            took = time.perf_counter() - start
            self._answered(CANDIDATE, took, failed=False)
            # A queue with calls in it and a model that never awaits would hold the
            # event loop: the incumbent's calls go first.
            await asyncio.sleep(0)
            began = time.perf_counter()
            self.comparison.compare(response, theirs, self.config.tolerance, self.config.outputs)
            if self.quality is not None and payload.id:
                self._await_labels(payload.id, response, theirs)
            if local:
                self._share.spend(took + time.perf_counter() - began)

    def _await_labels(
        self, request_id: str, mine: list[Answered], theirs: InferenceResponse
    ) -> None:
        from modelyard.quality.labels import label_text

        assert self.quality is not None
        name = self.quality.prediction
        ours = next((o.values for o in mine if o.name == name), None)
        other = next((answered(o).values for o in theirs.outputs if o.name == name), None)
        if ours is None or other is None or len(ours) != len(other):
            return
        for row, (a, b) in enumerate(zip(ours, other, strict=True)):
            if len(self.pending) >= PENDING_LABELS:
                self.pending.pop(next(iter(self.pending)))  # the oldest never labelled
            self.pending[(request_id, row)] = (label_text(a), label_text(b))

    def fetch_labels(self, ids: list[str]) -> list[Any]:
        """The labels the store has for ``ids`` (key, row, label); run on a thread."""
        from modelyard.quality.tables import REQUEST, QualityStore

        assert self.quality is not None
        found: list[Any] = []
        store = QualityStore.open(self.quality, writer=False)
        try:
            if not store.exists():
                return found
            table = store.labels
            with store.engine.connect() as conn:
                for start in range(0, len(ids), 500):
                    query = sa.select(table.c.key, table.c.row, table.c.label).where(
                        table.c.model == self.name,
                        table.c.kind == REQUEST,
                        table.c.key.in_(ids[start : start + 500]),
                    )
                    found.extend(conn.execute(query).all())
        finally:
            store.close()
        return found

    def apply_labels(self, found: list[Any]) -> None:
        """Move the pending calls whose labels have arrived into the comparison."""
        from modelyard.quality.labels import label_text

        for key, row, label in found:
            predicted = self.pending.pop((key, int(row)), None)
            if predicted is None:
                continue
            truth = label_text(label)
            self.comparison.labelled[INCUMBENT].append((truth, predicted[0]))
            self.comparison.labelled[CANDIDATE].append((truth, predicted[1]))

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self.remote is not None:
            await self.remote.close()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "mode": self.config.mode,
            "incumbent": self.incumbent,
            "candidate": self.candidate.version or "",
            "candidate_url": self.remote.url if self.remote is not None else None,
            "weight": self.config.weight if self.config.mode == CANARY else None,
            "sample": self.config.sample if self.config.mode == SHADOW else None,
            "started_at": self.started_at,
        }


class Rollouts:
    """This process's rollouts by model name (`active`, which the data plane reads)."""

    def __init__(
        self, models: LoadedModels, siblings: Siblings, remote: dict[str, str] | None = None
    ):
        self.models = models
        self.siblings = siblings
        self.active: dict[str, Rollout] = {}
        # Candidates served elsewhere (`RemoteCandidate`) by model name, and the incumbent
        # version each was aborted for (not started again until the version changes).
        self.remote = dict(remote or {})
        self._remote_aborted: dict[str, str] = {}
        # Acts on every process (the repository's promote / abort); set by the server.
        self.act: Callable[[str, str], Awaitable[Any]] | None = None
        self._written: bytes | None = None
        # Whether the process answers other requests than the caller's (True: it is
        # within one), REST and gRPC (`limits.InFlight.busy`; set by the server): a
        # shadow candidate's share counts while it does.
        self.busy: Callable[[bool], bool] = lambda within_a_call: False

    # -- changes (the registry and the repository's action log) ---------------------------
    async def begin(
        self, settings: ModelSettings, warmup: InferenceRequest | None
    ) -> MLModel | None:
        """Load ``settings`` as the candidate when its declaration has a rollout and a
        version of the model serves; None (nothing loaded) otherwise."""
        config = RolloutConfig.from_settings(settings)
        incumbent = self.models.find(settings.name)
        if config is None or incumbent is None:
            return None
        await self.end(settings.name)
        candidate = await self.models.add_candidate(settings, warmup)
        rollout = Rollout(settings.name, incumbent.version or "", candidate, config, busy=self.busy)
        self.active[settings.name] = rollout
        logger.info(
            "model '%s': version %s loaded as the %s candidate beside version %s",
            settings.name, rollout.candidate.version, config.mode, rollout.incumbent,
        )  # fmt: skip
        return candidate

    async def begin_remote(self) -> None:
        """Start comparing with each remote candidate whose model serves with a
        declared rollout (at start, and after a new version of the model loads)."""
        for name, url in self.remote.items():
            incumbent = self.models.find(name)
            if incumbent is None:
                continue
            version = incumbent.version or ""
            running = self.active.get(name)
            if running is not None and running.incumbent == version:
                continue
            if self._remote_aborted.get(name) == version:
                continue
            config = RolloutConfig.from_settings(incumbent.settings)
            if config is None:
                continue
            if running is not None:
                await self.end(name)
            candidate = RemoteCandidate(name, url)
            await candidate.find_version()
            self.active[name] = Rollout(
                name, version, candidate, config, incumbent.settings, self.busy
            )
            logger.info(
                "model '%s': %s candidate at %s (version %s) beside version %s",
                name, config.mode, url, candidate.version or "unknown", version,
            )  # fmt: skip

    def refuse(self, verb: str, name: str) -> None:
        """A promote of a candidate served elsewhere is not this server's to do."""
        rollout = self.active.get(name)
        if verb == PROMOTE and rollout is not None and rollout.remote is not None:
            raise RemotePromote(name, rollout.remote.url)

    async def promote(self, name: str) -> MLModel:
        self.refuse(PROMOTE, name)
        rollout = self.active.get(name)
        if rollout is None:
            raise NoRollout(name)
        await rollout.stop()
        # Listed until the candidate serves: a status read while the worker stops saw
        # neither the rollout nor the new version (the registry records it on return).
        self.active.pop(name, None)
        model = self.models.promote(name)
        if model is None:
            raise NoRollout(name)
        logger.info("model '%s': candidate version %s promoted", name, model.version)
        return model

    async def end(self, name: str) -> bool:
        """Abort ``name``'s rollout: its candidate unloaded, the incumbent serving on."""
        rollout = self.active.pop(name, None)
        if rollout is not None:
            await rollout.stop()
            if rollout.remote is not None:
                self._remote_aborted[name] = rollout.incumbent
        dropped = await self.models.drop_candidate(name)
        if rollout is not None:
            logger.info("model '%s': candidate version %s aborted", name, rollout.candidate.version)
        return rollout is not None or dropped

    # -- status ---------------------------------------------------------------------------
    def _mine(self) -> dict[str, Any]:
        return {
            r.key: {**r.describe(), "comparison": r.comparison.dump()} for r in self.active.values()
        }

    def status(self, mine: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every rollout of this server, its comparison merged over the processes
        (``mine``: this process's part, when the caller has just taken it)."""
        dumps: dict[str, list[dict[str, Any]]] = {}
        for key, entry in (self._mine() if mine is None else mine).items():
            dumps.setdefault(key, []).append(entry["comparison"])
        if not self.siblings.solo:
            assert self.siblings.state_dir is not None
            for i in range(self.siblings.count):
                if i == self.siblings.index:
                    continue
                path = self.siblings.state_dir / f"{FILE_PREFIX}{i}.json"
                try:
                    theirs = orjson.loads(path.read_bytes())
                except (OSError, ValueError):
                    continue
                for key, entry in theirs.items():
                    if key in dumps:
                        dumps[key].append(entry["comparison"])
        found = []
        for rollout in sorted(self.active.values(), key=lambda r: r.name):
            merged = summary(dumps[rollout.key])
            decision = judge(rollout.config, merged)
            found.append(
                {
                    **rollout.describe(),
                    **merged,
                    "processes": len(dumps[rollout.key]),
                    # The declared rules' judgement now: [verb, why] or None.
                    "decision": list(decision) if decision is not None else None,
                }
            )
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Write this process's comparisons for its siblings; the first process judges
        the declared rules and sets the agreement gauge."""
        first = self.siblings.index in (None, 0)
        labels_at = 0.0
        while not stop.is_set():
            try:
                if self.remote:
                    await self.begin_remote()
                if time.monotonic() >= labels_at:
                    labels_at = time.monotonic() + LABELS_INTERVAL_S
                    for rollout in list(self.active.values()):
                        if rollout.quality is not None and rollout.pending:
                            ids = sorted({request_id for request_id, _ in rollout.pending})
                            found = await asyncio.to_thread(rollout.fetch_labels, ids)
                            rollout.apply_labels(found)
                # One dump a tick, written and judged: its latencies are thousands of
                # numbers, and this runs on the event loop the calls are answered on.
                mine = self._mine()
                self._write(mine)
                if first:
                    await self._judge(mine)
            except Exception:
                logger.exception("rollouts: judging failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL_S)

    def _write(self, mine: dict[str, Any]) -> None:
        if self.siblings.solo or self.siblings.state_dir is None:
            return
        text = orjson.dumps(mine, option=orjson.OPT_SERIALIZE_NUMPY)
        if text == self._written:
            return
        path = self.siblings.state_dir / f"{FILE_PREFIX}{self.siblings.index}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(text)
        tmp.replace(path)
        self._written = text

    async def _judge(self, mine: dict[str, Any]) -> None:
        for merged in self.status(mine):
            rollout = self.active.get(merged["model"])
            if rollout is None:
                continue
            labels = (rollout.name, rollout.incumbent, rollout.candidate.version or "")
            if merged["agreement"] is not None:
                metrics.ROLLOUT_AGREEMENT.labels(*labels).set(merged["agreement"])
            decision = judge(rollout.config, merged)
            if decision is not None and decision[0] == "abort":
                decision = (ABORT, decision[1])
            if decision is None or rollout.decided or self.act is None:
                continue
            if rollout.remote is not None:
                # Whoever runs the candidate acts (on Kubernetes the operator, which
                # reads `decision`): aborted here, its Deployment would run on unseen.
                continue
            verb, why = decision
            rollout.decided = verb
            logger.warning(
                "model '%s': candidate version %s %s automatically: %s",
                rollout.name, labels[2], "promoted" if verb == "promote" else "aborted", why,
            )  # fmt: skip
            asyncio.get_running_loop().create_task(self._decide(verb, rollout.name))

    async def _decide(self, verb: str, name: str) -> None:
        assert self.act is not None
        try:
            await self.act(verb, name)
        except Exception as e:
            logger.error("model '%s': automatic %s failed: %s", name, verb, e)


ROLLOUTS_PATH = "/modelyard/rollouts"


def add_rollout_routes(
    app: Any, rollouts: Rollouts, act: Callable[[str, str], Awaitable[Any]]
) -> None:
    """``GET /modelyard/rollouts[/NAME]`` and ``POST /modelyard/rollouts/NAME/promote|abort``
    (the admin token's, as the repository API: `auth.py`) on the REST app."""
    from fastapi.responses import ORJSONResponse

    async def listed() -> dict[str, Any]:
        return {"rollouts": rollouts.status()}

    async def one(name: str) -> dict[str, Any]:
        for found in rollouts.status():
            if found["model"] == name:
                return found
        raise NoRollout(name)

    def acting(verb: str) -> Callable[[str], Awaitable[dict[str, Any]]]:
        async def handler(name: str) -> dict[str, Any]:
            await act(verb, name)
            model = rollouts.models.find(name)
            return {"model": name, "action": verb, "serving": model.version if model else None}

        return handler

    app.add_api_route(ROLLOUTS_PATH, listed, methods=["GET"], response_class=ORJSONResponse)
    app.add_api_route(
        ROLLOUTS_PATH + "/{name}", one, methods=["GET"], response_class=ORJSONResponse
    )
    for verb in (PROMOTE, ABORT):
        app.add_api_route(
            f"{ROLLOUTS_PATH}/{{name}}/{verb}",
            acting(verb),
            methods=["POST"],
            response_class=ORJSONResponse,
        )
