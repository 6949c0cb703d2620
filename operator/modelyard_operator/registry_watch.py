"""A Model whose model.uri names MLflow's registry, on the cluster: resolved and pinned
at each reconcile, and re-resolved by a timer.

- The pods are given the pinned ``models:/<name>/<N>`` (in the ConfigMap's declaration)
  and the tracking server, never the alias or stage: a restarted pod serves the same
  version. The pin is ``status.registry`` (``registry.resolve_pin`` decides).
- A first resolution that fails (the tracking server unreachable, an alias naming
  nothing) renders nothing: an Event and the Ready condition name the URI and the fix,
  and the reconcile is retried.
- A later one that fails keeps the pin: an Event, ``status.registry.error``, no roll.
- The timer resolves moving URIs (aliases, stages, latest) every ``spec.mlflow.
  pollSeconds`` (else the operator's ``MODELYARD_OPERATOR_REGISTRY_POLL_SECONDS``); a
  moved one reconciles the Model, whose pod template then changes: the Deployment's
  rolling update is the swap (maxUnavailable 0), and an Event says from which version
  to which.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf

from modelyard.serving.registry_uris import moves
from modelyard_operator.crd import GROUP, MODEL, PLURAL, VERSION
from modelyard_operator.kube import Cluster, transient_errors_retry
from modelyard_operator.registry import Outcome, pinned_spec, resolve_pin
from modelyard_operator.spec import Model, SpecError
from modelyard_operator.status import failed_status
from modelyard_operator.timers import TICK_SECONDS, due

# An unreachable tracking server fails the call at once instead of MLflow's default of
# several retries over minutes, which would hold the Model's handler that long.
MLFLOW_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
UNRESOLVED = "RegistryUnresolved"


@kopf.on.startup()
def fail_fast(memo: kopf.Memo, **_: Any) -> None:
    memo.mlflow_environ = {name: os.environ.get(name) for name in MLFLOW_FAIL_FAST}
    for name, value in MLFLOW_FAIL_FAST.items():
        os.environ.setdefault(name, value)


@kopf.on.cleanup()
def restore_environ(memo: kopf.Memo, **_: Any) -> None:
    """As it was (an operator run inside another process leaves it unchanged)."""
    for name, value in (getattr(memo, "mlflow_environ", None) or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def poll_seconds(model: Model, memo: kopf.Memo) -> float:
    return float(model.spec.mlflow.poll_seconds or memo.config.registry_poll_seconds)


def held(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """status.registry when it pins a version (not a first resolution's error alone)."""
    return status if status and status.get("pinned") else None


def record(
    cluster: Cluster, body: kopf.Body, outcome: Outcome, previous: Mapping[str, Any]
) -> None:
    """Bring status.registry to the pin and the error (if any) of ``outcome``, with an
    Event for a moved pin and one for an error that is new."""
    meta = body["metadata"]
    uri = outcome.status["uri"] if outcome.status else previous.get("uri")
    if outcome.moved:
        message = f"{uri}: {outcome.moved} ({outcome.pinned}); the pods roll to it"
        # kopf.event: kopf.info is held back by the posting level (warnings only).
        kopf.event(body, type="Normal", reason="RegistryMoved", message=message)
    if outcome.error and outcome.error != previous.get("error"):
        kopf.warn(body, reason=UNRESOLVED, message=outcome.error)
    wanted: dict[str, Any] = {**(outcome.status or {}), "error": outcome.error}
    if all(previous.get(k) == v for k, v in wanted.items()):
        return
    # A merge patch: keys of an earlier pin that this one lacks are removed by name.
    stale = dict.fromkeys(set(previous) - set(wanted))
    patch = {"registry": {**stale, **wanted}}
    cluster.patch_status(MODEL, meta["name"], meta["namespace"], patch)


def current_registry(cluster: Cluster, body: kopf.Body) -> dict[str, Any]:
    """status.registry as the API server has it now (the event's body may be older)."""
    meta = body["metadata"]
    found = cluster.resource(*MODEL).get(name=meta["name"], namespace=meta["namespace"])
    return dict(((found.to_dict().get("status") or {}).get("registry")) or {})


def pin_registry_uri(cluster: Cluster, body: kopf.Body, model: Model, memo: kopf.Memo) -> Model:
    """The Model as its pods get it: a registry URI replaced by the version pinned now.
    With nothing pinned and nothing resolvable, the Model is not rendered: the Ready
    condition and an Event say why, and the reconcile is retried."""
    uri = model.registry_uri
    if uri is None:
        if (body.get("status") or {}).get("registry"):
            meta = body["metadata"]
            with transient_errors_retry(memo.config.retry_delay):
                cluster.patch_status(MODEL, meta["name"], meta["namespace"], {"registry": None})
        return model
    server = model.tracking_uri()
    if server is None:  # Model.from_body refused it already
        raise SpecError(f"model '{model.name}': no tracking server for {uri}")
    delay = memo.config.retry_delay
    with transient_errors_retry(delay):
        previous = current_registry(cluster, body)
        outcome = resolve_pin(uri, server, held(previous))
        record(cluster, body, outcome, previous)
        if outcome.status is None:
            meta = body["metadata"]
            status = failed_status(
                body.get("status") or {}, meta.get("generation"), UNRESOLVED, outcome.error or ""
            )
            cluster.patch_status(MODEL, meta["name"], meta["namespace"], status)
    if outcome.status is None:
        raise kopf.TemporaryError(outcome.error or uri, delay=poll_seconds(model, memo))
    return Model.from_spec(
        model.name, model.namespace, pinned_spec(body.get("spec") or {}, outcome.status)
    )


def _follows(spec: kopf.Spec, **_: Any) -> bool:
    uri = (spec.get("model") or {}).get("uri")
    return isinstance(uri, str) and uri.startswith("models:/") and moves(uri)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, when=_follows)
def follow_registry(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Resolve a Model's alias, stage or latest again when it is due; a pin that moved
    (or a first one) reconciles the Model, an error keeps the pin and is recorded."""
    try:
        model = Model.from_body(body)
    except SpecError:
        return  # the reconcile refused it and said why
    if model.registry_uri is None or not due(memo, "registry_due", poll_seconds(model, memo)):
        return
    cluster: Cluster = memo.cluster
    server = model.tracking_uri()
    if server is None:
        return
    with transient_errors_retry(memo.config.retry_delay):
        previous = current_registry(cluster, body)
        outcome = resolve_pin(model.registry_uri, server, held(previous))
        if outcome.pinned is not None and outcome.pinned != previous.get("pinned"):
            # The reconcile resolves, records and renders the new pin itself.
            from modelyard_operator.handlers import reconcile

            cast(Callable[..., None], reconcile)(body=body, meta=meta, memo=memo)
            return
        record(cluster, body, outcome, previous)
