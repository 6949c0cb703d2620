"""The renderers against golden files and Kubernetes' own OpenAPI schemas.

Regenerate the golden files after a deliberate change with
`MODELYARD_UPDATE_GOLDEN=1 pytest tests/operator/test_render.py`, and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from modelyard_operator.config import ConfigError, OperatorConfig
from modelyard_operator.crd import declaration_schema
from modelyard_operator.registry import pinned_spec
from modelyard_operator.render import manifests, render_all
from modelyard_operator.render.common import CONFIG_HASH_ANNOTATION
from modelyard_operator.render.rollout import render_candidate
from modelyard_operator.spec import Model, SpecError

from modelyard.declarations.settings import model_settings, server_settings
from tests.operator.cases import (
    BUILD_ENVIRONMENT,
    CURRENT,
    FULL,
    GOLDEN,
    INFLIGHT,
    MINIMAL,
    REGISTRY,
    REGISTRY_PIN,
    ROLLOUT,
    SECURED,
    V1_20,
    WITH_INDEX,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
# The newest release kubernetes-validate knows: manifests must hold for a current cluster.
KUBERNETES_VERSION = kubernetes_validate.latest_version()
# Not part of Kubernetes' schemas; checked by the golden files only.
CRD_KINDS = {"ServiceMonitor"}


class GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's model.yaml) as literal blocks, for review."""


GoldenDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def model(name: str, spec: dict[str, Any], namespace: str = "ml") -> Model:
    return Model.from_spec(name, namespace, spec)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden(case: str) -> None:
    name, spec, options = GOLDEN[case]
    rendered = yaml.dump_all(
        manifests(model(name, spec), options), Dumper=GoldenDumper, sort_keys=False
    )
    golden = GOLDEN_DIR / f"{case}.yaml"
    if os.environ.get("MODELYARD_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"{golden} differs; see the module docstring"


@pytest.mark.parametrize("case", sorted(c for c, v in GOLDEN.items() if v[2] is CURRENT))
def test_manifests_validate_strictly(case: str) -> None:
    name, spec, options = GOLDEN[case]
    for manifest in manifests(model(name, spec), options):
        if manifest["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def candidate_manifests(spec: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = render_candidate(model("churn", spec), CURRENT).values()
    return [m for m in rendered if m is not None]


def test_candidate_golden() -> None:
    rendered = yaml.dump_all(candidate_manifests(ROLLOUT), Dumper=GoldenDumper, sort_keys=False)
    golden = GOLDEN_DIR / "rollout-candidate.yaml"
    if os.environ.get("MODELYARD_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"{golden} differs; see the module docstring"


def test_candidate_validates_strictly() -> None:
    for manifest in candidate_manifests(ROLLOUT):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_candidate_is_the_model_under_its_own_name() -> None:
    spec = {**ROLLOUT, "rollout": {**ROLLOUT["rollout"], "action": "abort"}}
    serving = render_all(model("churn", spec), CURRENT)
    candidate = render_candidate(model("churn", spec), CURRENT)
    names = {kind: m["metadata"]["name"] for kind, m in candidate.items() if m is not None}
    assert names == {
        "ConfigMap": "churn-candidate-config",
        "Deployment": "churn-candidate",
        "Service": "churn-candidate",
        "NetworkPolicy": "churn-candidate",
    }
    deployment = candidate["Deployment"]
    # Never selected by the Model's Service; its own Service selects it.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service_selector = serving["Service"]["spec"]["selector"]
    assert not all(pod_labels.get(k) == v for k, v in service_selector.items())
    assert candidate["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert candidate["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    # The incumbent's pods (the Model's Service's) may reach the candidate's REST port.
    incumbent_pods = serving["Deployment"]["spec"]["template"]["metadata"]["labels"]
    reach = [
        rule["ports"]
        for rule in candidate["NetworkPolicy"]["spec"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer
        and "namespaceSelector" not in peer
        and peer["podSelector"]["matchLabels"].items() <= incumbent_pods.items()
    ]
    assert reach == [[{"port": 8080, "protocol": "TCP"}]]
    # Fixed at the Model's min replicas (no autoscaler of its own), same pod resources.
    assert deployment["spec"]["replicas"] == 2
    assert "replicas" not in serving["Deployment"]["spec"]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert (
        server["resources"]
        == serving["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    )
    # The same V2 name; the candidate's pods run no rollout, and no pod sees `action`.
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/models/churn/ready"
    pod_declaration = yaml.safe_load(candidate["ConfigMap"]["data"]["model.yaml"])
    assert pod_declaration["name"] == "churn" and "rollout" not in pod_declaration
    incumbent_declaration = yaml.safe_load(serving["ConfigMap"]["data"]["model.yaml"])
    assert incumbent_declaration["rollout"] == ROLLOUT["rollout"]


def test_rollout_needs_room_for_the_candidate_name() -> None:
    with pytest.raises(SpecError, match="too long for a model with rollout: at most 53"):
        model("c" * 54, ROLLOUT)
    model("c" * 54, INFLIGHT)


def test_optional_children_follow_the_spec() -> None:
    plain = render_all(model("iris", MINIMAL), CURRENT)
    assert [k for k, m in plain.items() if m is None] == [
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CronJob",
    ]
    assert plain["Deployment"]["spec"]["replicas"] == 1
    full = render_all(model("gender", FULL), CURRENT)
    assert all(m is not None for m in full.values())
    # The autoscaler owns replicas; the operator never applies them.
    assert "replicas" not in full["Deployment"]["spec"]
    assert full["CronJob"]["spec"]["jobTemplate"]["spec"]["completionMode"] == "Indexed"


def test_environment_overlay() -> None:
    staging = render_all(model("gender", {**FULL, "environment": "staging"}), CURRENT)
    hpa = staging["HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    assert staging["PodDisruptionBudget"] is None  # one pod: a budget would block drains
    # Overlay keys replace; the rest of the base stays.
    resources = staging["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"memory": "32Gi", "nvidia.com/gpu": "1"}


def test_secrets_stay_out_of_the_configmap() -> None:
    rendered = render_all(model("gender", FULL), CURRENT)
    files = rendered["ConfigMap"]["data"]
    declaration = yaml.safe_load(files["model.yaml"])
    assert declaration["features"]["source"] == "${FEATURES_DB_URL}"
    assert "secretEnv" not in declaration and "deployment" not in declaration
    assert declaration["model"]["uri"] == "./"  # a prefix is fetched into the model folder
    settings = json.loads(files["model-settings.json"])
    assert settings["parameters"]["extra"]["predictions"]["store"] == "${PREDICTIONS_DB_URL}"
    env = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FEATURES_DB_URL", "valueFrom": {"secretKeyRef": {
        "name": "profiles-db", "key": "features-url"}}} in env  # fmt: skip


def test_configmap_holds_the_generated_settings() -> None:
    """model-settings.json and settings.json are `modelyard build`'s output for the
    pod's declaration, and the server's flags say what settings.json says."""
    rendered = render_all(model("gender", FULL), CURRENT)
    files = rendered["ConfigMap"]["data"]
    declaration = yaml.safe_load(files["model.yaml"])
    assert json.loads(files["model-settings.json"]) == model_settings(declaration)
    assert (
        json.loads(files["settings.json"])
        == server_settings(declaration)
        == {"parallel_workers": 2}
    )
    command = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--workers") + 1] == "2"
    mounts = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    # Each file is mounted over any copy that came with the fetched folder.
    assert {m["subPath"]: m["mountPath"] for m in mounts if m["name"] == "config"} == {
        key: f"/models/gender/{key}" for key in files
    }


S3_FILE = MINIMAL["model"]["uri"]


@pytest.mark.parametrize(
    ("folder", "uri", "fetched", "pod_uri"),
    [
        (None, S3_FILE, [S3_FILE], "model.joblib"),
        (None, "https://h/m.joblib?sig=1", ["https://h/m.joblib?sig=1"], "m.joblib"),
        (None, "gs://b/iris/", ["gs://b/iris/"], "./"),
        (None, "https://h/iris.tar.gz", ["https://h/iris.tar.gz"], "./"),
        # A folder with the artifact inside it: the declaration stays as on a laptop.
        ("s3://b/iris/", "m.joblib", ["s3://b/iris/"], "m.joblib"),
        # Both: the folder first, so the remote artifact lands over any copy in it.
        ("https://h/iris.zip", S3_FILE, ["https://h/iris.zip", S3_FILE], "model.joblib"),
    ],
)
def test_what_is_fetched_and_where_the_server_finds_it(
    folder: str | None, uri: str, fetched: list[str], pod_uri: str
) -> None:
    spec = {**MINIMAL, "model": {"uri": uri}, **({"folder": folder} if folder else {})}
    rendered = render_all(model("iris", spec), CURRENT)
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    assert [c["args"] for c in pod["initContainers"]] == [[u, "/models/iris"] for u in fetched]
    declaration = yaml.safe_load(rendered["ConfigMap"]["data"]["model.yaml"])
    assert declaration["model"]["uri"] == pod_uri


def test_a_model_with_nothing_to_fetch_has_no_init_container() -> None:
    spec = {"version": "1", "runtime": "predictor", "predictor": "profiles.gender:Gender"}
    pod = render_all(model("gender", spec), CURRENT)["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod


@pytest.mark.parametrize(
    ("cpu", "processes"), [(None, "1"), ("500m", "1"), ("2", "2"), ("2.5", "3"), ("16", "4")]
)
def test_server_processes_follow_the_cpu_request(cpu: str | None, processes: str) -> None:
    resources = {"cpu": cpu} if cpu else {}
    spec = {**MINIMAL, "deployment": {"resources": resources}}
    container = render_all(model("iris", spec), CURRENT)["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["command"][container["command"].index("--processes") + 1] == processes


def test_requests_in_flight_scale_on_the_servers_gauge() -> None:
    hpa = render_all(model("churn", INFLIGHT), CURRENT)["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {
                    "name": "modelyard_requests_in_flight",
                    "selector": {"matchLabels": {"model": "churn"}},
                },
                "target": {"type": "AverageValue", "averageValue": "4"},
            },
        }
    ]


def test_a_scheduled_no_code_model_gets_its_cronjob() -> None:
    spec = {
        **MINIMAL,
        "folder": "s3://models/iris/",
        "model": {"uri": "model.joblib"},
        "features": {"sql": "features.sql", "source": "${FEATURES_DB_URL}", "key": "id"},
        "predictions": {
            "columns": {"id": "BYTES", "label": "INT64", "p0": "FP64", "p1": "FP64"},
            "outputs": {"predict": "label", "predict_proba": ["p0", "p1"]},
            "store": "${PREDICTIONS_DB_URL}",
            "schedule": "0 3 * * *",
        },
    }
    cronjob = render_all(model("iris", spec), CURRENT)["CronJob"]
    assert cronjob is not None and cronjob["spec"]["schedule"] == "0 3 * * *"
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["modelyard", "batch", "run"]


def test_batch_runs_the_batch_command_on_every_shard() -> None:
    cronjob = render_all(model("gender", FULL), CURRENT)["CronJob"]
    job = cronjob["spec"]["jobTemplate"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    argv = [*container["command"], *container["args"]]
    assert argv == [
        "modelyard", "batch", "run", "/models/gender",
        "--run-id", "$(MODELYARD_RUN_ID)", "--shards", "4",
    ]  # fmt: skip
    # Kubernetes sets JOB_COMPLETION_INDEX in each pod of an Indexed Job; the run id is
    # the Job's name, shared by its pods.
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 4, 4)
    run_id = next(e for e in container["env"] if e["name"] == "MODELYARD_RUN_ID")
    assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['job-name']"


def test_declaration_change_rolls_the_pods() -> None:
    def config_hash(spec: dict[str, Any]) -> str:
        deployment = render_all(model("iris", spec), CURRENT)["Deployment"]
        return deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

    assert config_hash(MINIMAL) != config_hash({**MINIMAL, "version": "2"})
    # Cluster-only keys change the pod spec itself, not the declaration.
    assert config_hash(MINIMAL) == config_hash({**MINIMAL, "deployment": {"replicas": {"min": 4}}})


def test_shards_need_indexed_jobs() -> None:
    with pytest.raises(SpecError, match=r"shards needs Indexed Jobs \(Kubernetes 1.22\+\)"):
        render_all(model("gender", FULL), V1_20)


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        (
            "iris",
            {**MINIMAL, "model": {"uri": "model.joblib"}},
            r"is a path in the model folder.*folder: s3://bucket/iris/",
        ),
        ("iris", {**MINIMAL, "folder": "iris/"}, "folder 'iris/' is a local path"),
        ("iris", {**MINIMAL, "folder": "https://h/iris/"}, r"one file over http\(s\).*\.tar\.gz"),
        (
            "iris",
            {**MINIMAL, "model": {"uri": "https://h/iris/"}},
            r"names a folder over http\(s\)",
        ),
        (
            "gender",
            {**FULL, "predictor": "predictor.py:Gender", "model": {"uri": "s3://m/g/model.joblib"}},
            r"predictor predictor.py:Gender and features.sql features.sql are files of the model",
        ),
        (
            "iris",
            {**MINIMAL, "predictions": {"columns": {"x": "FP32"}, "schedule": "@daily"}},
            r"predictions.schedule needs features.*needs predictions.store",
        ),
        ("iris", {"version": "1", "runtime": "sklearn"}, "runtime sklearn needs model.uri"),
        ("p", {"version": "1", "runtime": "predictor"}, "runtime predictor needs 'predictor'"),
        ("c", {"version": "1", "runtime": "custom"}, "runtime custom needs 'implementation'"),
        ("1iris", MINIMAL, "must start with a letter"),
        ("iris", {**MINIMAL, "deployment": {"replicas": {"min": 3, "max": 2}}}, "below min"),
        (
            "iris",
            {**MINIMAL, "deployment": {"autoscaling": {"metric": "cpu", "target": 50}}},
            "needs deployment.replicas.max",
        ),
        (
            "iris",
            {
                **MINIMAL,
                "deployment": {
                    "replicas": {"min": 1, "max": 3},
                    "autoscaling": {"metric": "cpu", "target": 50},
                },
            },
            "set deployment.resources.cpu",
        ),
        ("gender", {**FULL, "environment": "prod"}, r"declared: staging"),
        ("iris", {**MINIMAL, "runtime": "cobol"}, r"spec.runtime: Input should be"),
        (
            "iris",
            {**MINIMAL, "auth": {"clientCASecret": {"secret": "ca", "key": "ca.crt"}}},
            r"auth.clientCASecret needs tls: .* set tls.secret to a kubernetes.io/tls Secret",
        ),
        ("x" * 47, {**FULL, "name": "g"}, "at most 46 characters"),
        (
            "iris",
            {**MINIMAL, "buildEnvironment": True},
            r"buildEnvironment builds the model folder's requirements.txt, .* with folder: s3://",
        ),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(
    name: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message) as refused:
        model(name, spec)
    assert str(refused.value).startswith(f"model '{name}': ")


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_the_pods_declaration_is_a_valid_declaration(case: str) -> None:
    name, spec, options = GOLDEN[case]
    configmap = render_all(model(name, spec), options)["ConfigMap"]
    assert configmap is not None
    declaration = yaml.safe_load(configmap["data"]["model.yaml"])
    validator = jsonschema.Draft202012Validator(declaration_schema())
    assert [e.message for e in validator.iter_errors(declaration)] == []


def test_the_rendered_commands_are_the_clis(tmp_path: Path) -> None:
    """The server's and the batch job's command lines parse with modelyard's own CLI."""
    from modelyard.commands.batch import batch
    from modelyard.commands.serve import serve

    rendered = render_all(model("gender", FULL), CURRENT)
    server = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert server[:2] == ["modelyard", "serve"]
    params = serve.make_context("serve", server[2:]).params
    assert (params["workers"], params["processes"], params["no_watch"]) == (2, "2", True)

    job = rendered["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    argv = [*job["command"], *job["args"]]
    assert argv[:3] == ["modelyard", "batch", "run"]
    # Kubernetes expands $(MODELYARD_RUN_ID) from the env; the folder exists in the pod.
    argv = [str(tmp_path) if a == "/models/gender" else a for a in argv[3:]]
    argv = ["20250101" if a == "$(MODELYARD_RUN_ID)" else a for a in argv]
    run = batch.get_command(click.Context(batch), "run")
    assert run is not None
    params = run.make_context("run", argv).params
    assert (params["run_id"], params["shards"]) == ("20250101", 4)


# -- security: the admin token, the NetworkPolicy, default resources ---------------------


def test_the_servers_budget_of_requests_in_flight_follows_the_declaration() -> None:
    from modelyard.commands.serve import serve

    def budget(spec: dict[str, Any]) -> int:
        deployment = render_all(model("iris", spec), CURRENT)["Deployment"]
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        return serve.make_context("serve", command[2:]).params["max_inflight_mb"]

    assert budget({**MINIMAL, "serving": {"max_inflight_mb": 32}}) == 32
    assert budget(MINIMAL) == 128  # the server's default


def test_the_admin_token_is_the_models_secret_mounted_for_its_flag() -> None:
    from modelyard.commands.serve import serve

    spec = {**MINIMAL, "adminTokenSecret": {"secret": "iris-admin", "key": "token"}}
    pod = render_all(model("iris", spec), CURRENT)["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    path = serve.make_context("serve", container["command"][2:]).params["admin_token_file"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    items = [{"key": "token", "path": path.name}]
    assert volume["secret"] == {"secretName": "iris-admin", "items": items, "defaultMode": 0o440}
    # A file, not a variable: the token is in no process's environment (CKV_K8S_35).
    assert all("valueFrom" not in e for e in container["env"])
    # Without one, no flag (and the server refuses the repository API).
    plain = render_all(model("iris", MINIMAL), CURRENT)["Deployment"]
    assert "--admin-token-file" not in plain["spec"]["template"]["spec"]["containers"][0]["command"]


def test_inference_auth_and_tls_are_secrets_mounted_for_the_servers_flags() -> None:
    from modelyard.commands.serve import serve

    rendered = render_all(model("iris", SECURED), CURRENT)
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    params = serve.make_context("serve", container["command"][2:]).params
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    def secret_of(path: Path) -> tuple[str, str]:
        """The Secret and key whose file the server reads at ``path``."""
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["defaultMode"] == 0o440  # the server's group (fsGroup) reads it
        (key,) = [i["key"] for i in secret["items"] if i["path"] == path.name]
        return secret["secretName"], key

    assert secret_of(params["admin_token_file"]) == ("iris-admin", "token")
    assert secret_of(params["inference_token_file"]) == ("iris-callers", "tokens")
    assert secret_of(params["tls_cert"]) == ("iris-tls", "tls.crt")
    assert secret_of(params["tls_key"]) == ("iris-tls", "tls.key")
    assert secret_of(params["tls_client_ca"]) == ("iris-client-ca", "ca.crt")
    # The kubelet probes over HTTPS, the model's readiness included (open to it).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/iris/ready"
    # Prometheus scrapes over HTTPS with a token the metrics port takes.
    (endpoint,) = rendered["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == "iris.ml.svc"
    assert endpoint["bearerTokenSecret"] == {"name": "iris-callers", "key": "tokens"}
    # Without them: no such flag, volume or scheme.
    plain = render_all(model("iris", MINIMAL), CURRENT)
    (container,) = plain["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["command"] if a.startswith(("--tls", "--inference"))]
    assert "scheme" not in container["readinessProbe"]["httpGet"]
    assert not [m for m in container["volumeMounts"] if m["mountPath"].startswith("/etc")]
    assert "scheme" not in plain["ServiceMonitor"]["spec"]["endpoints"][0]


def test_every_model_gets_a_network_policy_it_can_override() -> None:
    policy = render_all(model("iris", MINIMAL), CURRENT)["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"]["modelyard.io/model"] == "iris"
    serving, metrics = policy["spec"]["ingress"]
    assert [p["port"] for p in serving["ports"]] == [8080, 8081]
    labelled = {"matchLabels": {"modelyard.io/access": "true"}}
    assert serving["from"] == [{"namespaceSelector": labelled}, {"podSelector": labelled}]
    assert [p["port"] for p in metrics["ports"]] == [8082]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    peers = [{"podSelector": {"matchLabels": {"app": "shop"}}}]
    spec = {**MINIMAL, "networkPolicy": {"from": peers, "monitoringNamespace": "obs"}}
    own = render_all(model("iris", spec), CURRENT)["NetworkPolicy"]["spec"]["ingress"]
    assert own[0]["from"] == peers
    assert own[1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "obs"
    }
    # No peers: metrics only. Disabled by the Model, or by the operator: none at all.
    closed = {**MINIMAL, "networkPolicy": {"from": []}}
    assert len(render_all(model("iris", closed), CURRENT)["NetworkPolicy"]["spec"]["ingress"]) == 1
    off = {**MINIMAL, "networkPolicy": {"enabled": False}}
    assert render_all(model("iris", off), CURRENT)["NetworkPolicy"] is None
    no_policies = dataclasses.replace(CURRENT, network_policy=False)
    assert render_all(model("iris", MINIMAL), no_policies)["NetworkPolicy"] is None


def test_a_model_without_resources_gets_the_defaults() -> None:
    deployment = render_all(model("iris", MINIMAL), CURRENT)["Deployment"]
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    spec = {**MINIMAL, "deployment": {"resources": {"cpu": "2"}}}
    deployment = render_all(
        model("iris", spec), dataclasses.replace(CURRENT, default_memory="3Gi")
    )["Deployment"]
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}


def test_a_bad_network_policy_default_stops_the_operator() -> None:
    with pytest.raises(ConfigError, match="NETWORK_POLICY_FROM"):
        OperatorConfig.from_env({"MODELYARD_OPERATOR_NETWORK_POLICY_FROM": "{not json"})
    with pytest.raises(ConfigError, match="list of NetworkPolicy peers"):
        OperatorConfig.from_env({"MODELYARD_OPERATOR_NETWORK_POLICY_FROM": '{"a": 1}'})


# -- a model folder's own environment, built in an init container --------------------------


def test_the_environment_build_never_writes_the_model_folder_and_the_server_only_reads_it(
    tmp_path: Path,
) -> None:
    from modelyard.commands.envs import envs

    # Served, and scored on a schedule in the same environment (with Secrets to keep out).
    batch = {key: FULL[key] for key in ("features", "predictions", "secretEnv")}
    for kind in ("Deployment", "CronJob"):
        rendered = render_all(model("scorer", {**BUILD_ENVIRONMENT, **batch}), WITH_INDEX)[kind]
        assert rendered is not None
        pod = (
            rendered["spec"]["template"]["spec"]
            if kind == "Deployment"
            else (rendered["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        )
        *fetch, build = pod["initContainers"]
        assert [c["name"] for c in fetch] == ["fetch-folder"]  # the folder is there first
        (server,) = pod["containers"]
        # Another user than the server's, the model folder read-only.
        assert build["securityContext"]["runAsUser"] != pod["securityContext"]["runAsUser"]
        mounts = {m["name"]: m for m in build["volumeMounts"]}
        assert mounts["model"]["readOnly"] is True
        assert "tmp" not in mounts and "config" not in mounts  # not the server's /tmp
        # What it writes the server finds, read-only, where its variable says.
        envs_dir = {e["name"]: e["value"] for e in build["env"]}["MODELYARD_ENVS_DIR"]
        served = {m["name"]: m for m in server["volumeMounts"]}["envs"]
        assert (served["mountPath"], served["readOnly"]) == (envs_dir, True)
        assert {"name": "MODELYARD_ENVS_DIR", "value": envs_dir} in server["env"]
        # The operator's index, and no Secret of the Model reaches package build code.
        assert {"name": "MODELYARD_ENV_INDEX_URL",
                "value": WITH_INDEX.environment_index_url} in build["env"]  # fmt: skip
        assert all("valueFrom" not in e for e in build["env"])
    # The command is `modelyard envs build` of the declared requirements file.
    assert build["command"][:3] == ["modelyard", "envs", "build"]
    assert build["command"][3] == "/models/scorer/deps.txt"
    (tmp_path / "deps.txt").write_text("")
    built = envs.get_command(click.Context(envs), "build")
    assert built is not None
    assert built.make_context("build", [str(tmp_path / "deps.txt")]).params["folder"].is_file()


def test_the_operator_names_the_environments_variables_as_the_server_reads_them() -> None:
    from modelyard_operator.render import common
    from modelyard_operator.spec import REQUIREMENTS_FILENAME

    from modelyard import environments

    assert common.ENVS_DIR_VAR == environments.ENVS_DIR_VAR
    assert common.INDEX_URL_VAR == environments.INDEX_URL_VAR
    assert REQUIREMENTS_FILENAME == environments.REQUIREMENTS_FILENAME


def test_the_environment_build_is_opt_in_and_its_index_is_the_operators() -> None:
    plain = render_all(model("scorer", {**BUILD_ENVIRONMENT, "buildEnvironment": False}),
                       WITH_INDEX)["Deployment"]["spec"]["template"]["spec"]  # fmt: skip
    assert [c["name"] for c in plain["initContainers"]] == ["fetch-folder"]
    assert "envs" not in {v["name"] for v in plain["volumes"]}
    assert all(e["name"] != "MODELYARD_ENVS_DIR" for e in plain["containers"][0]["env"])
    # Without an index configured, uv's default (no variable at all).
    pod = render_all(model("scorer", BUILD_ENVIRONMENT), CURRENT)["Deployment"]
    build = pod["spec"]["template"]["spec"]["initContainers"][-1]
    assert all(e["name"] != "MODELYARD_ENV_INDEX_URL" for e in build["env"])
    config = OperatorConfig.from_env(
        {"MODELYARD_OPERATOR_ENVIRONMENT_INDEX_URL": "http://127.0.0.1:3141/simple"}
    )
    assert config.environment_index_url == "http://127.0.0.1:3141/simple"
    with pytest.raises(ConfigError, match="ENVIRONMENT_INDEX_URL"):
        OperatorConfig.from_env({"MODELYARD_OPERATOR_ENVIRONMENT_INDEX_URL": "pypi.org"})


def test_registry_uri_needs_a_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {**REGISTRY, "mlflow": {}}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    refusal = r"spec\.mlflow\.trackingUri, or .* \(the chart value mlflow\.trackingUri\)"
    with pytest.raises(SpecError, match=refusal):
        model("churn", spec)
    # The operator's own tracking server (the chart's mlflow.trackingUri) is enough, and
    # the pods are told it; a runs:/ URI is accepted too.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.mlflow:5000")
    for uri in ("models:/churn@champion", "models:/churn/Production", "runs:/0a1b/model"):
        found = model("churn", {**spec, "model": {"uri": uri}})
        assert found.registry_uri == uri
        deployment = render_all(found, CURRENT)["Deployment"]
        assert deployment is not None
        server = deployment["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.mlflow:5000"} in server[
            "env"
        ]
        # Nothing is fetched by the storage initializer: the server reads the registry.
        assert "initContainers" not in deployment["spec"]["template"]["spec"]


def test_pinned_spec_names_the_version_and_the_tracking_server() -> None:
    pinned = model("churn", pinned_spec(REGISTRY, REGISTRY_PIN))
    assert pinned.spec.model.uri == "models:/churn/3"
    assert pinned.spec.mlflow.tracking_uri == "http://mlflow.mlflow:5000"
    assert REGISTRY["model"]["uri"] == "models:/churn@champion"  # the spec is not changed
