"""The Helm chart, through Helm's own Go SDK (helm_python): lint, values schema, strict
Kubernetes schemas of every template, and a real install, upgrade and uninstall on a
Kubernetes API server of its own, with the operator running under the chart's
ServiceAccount token: what it needs is granted, what it does not is forbidden."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import requests
import yaml
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes import config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from modelyard_operator import crd
from modelyard_operator.config import OperatorConfig
from modelyard_operator.render import RENDERERS

from tests.support.kube import KubeCluster, ensure_binaries, wait_for
from tests.support.server import REPO, free_port

CHART = REPO / "charts" / "modelyard"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
RELEASE, NAMESPACE = "modelyard", "modelyard"
EXAMPLE = REPO / "examples" / "iris" / "k8s" / "iris.yaml"
LABELS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/part-of=modelyard"

# Every optional value set, differently from the defaults.
CUSTOM: dict[str, Any] = {
    "crds": {"create": False},
    "operator": {
        "image": {"repository": "registry.example.com/ml/operator", "tag": "2.0.1"},
        "imagePullSecrets": [{"name": "regcred"}],
        "watchNamespaces": ["team-a", "team-b"],
        "retryDelay": 2.5,
        "verbose": True,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": 1}},
        "podLabels": {"team": "ml-platform"},
        "podAnnotations": {"example.com/scrape": "false"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["x"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "platform",
    },
    "serviceAccount": {"name": "modelyard-operator", "annotations": {"iam.example.com/role": "r"}},
    "models": {
        "image": "registry.example.com/ml/modelyard:2.0.1",
        "storageInitializerImage": "registry.example.com/ml/storage-initializer:1",
        "gpuResource": "amd.com/gpu",
        "gpuNodeLabel": "example.com/accelerator",
        "inflightMetric": "inflight_requests",
        "defaultResources": {"cpu": "250m", "memory": "512Mi"},
        "networkPolicy": {
            "enabled": True,
            "from": [{"podSelector": {"matchLabels": {"role": "gateway"}}}],
            "monitoringNamespace": "prometheus",
        },
    },
    "monitoring": {
        "dashboards": {"enabled": True, "labels": {"grafana_dashboard": "1"}, "namespace": "obs"},
        "rules": {"enabled": True, "labels": {"release": "prometheus"}},
    },
}


def rendered(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for name, text in sorted(files.items())
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# -- without a cluster -------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["defaults", "custom"])
def test_lint_strict(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert (problems, report["errors"]) == ([], [])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"watchNamespaces": "team-a"}}, "watchNamespaces"),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "watchNamespaces/0"),
        ({"operator": {"retryDelay": 0}}, "retryDelay"),
        ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
        ({"crds": {"craete": True}}, "craete"),
        ({"models": {"image": "not an image"}}, "models/image"),
        ({"operator": {"resources": {"requests": {"memory": "lots"}}}}, "memory"),
        ({"monitoring": {"rules": {"enabled": "yes"}}}, "rules/enabled"),
    ],
)
def test_a_wrong_value_is_refused_naming_it(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
        with pytest.raises(helm.HelmValuesError, match=message):
            chart.validate_schema(merged)
    # helm install and helm lint refuse it the same way.
    report = helm.lint(CHART, values, strict=True)
    assert any(message in e for e in report["errors"]), report


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["defaults", "custom"])
def test_every_template_validates_strictly(values: dict[str, Any] | None, tmp_path: Path) -> None:
    docs = rendered(values, chart_with_monitoring_files(tmp_path))
    assert docs
    for doc in docs:
        if doc["kind"] == "PrometheusRule":  # the Prometheus Operator's, not Kubernetes'
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_installed_crd_is_the_operators() -> None:
    (installed,) = by_kind(rendered(), "CustomResourceDefinition")
    assert installed["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert installed == crd.crd()
    assert not by_kind(rendered({"crds": {"create": False}}), "CustomResourceDefinition")


def test_values_reach_the_operator() -> None:
    docs = rendered(CUSTOM)
    (deployment,) = by_kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/ml/operator:2.0.1"
    assert container["args"][-4:] == [
        "--namespace=team-a", "--namespace=team-b", "-m", "modelyard_operator.handlers"
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODELYARD_OPERATOR_IMAGE"] == CUSTOM["models"]["image"]
    assert env["MODELYARD_OPERATOR_INFLIGHT_METRIC"] == "inflight_requests"
    assert env["MODELYARD_OPERATOR_RETRY_DELAY"] == "2.5"
    # The Models' defaults reach the renderers as the operator reads them.
    config = OperatorConfig.from_env(env)
    assert (config.default_cpu, config.default_memory) == ("250m", "512Mi")
    assert config.network_policy and config.monitoring_namespace == "prometheus"
    assert json.loads(config.network_policy_from) == CUSTOM["models"]["networkPolicy"]["from"]
    # Ready once kopf serves its health endpoint (a Deployment without one is Ready at once).
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Watching two namespaces: granted in those two, not cluster-wide.
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert [b["metadata"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == [
        "modelyard-discovery"
    ]


def test_mlflow_values_reach_the_operator() -> None:
    mlflow = {"trackingUri": "http://mlflow.mlflow:5000", "credentialsSecret": "mlflow-reader"}
    (deployment,) = by_kind(rendered({"mlflow": {**mlflow, "pollSeconds": 30}}), "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow:5000"
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    assert OperatorConfig.from_env(values).registry_poll_seconds == 30
    # The credentials are a file (~/.mlflow/credentials, HOME being /tmp), not variables.
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "mlflow-credentials"]
    assert volume["secret"]["secretName"] == "mlflow-reader"
    assert volume["secret"]["items"] == [{"key": "credentials", "path": "credentials"}]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["mlflow-credentials"]["mountPath"] == "/tmp/.mlflow"
    assert env["HOME"]["value"] == "/tmp"
    # By default: no tracking server and no credentials, the default interval.
    (deployment,) = by_kind(rendered(), "Deployment")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {n for n in names if n.startswith("MLFLOW_")}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert "mlflow-credentials" not in {v["name"] for v in volumes}
    assert "MODELYARD_OPERATOR_REGISTRY_POLL_SECONDS" in names


def test_the_role_covers_every_kind_the_operator_renders() -> None:
    (role,) = [r for r in by_kind(rendered(), "ClusterRole") if r["metadata"]["name"] == RELEASE]
    plurals = {
        "ConfigMap": ("", "configmaps"),
        "Deployment": ("apps", "deployments"),
        "Service": ("", "services"),
        "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
        "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
        "CronJob": ("batch", "cronjobs"),
        "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors"),
        "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    }
    assert set(plurals) == set(RENDERERS)
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    for kind, key in plurals.items():
        assert {"get", "create", "patch"} <= granted[key], kind


def chart_with_monitoring_files(tmp: Path) -> Path:
    """The chart with a dashboard and a rules file, as the monitoring assets will be."""
    target = tmp / "modelyard"
    if not target.exists():
        shutil.copytree(CHART, target)
        dashboard = {"title": "Models", "panels": [], "schemaVersion": 39}
        (target / "files" / "dashboards" / "models.json").write_text(json.dumps(dashboard))
        rules = {
            "groups": [
                {
                    "name": "modelyard",
                    "rules": [
                        {
                            "alert": "ModelErrors",
                            "expr": "sum(rate(modelyard_rest_infer_requests{code=~'5..'}[5m])) > 0",
                            "annotations": {"summary": "{{ $labels.model }} fails"},
                        }
                    ],
                }
            ]
        }
        (target / "files" / "rules" / "models.yaml").write_text(yaml.safe_dump(rules))
    return target


def test_monitoring_assets_come_from_the_charts_files(tmp_path: Path) -> None:
    chart = chart_with_monitoring_files(tmp_path)
    assert not by_kind(rendered(None, chart), "PrometheusRule")
    docs = rendered(CUSTOM, chart)
    # The chart's own dashboards and rules are there too: pick the ones added here.
    (dashboard,) = [c for c in by_kind(docs, "ConfigMap") if "models.json" in c.get("data", {})]
    assert dashboard["metadata"]["namespace"] == "obs"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["models.json"])["title"] == "Models"
    (rule,) = [
        r for r in by_kind(docs, "PrometheusRule") if r["metadata"]["name"].endswith("-models")
    ]
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    # Alert templates reach Prometheus untouched by Helm's.
    annotations = rule["spec"]["groups"][0]["rules"][0]["annotations"]
    assert annotations["summary"] == "{{ $labels.model }} fails"


# -- on a Kubernetes API server ----------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """An API server of its own: the chart installs the Model CRD, which the operator
    tests' server has already."""
    with KubeCluster(tmp_path_factory.mktemp("kube-chart"), bin_dir=ensure_binaries()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def release(cluster: KubeCluster) -> Iterator[helm.Config]:
    core = k8s.CoreV1Api(cluster.client)
    for namespace in ("team-a", "team-b"):
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    with helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=NAMESPACE) as config:
        yield config


