"""Model resources the operator tests render and apply: small, and covering every branch."""

from __future__ import annotations

from typing import Any

from modelyard_operator.registry import pinned_spec
from modelyard_operator.render import ApiVersions, RenderOptions

# A cluster that serves the current API versions and the Prometheus Operator's CRDs.
CURRENT = RenderOptions(api=ApiVersions(service_monitor=True))
# Kubernetes 1.20, as the test API server is.
V1_20 = RenderOptions(
    api=ApiVersions(
        hpa="autoscaling/v2beta2", cronjob="batch/v1beta1", pdb="policy/v1beta1", indexed_jobs=False
    )
)

MINIMAL: dict[str, Any] = {
    "version": "1",
    "runtime": "sklearn",
    "model": {"uri": "s3://models/iris/model.joblib"},
}

FULL: dict[str, Any] = {
    "name": "gender",
    "version": "0.0.1",
    "runtime": "predictor",
    "predictor": "profiles.gender:GenderPredictor",
    "model": {
        "uri": "gs://models/gender/",
        "sha256": "ab" * 32,
        "versions": {"scikit-learn": "1.9.1"},
    },
    "inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [-1]}],
    "features": {
        "sql": "features.sql",
        "source": "${FEATURES_DB_URL}",
        "key": "user_id",
    },
    "predictions": {
        "columns": {"user_id": "BYTES", "male_percentile": "FP32"},
        "schedule": "0 3 * * *",
        "store": "${PREDICTIONS_DB_URL}",
        "shards": 4,
    },
    "serving": {"max_batch_size": 32, "max_batch_time_ms": 2, "workers": 2},
    "deployment": {
        "replicas": {"min": 3, "max": 10},
        "resources": {
            "cpu": "2",
            "memory": "32Gi",
            # GKE's label, named by the Model over the operator's default.
            "gpu": {
                "type": "nvidia-tesla-t4",
                "count": 1,
                "nodeLabel": "cloud.google.com/gke-accelerator",
            },
        },
        "autoscaling": {"metric": "cpu", "target": 70},
        "nodeSelector": {"pool": "inference"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
        ],
        "environments": {"staging": {"replicas": {"min": 1, "max": 2}}},
    },
    "image": "registry.example.com/profiles:2024.1",
    "secretEnv": {
        "FEATURES_DB_URL": {"secret": "profiles-db", "key": "features-url"},
        "PREDICTIONS_DB_URL": {"secret": "profiles-db", "key": "predictions-url"},
    },
}

INFLIGHT: dict[str, Any] = {
    "version": "2024-05-01",
    "runtime": "xgboost",
    "model": {"uri": "https://models.example.com/churn/model.ubj"},
    "deployment": {
        "replicas": {"min": 2, "max": 8},
        "resources": {"memory": "2Gi"},
        "autoscaling": {"metric": "requests-in-flight", "target": 4},
    },
}

# Inference tokens, client certificates, TLS and the admin token, each from a Secret.
SECURED: dict[str, Any] = {
    **MINIMAL,
    "adminTokenSecret": {"secret": "iris-admin", "key": "token"},
    "auth": {
        "inferenceTokenSecret": {"secret": "iris-callers", "key": "tokens"},
        "clientCASecret": {"secret": "iris-client-ca", "key": "ca.crt"},
    },
    "tls": {"secret": "iris-tls"},
}

# A canary rollout of an autoscaled Model: the candidate's own Deployment, ConfigMap,
# Service and NetworkPolicy (tests/operator/golden/rollout-candidate.yaml).
ROLLOUT: dict[str, Any] = {
    **INFLIGHT,
    "rollout": {"mode": "canary", "weight": 20, "sticky_by": {"header": "x-user-id"}},
}

# A folder with its own requirements, built in an init container from the operator's
# index (tests/operator/golden/build-environment.yaml).
BUILD_ENVIRONMENT: dict[str, Any] = {
    "version": "3",
    "runtime": "predictor",
    "predictor": "predictor.py:Scorer",
    "folder": "s3://models/scorer/",
    "python": {"requirements": "deps.txt"},
    "buildEnvironment": True,
}
# An MLflow model named by a registry alias, with the credentials of its tracking server.
REGISTRY: dict[str, Any] = {
    "version": "1",
    "runtime": "mlflow",
    "model": {"uri": "models:/churn@champion"},
    "mlflow": {"trackingUri": "http://mlflow.mlflow:5000", "credentialsSecret": "mlflow-reader"},
}
# What the operator renders once status.registry pins version 3 (registry.pinned_spec).
REGISTRY_PIN: dict[str, Any] = {
    "uri": "models:/churn@champion",
    "trackingUri": "http://mlflow.mlflow:5000",
    "pinned": "models:/churn/3",
    "version": "3",
}

# The operator's index for environment builds (the chart's models.environmentIndexUrl).
WITH_INDEX = RenderOptions(
    api=ApiVersions(service_monitor=True),
    environment_index_url="https://pypi.internal.example.com/simple",
)

# name -> (resource name, spec, options)
GOLDEN: dict[str, tuple[str, dict[str, Any], RenderOptions]] = {
    "minimal": ("iris", MINIMAL, CURRENT),
    "full": ("gender", FULL, CURRENT),
    "full-staging": ("gender", {**FULL, "environment": "staging"}, CURRENT),
    "inflight": ("churn", INFLIGHT, CURRENT),
    "secured": ("iris", SECURED, CURRENT),
    "build-environment": ("scorer", BUILD_ENVIRONMENT, WITH_INDEX),
    "registry-pinned": ("churn", pinned_spec(REGISTRY, REGISTRY_PIN), CURRENT),
    "full-v1.20": (
        "gender",
        {**FULL, "predictions": {**FULL["predictions"], "shards": 1}},
        V1_20,
    ),
}
