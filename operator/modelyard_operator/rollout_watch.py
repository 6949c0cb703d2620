"""A Model's running rollout, followed by a timer: the comparison its serving pods keep
(``GET /modelyard/rollouts/<name>`` through the Model's Service, merged over the
server's processes) is written to ``status.rollout.comparison``, and when the declared
``promote_when`` / ``abort_when`` rules say so, the operator promotes or aborts the
candidate the way ``spec.rollout.action`` does: it sets that action, so a rule and a
person take one path (the reconcile acts on it once and removes it).

- Every ``MODELYARD_OPERATOR_ROLLOUT_POLL_SECONDS`` (the chart's
  ``operator.rolloutPollSeconds``, default 15) per Model.
- A Service that does not answer leaves the comparison as it was, with
  ``status.rollout.comparisonError`` and a Warning Event (once per new error); nothing
  is promoted or aborted on numbers that could not be read.
- The read is plain HTTP without a token: a Model with ``spec.tls`` or inference tokens
  (``spec.auth``) is not read (the status says so), and is promoted or aborted by
  ``spec.rollout.action`` after ``modelyard rollout status``.
- ``MODELYARD_OPERATOR_ROLLOUT_URL`` replaces the in-cluster address
  (``http://{name}.{namespace}.svc:8080``), for an operator run outside the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from modelyard_operator.crd import GROUP, MODEL, PLURAL, VERSION
from modelyard_operator.kube import Cluster, transient_errors_retry
from modelyard_operator.render.common import HTTP_PORT
from modelyard_operator.rollouts import comparison_status, read_comparison
from modelyard_operator.spec import Model, SpecError
from modelyard_operator.timers import TICK_SECONDS, due

IN_CLUSTER_URL = "http://{name}.{namespace}.svc:" + str(HTTP_PORT)
DECISIONS = ("promote", "abort")


def server_url(model: Model, template: str) -> str:
    return (template or IN_CLUSTER_URL).format(name=model.name, namespace=model.namespace)


def unreadable(model: Model) -> str | None:
    """Why the operator cannot read this Model's comparison, if it cannot."""
    if model.spec.tls is not None:
        return "the server speaks TLS (spec.tls)"
    if model.spec.auth.inference_token_secret is not None:
        return "the server wants an inference token (spec.auth.inferenceTokenSecret)"
    return None


def follow(
    rollout: Mapping[str, Any], found: Mapping[str, Any] | None, url: str
) -> tuple[dict[str, Any], str | None, str | None]:
    """From ``status.rollout`` and what the server answered: the status.rollout patch,
    the action the declared rules decided (promote / abort) and an error, if any."""
    if found is None:
        error = f"the server at {url} did not answer with the rollout; comparison not updated"
        return {"comparisonError": error}, None, error
    if str(found.get("candidate") or "") != str(rollout.get("candidate") or ""):
        # Pods still on an earlier candidate (a rolling update): not this rollout's numbers.
        error = (
            f"the server at {url} compares candidate {found.get('candidate')!r}, "
            f"not {rollout.get('candidate')!r} yet"
        )
        return {"comparisonError": error}, None, error
    comparison = comparison_status(found)
    decision = comparison["decision"] if comparison["decision"] in DECISIONS else None
    return {"comparison": comparison, "comparisonError": None}, decision, None


def _rolling_out(status: kopf.Status, **_: Any) -> bool:
    return ((status.get("rollout") or {}).get("phase")) == "Running"


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, when=_rolling_out)
def follow_rollout(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Read a running rollout's comparison when it is due; record it, and act on the
    declared rules' decision through spec.rollout.action."""
    try:
        model = Model.from_body(body)
    except SpecError:
        return  # the reconcile refused it and said why
    if model.spec.rollout is None or not due(memo, "rollout_due", memo.config.rollout_poll_seconds):
        return
    cluster: Cluster = memo.cluster
    meta = body["metadata"]
    rollout = dict((body.get("status") or {}).get("rollout") or {})
    why = unreadable(model)
    if why is not None:
        refused = f"{why}: the operator does not read its comparison; see docs/rollouts.md"
        if rollout.get("comparisonError") != refused:
            with transient_errors_retry(memo.config.retry_delay):
                body_patch = {"rollout": {"comparisonError": refused}}
                cluster.patch_status(MODEL, meta["name"], meta["namespace"], body_patch)
        return
    url = server_url(model, memo.config.rollout_url)
    found = read_comparison(url, model.model_name)
    patch, decision, error = follow(rollout, found, url)
    if error is not None and error != rollout.get("comparisonError"):
        kopf.warn(body, reason="RolloutUnread", message=error)
    with transient_errors_retry(memo.config.retry_delay):
        cluster.patch_status(MODEL, meta["name"], meta["namespace"], {"rollout": patch})
        acting = ((body.get("spec") or {}).get("rollout") or {}).get("action")
        if decision is not None and not acting:
            why = patch["comparison"]["reason"]
            message = f"candidate {rollout.get('candidate')}: {decision} by the rules: {why}"
            reason = f"Rollout{decision.capitalize()}"
            kopf.event(body, type="Normal", reason=reason, message=message)
            action = {"spec": {"rollout": {"action": decision}}}
            cluster.merge_patch(MODEL, meta["name"], meta["namespace"], action)