def service_account_kubeconfig(cluster: KubeCluster, path: Path) -> Path:
    """A kubeconfig holding a token of the chart's ServiceAccount, as its pod has."""
    core = k8s.CoreV1Api(cluster.client)
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token(RELEASE, NAMESPACE, request)
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": "admin", "user": {"token": token.status.token}}]
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


@contextmanager
def operator_as_deployed(
    cluster: KubeCluster, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[KopfRunner, int]]:
    """The operator with the installed Deployment's arguments and environment, logged in
    with the ServiceAccount's token; the liveness endpoint moves to a free port."""
    deployment = k8s.AppsV1Api(cluster.client).read_namespaced_deployment(RELEASE, NAMESPACE)
    container = deployment.spec.template.spec.containers[0]
    assert container.command == ["kopf", "run"]
    port = free_port()
    args = [
        f"--liveness=http://127.0.0.1:{port}/healthz" if a.startswith("--liveness=") else a
        for a in container.args
    ]
    for variable in container.env:
        monkeypatch.setenv(variable.name, variable.value)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with KopfRunner(["run", *args], timeout=30) as runner:
        yield runner, port
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def create_model(cluster: KubeCluster, namespace: str, body: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(cluster.client).create_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, body
    )


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


IRIS_CHILDREN = (
    ("v1", "ConfigMap", "iris-config"),
    ("apps/v1", "Deployment", "iris"),
    ("v1", "Service", "iris"),
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler", "iris"),
    ("policy/v1beta1", "PodDisruptionBudget", "iris"),
    ("networking.k8s.io/v1", "NetworkPolicy", "iris"),
)


