"""The `Model` custom resource as the operator reads it.

`spec` is a model declaration (`model.yaml`) plus a few keys that only make sense on a
cluster (`environment`, `folder`, `image`, `secretEnv`). The CRD's schema already refused
what the declaration schema refuses; what is left here are the cross-field rules a
structural schema cannot say (v1.20 has no CEL) and the rules of running on a cluster:
whatever the declaration names must be fetched into the pod from somewhere remote.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelyard.declarations.load import overlay
from modelyard.serving.registry_uris import is_registry_uri

# Keys of the CR spec that are not part of the declaration.
OPERATOR_KEYS = (
    "environment", "folder", "image", "secretEnv", "adminTokenSecret", "networkPolicy",
    "auth", "tls", "buildEnvironment", "mlflow",
)  # fmt: skip
# modelyard.environments.REQUIREMENTS_FILENAME (a test holds them equal; not imported:
# the operator image has none of the build's dependencies).
REQUIREMENTS_FILENAME = "requirements.txt"
# Runtimes that load an artifact and so need model.uri.
ARTIFACT_RUNTIMES = ("sklearn", "xgboost", "lightgbm", "catboost", "mlflow", "onnx", "huggingface")
# The key of `rollout` that is the cluster's, not the server's.
ROLLOUT_ACTION = "action"
# Service names are DNS-1035 labels: a letter first.
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# CronJob names are capped at 52 characters (the controller appends an 11-char suffix).
CRONJOB_NAME_MAX = 52
CRONJOB_SUFFIX = "-batch"
# A rollout's candidate Deployment and Service are named '<name>-candidate'.
CANDIDATE_SUFFIX = "-candidate"
# Fetched whole and unpacked into the model folder by the storage initializer.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# https URLs the storage initializer lists like a bucket; any other http(s) URL is one file.
LISTABLE_HTTPS = re.compile(r"^https://[^/]+\.(blob|file)\.core\.windows\.net/")
# The tracking server registry URIs are resolved against when a Model names none: the
# operator's environment (the chart's mlflow.trackingUri).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# The key of spec.mlflow.credentialsSecret: an MLflow credentials file ([mlflow] with
# mlflow_tracking_username and mlflow_tracking_password), mounted as ~/.mlflow/credentials.
MLFLOW_CREDENTIALS_KEY = "credentials"


def is_remote(uri: str) -> bool:
    return "://" in uri


def is_archive(uri: str) -> bool:
    return uri.lower().endswith(ARCHIVE_SUFFIXES)


def is_prefix(uri: str) -> bool:
    """Whether a remote URI names a folder (fetched as its contents) rather than one file."""
    basename = uri.rstrip("/").rsplit("/", 1)[-1]
    return uri.endswith("/") or "." not in basename


def fetched_as_folder(uri: str) -> bool:
    """Whether fetching `uri` fills the model folder (a prefix or an unpacked archive)."""
    return is_prefix(uri) or is_archive(uri)


def is_single_file_url(uri: str) -> bool:
    return uri.startswith(("http://", "https://")) and not LISTABLE_HTTPS.match(uri)


class SpecError(ValueError):
    """A Model the operator cannot act on; the message names the field and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Replicas(_Frozen):
    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=1)


class Gpu(_Frozen):
    type: str | None = None
    count: int = Field(ge=1)
    # The node label `type` is matched against; None: the operator's (chart value).
    node_label: str | None = Field(default=None, alias="nodeLabel")


class Resources(_Frozen):
    cpu: str | None = None
    memory: str | None = None
    gpu: Gpu | None = None


class Autoscaling(_Frozen):
    metric: Literal["cpu", "memory", "requests-in-flight"]
    target: int = Field(ge=1)


class Toleration(_Frozen):
    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, alias="tolerationSeconds")


class Deployment(_Frozen):
    """The `deployment` block with the environment's overlay already merged in."""

    replicas: Replicas = Replicas()
    resources: Resources = Resources()
    autoscaling: Autoscaling | None = None
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: tuple[Toleration, ...] = ()


class Predictions(_Frozen):
    columns: dict[str, str]
    schedule: str | None = None
    store: str | None = None
    shards: int = Field(default=1, ge=1)
    # Read by `modelyard batch run`.
    outputs: dict[str, str | list[str]] | None = None
    keep_runs: int | None = Field(default=None, ge=1)
    export: dict[str, Any] | None = None


