"""The operator's only contact with the API server: discovery, server-side apply with
one field manager, and removal of children a Model no longer wants."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kopf
import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient, Resource
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from modelyard_operator.render import ApiVersions

FIELD_MANAGER = "modelyard-operator"
# API errors worth retrying: conflicts, throttling and server-side trouble.
TRANSIENT = {409, 429, 500, 502, 503, 504}


def api_client() -> client.ApiClient:
    """In a cluster: the pod's service account. Elsewhere: $KUBECONFIG, read now."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


def api_message(exc: ApiException) -> str:
    """The API server's own explanation of a refusal."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)


@contextmanager
def transient_errors_retry(delay: float) -> Iterator[None]:
    """API trouble that may pass becomes a kopf retry; anything else propagates."""
    try:
        yield
    except ApiException as exc:
        if exc.status in TRANSIENT:
            message = f"API server answered {exc.status}: {exc.reason}"
            raise kopf.TemporaryError(message, delay) from exc
        raise
    except urllib3.exceptions.HTTPError as exc:
        raise kopf.TemporaryError(f"API server unreachable: {exc}", delay) from exc


@dataclass
class Cluster:
    api: client.ApiClient
    dynamic: DynamicClient = field(init=False)
    _resources: dict[tuple[str, str], Resource] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.dynamic = DynamicClient(self.api)

    def resource(self, api_version: str, kind: str) -> Resource:
        key = (api_version, kind)
        if key not in self._resources:
            self._resources[key] = self.dynamic.resources.get(api_version=api_version, kind=kind)
        return self._resources[key]

    def serves(self, api_version: str, kind: str) -> bool:
        try:
            self.resource(api_version, kind)
        except ResourceNotFoundError:
            return False
        return True

    def api_versions(self) -> ApiVersions:
        """The newest version of each API the cluster serves, as the renderers need."""

        def newest(kind: str, *versions: str) -> str:
            found = next((v for v in versions if self.serves(v, kind)), None)
            if found is None:
                raise RuntimeError(f"the cluster serves none of {versions} for {kind}")
            return found

        version = client.VersionApi(self.api).get_code()
        minor = int("".join(ch for ch in version.minor if ch.isdigit()) or 0)
        return ApiVersions(
            hpa=newest("HorizontalPodAutoscaler", "autoscaling/v2", "autoscaling/v2beta2"),
            cronjob=newest("CronJob", "batch/v1", "batch/v1beta1"),
            pdb=newest("PodDisruptionBudget", "policy/v1", "policy/v1beta1"),
            indexed_jobs=(int(version.major), minor) >= (1, 22),
            service_monitor=self.serves("monitoring.coreos.com/v1", "ServiceMonitor"),
        )

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply; the operator owns what it renders, so it forces conflicts."""
        resource = self.resource(manifest["apiVersion"], manifest["kind"])
        applied = resource.server_side_apply(
            body=manifest, field_manager=FIELD_MANAGER, force_conflicts=True
        )
        return applied.to_dict()

    def delete_owned(
        self, api_version: str, kind: str, name: str, namespace: str, uid: str
    ) -> bool:
        """Delete a child the owner no longer wants; never something it does not own."""
        resource = self.resource(api_version, kind)
        try:
            existing = resource.get(name=name, namespace=namespace).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        owners = existing["metadata"].get("ownerReferences") or []
        if not any(ref.get("uid") == uid for ref in owners):
            return False
        try:
            resource.delete(name=name, namespace=namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
        return True

    def merge_patch(
        self, resource: tuple[str, str], name: str, namespace: str, body: dict[str, Any]
    ) -> None:
        """A JSON merge patch of an object (None values remove keys)."""
        self._patch(resource, name, namespace, body, "application/merge-patch+json")

    def json_patch(
        self, resource: tuple[str, str], name: str, namespace: str, ops: list[dict[str, Any]]
    ) -> None:
        """A JSON patch (RFC 6902) of an object: its `test` ops make it all or nothing."""
        self._patch(resource, name, namespace, ops, "application/json-patch+json")

    def _patch(
        self, resource: tuple[str, str], name: str, namespace: str, body: Any, content_type: str
    ) -> None:
        self.dynamic.patch(
            self.resource(*resource),
            body=body,
            name=name,
            namespace=namespace,
            content_type=content_type,
        )

    def patch_status(
        self,
        resource: tuple[str, str],
        name: str,
        namespace: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        """Merge `status` in; with `resource_version`, only if nobody wrote since (else 409)."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        self.dynamic.patch(
            self.resource(*resource).subresources["status"],
            body=body,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )
