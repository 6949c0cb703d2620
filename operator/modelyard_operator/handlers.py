"""kopf handlers: one level-triggered reconcile per Model, and readiness from its Deployment.

Run with `kopf run -m modelyard_operator.handlers --all-namespaces --liveness=http://0.0.0.0:8080/healthz`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, NoReturn

import kopf
from kubernetes.client.exceptions import ApiException

from modelyard_operator.config import ConfigError, OperatorConfig
from modelyard_operator.crd import GROUP, KIND, MODEL, PLURAL, VERSION
from modelyard_operator.kube import Cluster, api_client, api_message, transient_errors_retry
from modelyard_operator.registry_watch import pin_registry_uri
from modelyard_operator.render import RenderOptions, render_all
from modelyard_operator.render.common import config_name, cronjob_name
from modelyard_operator.render.rollout import candidate_model, candidate_name, render_candidate
from modelyard_operator.rollout_watch import follow_rollout  # noqa: F401  (its timer)
from modelyard_operator.rollouts import (
    INCUMBENT_KINDS,
    incumbent_patch,
    plan,
    serving_version,
)
from modelyard_operator.spec import CANDIDATE_SUFFIX, Model, SpecError
from modelyard_operator.status import (
    changed,
    deployment_readiness,
    failed_for,
    failed_status,
    rollout_stalled,
    serving_status,
)

MANAGED = {"app.kubernetes.io/managed-by": "modelyard-operator"}
# Status writes are conditional on the Model's resourceVersion; a lost race re-reads.
STATUS_ATTEMPTS = 5


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # The service account in a cluster, else $KUBECONFIG as it is now (the official
    # client's login, kopf's default, reads $KUBECONFIG once, at import).
    info = kopf.login_with_service_account(**kwargs)
    if info is None:
        return kopf.login_with_kubeconfig(**kwargs)
    # kopf names the API server kubernetes.default.svc, which needs the cluster's DNS;
    # the kubelet gives every pod its address, which the official clients use.
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if host and port:
        host = f"[{host}]" if ":" in host else host
        info = dataclasses.replace(info, server=f"https://{host}:{port}")
    return info


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    try:
        config = OperatorConfig.from_env()
    except ConfigError as exc:
        raise kopf.PermanentError(str(exc)) from None
    # Logged warnings become Events on the Model; routine progress stays in the log.
    settings.posting.level = logging.WARNING
    cluster = Cluster(api_client())
    memo.config = config
    memo.cluster = cluster
    memo.options = RenderOptions(
        image=config.image,
        storage_initializer_image=config.storage_initializer_image,
        gpu_resource=config.gpu_resource,
        gpu_node_label=config.gpu_node_label,
        gpu_tolerations=tuple(t.pairs() for t in config.gpu_tolerations),
        progress_deadline_seconds=config.progress_deadline_seconds,
        inflight_metric=config.inflight_metric,
        default_cpu=config.default_cpu,
        default_memory=config.default_memory,
        network_policy=config.network_policy,
        network_policy_from=config.network_policy_from,
        monitoring_namespace=config.monitoring_namespace,
        environment_index_url=config.environment_index_url,
        api=cluster.api_versions(),
    )


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    cluster: Cluster | None = getattr(memo, "cluster", None)
    if cluster is not None:
        cluster.api.close()


def api_version_of(kind: str, options: RenderOptions) -> str | None:
    """The version a kind is served at, to delete one the Model no longer wants."""
    return {
        "HorizontalPodAutoscaler": options.api.hpa,
        "PodDisruptionBudget": options.api.pdb,
        "CronJob": options.api.cronjob,
        "ServiceMonitor": "monitoring.coreos.com/v1" if options.api.service_monitor else None,
        "NetworkPolicy": "networking.k8s.io/v1",
    }.get(kind)


def child_name(model: Model, kind: str) -> str:
    return cronjob_name(model) if kind == "CronJob" else model.name


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Render every child, apply what is wanted, delete what is not, then report."""
    cluster: Cluster = memo.cluster
    options: RenderOptions = memo.options
    delay: float = memo.config.retry_delay
    generation = meta.get("generation")
    try:
        model = Model.from_body(body)
        model = pin_registry_uri(cluster, body, model, memo)
        rendered = render_all(model, options)
    except SpecError as exc:
        refuse(cluster, body, "InvalidSpec", str(exc), delay)
    children = []
    with transient_errors_retry(delay):
        live = read(cluster, "apps/v1", "Deployment", model.name, model.namespace)
        # As the API server has it now: the event's body may predate the last status write.
        current = read(cluster, *MODEL, model.name, model.namespace) or {}
        previous = (current.get("status") or {}).get("rollout")
        step = plan(model, serving_version(live), previous)
        if (
            step.status is not None
            and previous
            and all(step.status.get(k) == previous.get(k) for k in ("incumbent", "candidate"))
        ):
            # The comparison the timer read (rollout_watch.py) stays with its rollout.
            for key in ("comparison", "comparisonError"):
                if previous.get(key) is not None:
                    step.status[key] = previous[key]
        for kind, manifest in rendered.items():
            if step.keep_incumbent and kind in INCUMBENT_KINDS and manifest is not None:
                # The incumbent serves on as it is: its pods, and the ConfigMap they mount.
                name = manifest["metadata"]["name"]
                children.append({"apiVersion": manifest["apiVersion"], "kind": kind, "name": name})
                continue
            if manifest is None:
                api_version = api_version_of(kind, options)
                if api_version is not None:
                    name = child_name(model, kind)
                    cluster.delete_owned(api_version, kind, name, model.namespace, meta["uid"])
                continue
            kopf.append_owner_reference(manifest, owner=body)
            try:
                cluster.apply(manifest)
            except ApiException as exc:
                if exc.status in (400, 422):
                    message = f"model '{model.name}': the API server refused the {kind}: "
                    refuse(cluster, body, "InvalidManifest", message + api_message(exc), delay)
                raise
            name = manifest["metadata"]["name"]
            children.append({"apiVersion": manifest["apiVersion"], "kind": kind, "name": name})
        if step.keep_incumbent and live is not None:
            # The incumbent's pods send the running candidate its share; not after an abort.
            ops = incumbent_patch(live, model, sending=step.candidate)
            if ops is not None:
                deployment = ("apps/v1", "Deployment")
                cluster.json_patch(deployment, model.name, model.namespace, ops)
        children += reconcile_candidate(cluster, body, model, options, step.candidate)
        write_status(
            cluster,
            model.namespace,
            model.name,
            extra={"observedGeneration": generation, "children": children, "rollout": step.status},
        )
        if step.clear_action:
            # Acted on once: left in the spec, it would act on the next version too. After
            # the status, so that the reconcile this change starts reads what was done.
            patch = {"spec": {"rollout": {"action": None}}}
            cluster.merge_patch(MODEL, model.name, model.namespace, patch)


# The candidate's kinds and the API versions they are deleted at.
CANDIDATE_KINDS = {
    "ConfigMap": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


def reconcile_candidate(
    cluster: Cluster, body: kopf.Body, model: Model, options: RenderOptions, wanted: bool
) -> list[dict[str, str]]:
    """Apply the rollout's candidate when it is wanted, else delete any; its children."""
    rendered = render_candidate(model, options) if wanted else dict.fromkeys(CANDIDATE_KINDS)
    children = []
    for kind, manifest in rendered.items():
        if manifest is None:
            candidate = candidate_model(model)
            name = config_name(candidate) if kind == "ConfigMap" else candidate_name(model)
            uid = body["metadata"]["uid"]
            cluster.delete_owned(CANDIDATE_KINDS[kind], kind, name, model.namespace, uid)
            continue
        kopf.append_owner_reference(manifest, owner=body)
        cluster.apply(manifest)
        name = manifest["metadata"]["name"]
        children.append({"apiVersion": manifest["apiVersion"], "kind": kind, "name": name})
    return children


def read(
    cluster: Cluster, api_version: str, kind: str, name: str, namespace: str
) -> dict[str, Any] | None:
    """An object as the API server has it; None when there is none."""
    try:
        return cluster.resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def refuse(cluster: Cluster, body: kopf.Body, reason: str, message: str, delay: float) -> NoReturn:
    """Mark the Model failed for this generation and stop: retrying cannot fix a spec."""
    kopf.warn(body, reason=reason, message=message)
    generation = body["metadata"].get("generation")
    with transient_errors_retry(delay):
        wanted = failed_status(body.get("status") or {}, generation, reason, message)
        cluster.patch_status(MODEL, body["metadata"]["name"], body["metadata"]["namespace"], wanted)
    raise kopf.PermanentError(message)


def write_status(
    cluster: Cluster, namespace: str, name: str, extra: dict[str, Any] | None = None
) -> None:
    """Bring the Model's status in line with its Deployment, as read after the Model, so
    that a write based on an older Deployment loses the resourceVersion race."""
    models = cluster.resource(*MODEL)
    deployments = cluster.resource("apps/v1", "Deployment")
    for _attempt in range(STATUS_ATTEMPTS):
        try:
            model = models.get(name=name, namespace=namespace).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        status = model.get("status") or {}
        generation = model["metadata"].get("generation")
        if extra is None and failed_for(status, generation):
            return
        try:
            deployment = deployments.get(name=name, namespace=namespace).to_dict()
        except ApiException as exc:
            if exc.status != 404:
                raise
            deployment = None
        stalled = rollout_stalled(deployment) is not None
        problems = pod_problems(cluster, namespace, deployment) if stalled else []
        wanted = {**serving_status(status, generation, deployment, problems), **(extra or {})}
        rollout = wanted.get("rollout", status.get("rollout"))
        if rollout and rollout.get("phase") == "Running":
            candidate = read(cluster, "apps/v1", "Deployment", name + CANDIDATE_SUFFIX, namespace)
            ready = deployment_readiness(candidate)[3]
            wanted["rollout"] = {**rollout, "candidateReadyReplicas": ready}
        elif rollout and "candidateReadyReplicas" in (status.get("rollout") or {}):
            # A merge patch keeps keys it does not name: the ended candidate's count goes.
            wanted["rollout"] = {**rollout, "candidateReadyReplicas": None}
        if not changed(status, wanted):
            return
        try:
            version = model["metadata"]["resourceVersion"]
            cluster.patch_status(MODEL, name, namespace, wanted, resource_version=version)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise kopf.TemporaryError(f"model '{name}': status kept changing; retrying", delay=1)


# At most this many pods are described in a stalled rollout's message.
MAX_POD_PROBLEMS = 3


def pod_problems(cluster: Cluster, namespace: str, deployment: dict[str, Any] | None) -> list[str]:
    """Why the Deployment's pods are not ready: container states and the last probe
    failure the kubelet reported, for the Model's status."""
    if deployment is None:
        return []
    selector = (deployment.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
    labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    try:
        pods = cluster.resource("v1", "Pod").get(namespace=namespace, label_selector=labels)
        events = cluster.resource("v1", "Event")
        found = []
        for pod in pods.to_dict().get("items") or []:
            status = pod.get("status") or {}
            conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
            if conditions.get("Ready") == "True" or pod["metadata"].get("deletionTimestamp"):
                continue
            name = pod["metadata"]["name"]
            states = []
            for container in status.get("containerStatuses") or []:
                state = container.get("state") or {}
                waiting, terminated = state.get("waiting"), state.get("terminated")
                last = (container.get("lastState") or {}).get("terminated")
                if waiting:
                    states.append(f"{container['name']} waiting: {waiting.get('reason')}")
                elif terminated:
                    states.append(f"{container['name']} exited: {terminated.get('reason')}")
                else:
                    states.append(f"{container['name']} running, not ready")
                if last and last.get("message"):
                    states.append(f"last exit: {last['message'].strip()[-300:]}")
            unhealthy = [
                e
                for e in events.get(
                    namespace=namespace, field_selector=f"involvedObject.name={name}"
                )
                .to_dict()
                .get("items")
                or []
                if e.get("reason") in ("Unhealthy", "Failed", "BackOff")
            ]
            if unhealthy:
                latest = max(unhealthy, key=lambda e: e.get("lastTimestamp") or "")
                states.append(str(latest.get("message", "")).strip()[:300])
            found.append(f"pod {name}: " + ", ".join(states or ["not ready"]))
            if len(found) >= MAX_POD_PROBLEMS:
                break
        return found
    except ApiException as exc:
        # Without permission to read pods or events, the status still says it stalled.
        return [f"pods not described ({exc.status} {exc.reason})"]


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(body: kopf.Body, memo: kopf.Memo, event: kopf.RawEvent, **_: Any) -> None:
    """A Deployment's rollout or readiness moved: the Model's status follows."""
    if event.get("type") == "DELETED":
        return
    owner = next(
        (
            ref
            for ref in body["metadata"].get("ownerReferences") or []
            if ref.get("kind") == KIND and ref.get("apiVersion") == MODEL[0]
        ),
        None,
    )
    if owner is None:
        return
    with transient_errors_retry(memo.config.retry_delay):
        write_status(memo.cluster, body["metadata"]["namespace"], owner["name"])