class Serving(_Frozen):
    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_time_ms: float | None = Field(default=None, ge=0)
    workers: int | None = Field(default=None, ge=0)
    max_message_mb: int | None = Field(default=None, ge=1)
    max_inflight_mb: int | None = Field(default=None, ge=1)


class Artifact(BaseModel):
    # Runtime parameters and library versions are the server's business: passed through.
    model_config = ConfigDict(frozen=True, extra="allow")

    uri: str | None = None


class Mlflow(_Frozen):
    """The MLflow tracking server a registry URI (model.uri) is resolved against."""

    # None: the operator's MLFLOW_TRACKING_URI (the chart's mlflow.trackingUri).
    tracking_uri: str | None = Field(default=None, alias="trackingUri", min_length=1)
    # A Secret whose `credentials` key is the MLflow credentials file the pods read the
    # registry with.
    credentials_secret: str | None = Field(default=None, alias="credentialsSecret", min_length=1)
    # None: the operator's (the chart's mlflow.pollSeconds).
    poll_seconds: int | None = Field(default=None, alias="pollSeconds", ge=1)


class SecretRef(_Frozen):
    secret: str = Field(min_length=1)
    key: str = Field(min_length=1)


class InferenceAuth(_Frozen):
    """Who may call inference (REST, gRPC, metrics): tokens and/or client certificates."""

    # A Secret key holding the allowed tokens, one a line (--inference-token-file).
    inference_token_secret: SecretRef | None = Field(default=None, alias="inferenceTokenSecret")
    # A Secret key holding the PEM CA that client certificates are signed by (--tls-client-ca).
    client_ca_secret: SecretRef | None = Field(default=None, alias="clientCASecret")


class TLS(_Frozen):
    """The ports' TLS: a kubernetes.io/tls Secret (its tls.crt and tls.key)."""

    secret: str = Field(min_length=1)


class NetworkPolicySpec(_Frozen):
    """A Model's own NetworkPolicy settings; unset fields take the operator's."""

    enabled: bool | None = None
    # NetworkPolicyPeers (namespaceSelector / podSelector) allowed on the serving ports.
    from_: tuple[dict[str, Any], ...] | None = Field(default=None, alias="from")
    monitoring_namespace: str | None = Field(default=None, alias="monitoringNamespace")