def children(cluster: KubeCluster, namespace: str) -> dict[str, bool]:
    """Which of the iris example's children exist."""
    dynamic = DynamicClient(cluster.client)
    found = {}
    for api_version, kind, name in IRIS_CHILDREN:
        resource = dynamic.resources.get(api_version=api_version, kind=kind)
        try:
            resource.get(name=name, namespace=namespace)
            found[kind] = True
        except ApiException as exc:
            if exc.status != 404:
                raise
            found[kind] = False
    return found


def forbidden(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException as exc:
        return exc.status == 403
    return False


def no_permission_trouble(records: list[Any]) -> list[str]:
    return [
        r.getMessage() for r in records if "403" in r.getMessage() or "orbidden" in r.getMessage()
    ]


def test_install_grants_the_operator_what_it_needs_and_no_more(
    cluster: KubeCluster,
    release: helm.Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    installed = release.install(CHART, RELEASE, create_namespace=True, timeout=60)
    assert (installed["status"], installed["revision"]) == ("deployed", 1)
    assert "kubectl apply -f examples/iris/k8s/" in installed["notes"]
    ext = k8s.ApiextensionsV1Api(cluster.client)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(crd.CRD_NAME).status.conditions or []
        ),
        what="the chart's CRD to be established",
    )
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa-kubeconfig")
    model = example()
    with operator_as_deployed(cluster, kubeconfig, monkeypatch) as (_, port):
        create_model(cluster, "team-a", model)
        wait_for(lambda: all(children(cluster, "team-a").values()), what="iris children")
        custom = k8s.CustomObjectsApi(cluster.client)

        def status() -> dict[str, Any]:
            got = custom.get_namespaced_custom_object(
                crd.GROUP, crd.VERSION, "team-a", crd.PLURAL, "iris"
            )
            return got.get("status") or {}

        wait_for(lambda: len(status().get("children", [])) == 6, what="the Model's status")
        # A child the Model stops wanting is deleted by the operator itself.
        patch = {"spec": {"deployment": {"replicas": {"min": 1, "max": 5}}}}
        custom.patch_namespaced_custom_object(
            crd.GROUP, crd.VERSION, "team-a", crd.PLURAL, "iris", patch
        )
        wait_for(
            lambda: not children(cluster, "team-a")["PodDisruptionBudget"],
            what="the PodDisruptionBudget to be removed",
        )
        # A rollout's candidate is applied and, aborted, deleted with the same token.
        apps = k8s.AppsV1Api(cluster.client)

        def has_candidate() -> bool:
            names = [d.metadata.name for d in apps.list_namespaced_deployment("team-a").items]
            return "iris-candidate" in names

        for patch in (
            {"spec": {"version": "2", "rollout": {"mode": "shadow"}}},
            {"spec": {"rollout": {"action": "abort"}}},
        ):
            custom.patch_namespaced_custom_object(
                crd.GROUP, crd.VERSION, "team-a", crd.PLURAL, "iris", patch
            )
            wanted = "action" not in patch["spec"]["rollout"]
            wait_for(lambda w=wanted: has_candidate() == w, what=f"candidate present: {wanted}")
        # A Model it cannot run: marked failed, with an Event saying why.
        broken = copy.deepcopy(model)
        broken["metadata"]["name"] = "broken"
        del broken["spec"]["folder"]
        create_model(cluster, "team-a", broken)
        core = k8s.CoreV1Api(cluster.client)
        wait_for(
            lambda: [
                e for e in core.list_namespaced_event("team-a").items if e.reason == "InvalidSpec"
            ],
            what="an InvalidSpec Event",
        )
        failed = custom.get_namespaced_custom_object(
            crd.GROUP, crd.VERSION, "team-a", crd.PLURAL, "broken"
        )
        assert failed["status"]["phase"] == "Failed"
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    assert no_permission_trouble(caplog.records) == []

    # Nothing beyond what it manages: the same token may not read or delete secrets, run
    # pods or jobs, or touch other kinds of resources. (It may delete ConfigMaps,
    # Services and Deployments: a rollout's candidate goes once promoted or aborted.)
    sa = config.new_client_from_config(config_file=str(kubeconfig))
    core, batch = k8s.CoreV1Api(sa), k8s.BatchV1Api(sa)
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    job = {
        "metadata": {"name": "j"},
        "spec": {"template": pod | {"spec": {**pod["spec"], "restartPolicy": "Never"}}},
    }
    assert forbidden(lambda: core.list_namespaced_secret("team-a"))
    assert forbidden(lambda: core.create_namespaced_pod("team-a", pod))
    assert forbidden(lambda: batch.create_namespaced_job("team-a", job))
    assert forbidden(lambda: core.delete_namespaced_secret("iris-admin", "team-a"))
    assert forbidden(lambda: core.create_namespace({"metadata": {"name": "mine"}}))
    assert forbidden(lambda: core.list_namespace())  # needed only to watch some namespaces
    assert forbidden(lambda: k8s.RbacAuthorizationV1Api(sa).list_cluster_role_binding())
    assert forbidden(
        lambda: k8s.ApiextensionsV1Api(sa).delete_custom_resource_definition(crd.CRD_NAME)
    )


