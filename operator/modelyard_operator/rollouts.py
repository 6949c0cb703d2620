"""What the operator does for a Model with `rollout`: pure, so the rules are testable alone.

The version serving is the one the Model's Deployment carries (its
`app.kubernetes.io/version` label). When the Model's version differs from it, the
Deployment and its ConfigMap are left as they are (the incumbent serves on) and the new
version runs as the candidate (`<name>-candidate`, see render/rollout.py) until
`spec.rollout.action` promotes it (the Model's Deployment rolls to it, the candidate is
deleted) or aborts it (the candidate is deleted; the incumbent serves until the version
changes again). The operator acts on an action once and removes it from the spec.

While the candidate runs, the incumbent's pods are given `--rollout-candidate-url
<model>=http://<name>-candidate.<ns>.svc:<port>` (their server sends the candidate its
shadow or canary share: modelyard/serving/rollouts.py); it is removed on abort, and a
promote renders the Deployment anew without it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelyard_operator.render.common import HTTP_PORT
from modelyard_operator.render.rollout import candidate_name
from modelyard_operator.spec import Model

VERSION_LABEL = "app.kubernetes.io/version"
# Kinds of the Model's own that a running (or aborted) candidate leaves untouched.
INCUMBENT_KINDS = ("ConfigMap", "Deployment")
CANDIDATE_URL_FLAG = "--rollout-candidate-url"
# The server's rollout status (modelyard/serving/rollouts.py) and how long it may take.
ROLLOUTS_PATH = "/modelyard/rollouts"
READ_TIMEOUT_S = 5.0
SERVER_CONTAINER = "server"


@dataclass(frozen=True)
class Plan:
    # Render and apply the candidate; otherwise delete any.
    candidate: bool
    # Leave the Model's Deployment and ConfigMap as they are (the incumbent's).
    keep_incumbent: bool
    # spec.rollout.action was acted on (or has nothing to act on): remove it.
    clear_action: bool
    # status.rollout; None removes it.
    status: dict[str, Any] | None


def serving_version(deployment: Mapping[str, Any] | None) -> str | None:
    """The version the Model's Deployment serves; None before there is one."""
    if deployment is None:
        return None
    return ((deployment.get("metadata") or {}).get("labels") or {}).get(VERSION_LABEL)


def plan(model: Model, incumbent: str | None, previous: Mapping[str, Any] | None) -> Plan:
    """The rollout step for `model`, whose Deployment serves `incumbent`, given the
    `status.rollout` written before (`previous`)."""
    action = model.rollout_action
    version = model.spec.version
    previous = previous or {}
    if model.spec.rollout is None or incumbent is None or incumbent == version:
        # Nothing to compare: the first version, no rollout, or the candidate promoted
        # (its version now serves). A promoted or aborted record stays for reading.
        ended = previous.get("phase") in ("Promoted", "Aborted") and (
            previous.get("candidate") == version or previous.get("incumbent") == version
        )
        return Plan(False, False, action is not None, dict(previous) if ended else None)
    mode = model.spec.rollout.get("mode")
    status: dict[str, Any] = {
        "mode": mode,
        "incumbent": incumbent,
        "candidate": version,
        "candidateService": candidate_name(model),
    }
    if action == "promote":
        return Plan(False, False, True, {**status, "phase": "Promoted"})
    aborted = previous.get("phase") == "Aborted" and previous.get("candidate") == version
    if action == "abort" or aborted:
        return Plan(False, True, action is not None, {**status, "phase": "Aborted"})
    return Plan(True, True, False, {**status, "phase": "Running"})


def candidate_url(model: Model) -> str:
    """Where the incumbent's pods reach the candidate: its Service's REST port."""
    return f"http://{candidate_name(model)}.{model.namespace}.svc:{HTTP_PORT}"


def incumbent_patch(
    deployment: Mapping[str, Any], model: Model, sending: bool
) -> list[dict[str, Any]] | None:
    """The JSON patch giving the incumbent's server container the candidate's URL
    (``sending``) or taking it away; None when its command is already so."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    index = next((i for i, c in enumerate(containers) if c.get("name") == SERVER_CONTAINER), None)
    if index is None:
        return None
    command = list(containers[index].get("command") or [])
    kept: list[str] = []
    skip = False
    for arg in command:
        if skip:
            skip = False
        elif arg == CANDIDATE_URL_FLAG:
            skip = True
        else:
            kept.append(arg)
    if sending:
        kept += [CANDIDATE_URL_FLAG, f"{model.model_name}={candidate_url(model)}"]
    if kept == command:
        return None
    path = f"/spec/template/spec/containers/{index}"
    return [
        {"op": "test", "path": f"{path}/name", "value": SERVER_CONTAINER},
        {"op": "replace", "path": f"{path}/command", "value": kept},
    ]


def read_comparison(
    base_url: str, model_name: str, token: str | None = None
) -> dict[str, Any] | None:
    """The serving server's rollout of ``model_name`` (``GET /modelyard/rollouts/NAME``,
    its numbers merged over the server's processes); None when it has none or does
    not answer."""
    url = f"{base_url.rstrip('/')}{ROLLOUTS_PATH}/{model_name}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=READ_TIMEOUT_S
        ) as response:
            found = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def comparison_status(found: Mapping[str, Any]) -> dict[str, Any]:
    """``status.rollout.comparison`` from the server's rollout: the calls compared,
    agreement, p99 ratio, each side's error rate, and the declared rules' judgement
    (the server's, `decision`)."""
    sides = found.get("sides") or {}
    decision = found.get("decision")
    return {
        "requestsCompared": int(found.get("compared") or 0),
        "agreement": found.get("agreement"),
        "p99Ratio": found.get("p99_ratio"),
        "errorRates": {
            side: (sides.get(side) or {}).get("error_rate") for side in ("incumbent", "candidate")
        },
        "decision": decision[0] if decision else None,
        "reason": decision[1] if decision else None,
    }