class ModelSpec(BaseModel):
    """What the operator reads from `spec`; other declaration keys (inputs, features,
    ...) are for the server and reach it through the ConfigMap untouched."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    name: str | None = None
    version: str
    runtime: Literal[
        "sklearn", "xgboost", "lightgbm", "catboost", "mlflow", "onnx", "huggingface",
        "predictor", "custom",
    ]  # fmt: skip
    predictor: str | None = None
    implementation: str | None = None
    model: Artifact = Artifact()
    predictions: Predictions | None = None
    serving: Serving = Serving()
    deployment: Deployment = Deployment()
    # The server's; `rollout.action` (promote or abort a candidate) is the cluster's.
    rollout: dict[str, Any] | None = None
    # Cluster-only keys.
    environment: str | None = None
    folder: str | None = None
    image: str | None = None
    # Build the folder's requirements environment in an init container (opt-in: the
    # cluster must reach a package index; `modelyard image` is the production path).
    build_environment: bool = Field(default=False, alias="buildEnvironment")
    secret_env: dict[str, SecretRef] = Field(default_factory=dict, alias="secretEnv")
    admin_token_secret: SecretRef | None = Field(default=None, alias="adminTokenSecret")
    auth: InferenceAuth = InferenceAuth()
    tls: TLS | None = None
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, alias="networkPolicy"
    )
    mlflow: Mlflow = Mlflow()

    @model_validator(mode="before")
    @classmethod
    def _merge_environment(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        deployment = dict(data.get("deployment") or {})
        environments = deployment.pop("environments", None) or {}
        environment = data.get("environment")
        if environment is not None:
            if environment not in environments:
                known = ", ".join(sorted(environments)) or "none"
                raise ValueError(
                    f"environment {environment!r} is not in deployment.environments "
                    f"(declared: {known})"
                )
            deployment = overlay(deployment, environments[environment])
        data["deployment"] = deployment
        return data

    @model_validator(mode="after")
    def _client_ca_over_tls(self) -> ModelSpec:
        if self.auth.client_ca_secret is not None and self.tls is None:
            raise ValueError(
                "auth.clientCASecret needs tls: client certificates are checked in the TLS "
                "handshake; set tls.secret to a kubernetes.io/tls Secret"
            )
        return self


@dataclass(frozen=True)
class Model:
    """One Model resource: its identity, its parsed spec and the declaration it carries."""

    name: str
    namespace: str
    spec: ModelSpec
    declaration: Mapping[str, Any] = field(repr=False)

    @property
    def model_name(self) -> str:
        """The V2 name: the declaration's, else the resource's."""
        return self.spec.name or self.name

    @property
    def rollout_action(self) -> str | None:
        """`spec.rollout.action`: what to do with the candidate (promote or abort)."""
        return (self.spec.rollout or {}).get(ROLLOUT_ACTION)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Model:
        metadata = body.get("metadata") or {}
        return cls.from_spec(
            metadata["name"], metadata.get("namespace") or "default", body.get("spec") or {}
        )

    @classmethod
    def from_spec(cls, name: str, namespace: str, spec: Mapping[str, Any]) -> Model:
        try:
            parsed = ModelSpec.model_validate(spec)
        except ValidationError as exc:
            raise SpecError(f"model '{name}': {_describe(exc)}") from None
        declaration = {k: v for k, v in spec.items() if k not in OPERATOR_KEYS}
        if isinstance(declaration.get("rollout"), Mapping):
            declaration["rollout"] = {
                k: v for k, v in declaration["rollout"].items() if k != ROLLOUT_ACTION
            }
        model = cls(name=name, namespace=namespace, spec=parsed, declaration=declaration)
        problems = list(model._problems())
        if problems:
            raise SpecError(f"model '{name}': " + "; ".join(problems))
        return model

    def _problems(self) -> list[str]:
        spec, problems = self.spec, []
        if not DNS_1035.match(self.name) or len(self.name) > 63:
            problems.append(
                f"resource name {self.name!r} must start with a letter, use only lowercase "
                "letters, digits and '-', and have at most 63 characters (it names a Service)"
            )
        if spec.runtime == "predictor" and not spec.predictor:
            problems.append("runtime predictor needs 'predictor' (file.py:Class or module:Class)")
        if spec.runtime == "custom" and not spec.implementation:
            problems.append("runtime custom needs 'implementation' (package.module.Class)")
        if spec.runtime in ARTIFACT_RUNTIMES and not spec.model.uri:
            problems.append(f"runtime {spec.runtime} needs model.uri")
        problems.extend(self._fetch_problems())
        problems.extend(self._deployment_problems())
        schedule = spec.predictions.schedule if spec.predictions else None
        if schedule:
            problems.extend(self._batch_problems())
        if schedule and len(self.name) + len(CRONJOB_SUFFIX) > CRONJOB_NAME_MAX:
            limit = CRONJOB_NAME_MAX - len(CRONJOB_SUFFIX)
            problems.append(
                f"resource name {self.name!r} is too long for a scheduled model: at most "
                f"{limit} characters (the CronJob is named '<name>{CRONJOB_SUFFIX}')"
            )
        if spec.rollout is not None and len(self.name) + len(CANDIDATE_SUFFIX) > 63:
            problems.append(
                f"resource name {self.name!r} is too long for a model with rollout: at most "
                f"{63 - len(CANDIDATE_SUFFIX)} characters (the candidate's Service is named "
                f"'<name>{CANDIDATE_SUFFIX}')"
            )
        return problems

    def _batch_problems(self) -> list[str]:
        """What `modelyard batch run` needs, checked before a CronJob fails every night."""
        problems: list[str] = []
        fix = "or remove predictions.schedule"
        if not self.declaration.get("features"):
            problems.append(f"predictions.schedule needs features (sql, source, key) {fix}")
        if not (self.spec.predictions and self.spec.predictions.store):
            problems.append(
                "predictions.schedule needs predictions.store, e.g. ${PREDICTIONS_DB_URL} "
                f"with secretEnv PREDICTIONS_DB_URL {fix}"
            )
        return problems

    @property
    def requirements_file(self) -> str:
        """The model folder's requirements file: python.requirements, else the bare one."""
        declared = (self.declaration.get("python") or {}).get("requirements")
        return declared if isinstance(declared, str) else REQUIREMENTS_FILENAME

    def folder_files(self) -> list[str]:
        """Declaration keys naming files of the model folder (other than model.uri)."""
        found = []
        predictor = self.spec.predictor or ""
        if self.spec.runtime == "predictor" and predictor.partition(":")[0].endswith(".py"):
            found.append(f"predictor {predictor}")
        features = self.declaration.get("features") or {}
        found += [
            f"features.{key} {features[key]}" for key in ("sql", "preprocess") if key in features
        ]
        return found

    @property
    def registry_uri(self) -> str | None:
        """model.uri when it names MLflow's registry (models:/, runs:/)."""
        uri = self.spec.model.uri
        return uri if is_registry_uri(uri) else None

    def tracking_uri(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The tracking server of a registry URI: the Model's, else the operator's."""
        environ = os.environ if environ is None else environ
        return self.spec.mlflow.tracking_uri or environ.get(TRACKING_URI_ENV) or None

    def has_remote_folder(self) -> bool:
        """Whether the pod's model folder is filled from a remote folder (not one file)."""
        uri = self.spec.model.uri
        return bool(self.spec.folder) or bool(uri and is_remote(uri) and fetched_as_folder(uri))

    def _fetch_problems(self) -> list[str]:
        """The pod starts with an empty model folder: whatever the declaration names
        must come from `folder` or a remote model.uri."""
        spec, problems = self.spec, []
        folder, uri = spec.folder, spec.model.uri
        where = f"folder: s3://bucket/{self.model_name}/ (or a .tar.gz of it over https)"
        if folder is not None:
            if not is_remote(folder):
                problems.append(
                    f"folder {folder!r} is a local path; give the URI the model folder was "
                    "uploaded to (s3://, gs://, azure, or an http(s) URL of a .tar.gz or .zip)"
                )
            elif is_single_file_url(folder) and not is_archive(folder):
                problems.append(
                    f"folder {folder!r} is one file over http(s), which cannot be listed; "
                    "serve the folder as a .tar.gz or .zip (unpacked at start) or use a bucket"
                )
        if is_registry_uri(uri) and self.tracking_uri() is None:
            problems.append(
                f"model.uri {uri!r} names MLflow's registry, and no tracking server is "
                "known to resolve it against: set spec.mlflow.trackingUri, or the operator's "
                "MLFLOW_TRACKING_URI (the chart value mlflow.trackingUri)"
            )
        if uri and not is_remote(uri) and not is_registry_uri(uri) and folder is None:
            problems.append(
                f"model.uri {uri!r} is a path in the model folder, which the pod fetches at "
                f"start: say where the folder is with {where}, or give model.uri a remote "
                "URI (s3://, gs://, https://, ...)"
            )
        if uri and is_remote(uri) and is_single_file_url(uri) and is_prefix(uri):
            problems.append(
                f"model.uri {uri!r} names a folder over http(s), which cannot be listed; "
                "serve it as a .tar.gz or .zip (unpacked at start) or use a bucket"
            )
        if spec.build_environment and not self.has_remote_folder():
            problems.append(
                f"buildEnvironment builds the model folder's {self.requirements_file}, "
                f"which the pod fetches at start: say where the folder is with {where}"
            )
        files = self.folder_files()
        if files and not self.has_remote_folder():
            problems.append(
                f"{' and '.join(files)} {'are files' if len(files) > 1 else 'is a file'} of "
                f"the model folder, which the pod fetches at start: say where it is with {where}"
            )
        return problems

    def _deployment_problems(self) -> list[str]:
        deployment, problems = self.spec.deployment, []
        replicas, scaling = deployment.replicas, deployment.autoscaling
        if replicas.max is not None and replicas.max < replicas.min:
            problems.append(
                f"deployment.replicas.max ({replicas.max}) is below min ({replicas.min})"
            )
        if scaling is not None:
            if replicas.max is None:
                problems.append("deployment.autoscaling needs deployment.replicas.max")
            if replicas.min < 1:
                problems.append("deployment.autoscaling needs deployment.replicas.min >= 1")
            needs = {"cpu": deployment.resources.cpu, "memory": deployment.resources.memory}
            if scaling.metric in needs and needs[scaling.metric] is None:
                problems.append(
                    f"autoscaling on {scaling.metric} is a percentage of the request: "
                    f"set deployment.resources.{scaling.metric}"
                )
        return problems


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"spec.{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)