def installed_release(release: helm.Config) -> None:
    if not release.list(name_filter=f"^{RELEASE}$"):
        release.install(CHART, RELEASE, create_namespace=True, timeout=60)


def test_upgrade_to_watched_namespaces_then_uninstall(
    cluster: KubeCluster,
    release: helm.Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    installed_release(release)
    values = {"operator": {"watchNamespaces": ["team-b"], "retryDelay": 5}}
    upgraded = release.upgrade(CHART, RELEASE, values, timeout=60)
    assert upgraded["status"] == "deployed" and upgraded["revision"] >= 2
    rbac = k8s.RbacAuthorizationV1Api(cluster.client)
    bindings = rbac.list_role_binding_for_all_namespaces(label_selector=LABELS).items
    assert [(b.metadata.namespace, b.role_ref.name) for b in bindings] == [("team-b", RELEASE)]
    cluster_bindings = rbac.list_cluster_role_binding(label_selector=LABELS).items
    assert [b.metadata.name for b in cluster_bindings] == [f"{RELEASE}-discovery"]

    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa-kubeconfig")
    model = example()
    with operator_as_deployed(cluster, kubeconfig, monkeypatch):
        create_model(cluster, "team-b", model)
        wait_for(lambda: all(children(cluster, "team-b").values()), what="iris children")
    assert no_permission_trouble(caplog.records) == []
    # Granted in team-b only now.
    sa = config.new_client_from_config(config_file=str(kubeconfig))
    body = {"metadata": {"name": "x"}, "data": {}}
    assert forbidden(lambda: k8s.CoreV1Api(sa).create_namespaced_config_map("team-a", body))
    assert forbidden(lambda: k8s.CoreV1Api(sa).create_namespaced_config_map("default", body))

    release.uninstall(RELEASE, timeout=60)
    assert release.list(name_filter=f"^{RELEASE}$") == []
    apps = k8s.AppsV1Api(cluster.client)
    assert apps.list_namespaced_deployment(NAMESPACE, label_selector=LABELS).items == []
    assert rbac.list_cluster_role(label_selector=LABELS).items == []
    assert (
        k8s.CoreV1Api(cluster.client)
        .list_namespaced_service_account(NAMESPACE, label_selector=LABELS)
        .items
        == []
    )
    # The CRD, and so every Model, stays.
    k8s.ApiextensionsV1Api(cluster.client).read_custom_resource_definition(crd.CRD_NAME)
    custom = k8s.CustomObjectsApi(cluster.client)
    assert custom.get_namespaced_custom_object(crd.GROUP, crd.VERSION, "team-b", crd.PLURAL, "iris")


def test_an_existing_service_account_is_named() -> None:
    with pytest.raises(helm.HelmError, match=r"serviceAccount\.name: the existing ServiceAccount"):
        rendered({"serviceAccount": {"create": False}})
    docs = rendered({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert not by_kind(docs, "ServiceAccount")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    subjects = [s for b in by_kind(docs, "ClusterRoleBinding") for s in b["subjects"]]
    assert {s["name"] for s in subjects} == {"platform-operator"}
