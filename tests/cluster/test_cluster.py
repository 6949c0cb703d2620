"""A platform admin's whole path on a real single-node cluster: the chart installed, the
example Models applied with kubectl and served from S3, V2 over REST and gRPC from inside
the cluster and from outside it, a rollout under load, a broken version, the nightly
batch run in pods against PostgreSQL, an operator restart, GPU placement, garbage
collection, and a model folder's own packages (an image from `modelyard image`, and an
environment built by an init container). The tests run in this order, each on the state
the previous one left."""

from __future__ import annotations

import copy
import io
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import tritonclient.grpc as grpcclient
import yaml
from kubernetes import client as k8s
from modelyard_operator.crd import GROUP, PLURAL, VERSION

from modelyard.store.tables import RUN_COLUMN, RUNS_TABLE
from tests.cluster import v2_client
from tests.cluster.conftest import (
    BUCKET,
    NAMESPACE,
    PROGRESS_DEADLINE,
    RELEASE,
    SERVING_IMAGE,
    STORE_SECRET,
    SYSTEM_NAMESPACE,
    timed,
)
from tests.support.kube import wait_for
from tests.support.node import BRIDGE_IP, NODE_NAME, NodeCluster
from tests.support.postgres import PostgresServer
from tests.support.s3 import CREDENTIALS, S3Server
from tests.support.server import REPO, free_port
from tests.support.wheels import PROBE_LIB

EXAMPLES = {
    # Model name: (its example manifest, the folder uploaded to S3)
    "iris": (REPO / "examples/iris/k8s/iris.yaml", REPO / "model-settings/iris"),
    "breast-cancer": (
        REPO / "examples/breast-cancer/k8s/breast-cancer.yaml",
        REPO / "model-settings/breast-cancer",
    ),
    "gender": (
        REPO / "examples/customer-profile/k8s/gender.yaml",
        REPO / "examples/customer-profile",
    ),
}
# Left out of the uploaded folders: manifests, caches, local databases of a dev run.
SKIP = ("k8s", "__pycache__", "predictions.db", "labels", ".pytest_cache")
SERVER_LABELS = "app.kubernetes.io/component=server"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


# -- helpers ---------------------------------------------------------------------------


def upload(s3: S3Server, folder: Path, prefix: str, replace: dict[str, bytes] | None = None) -> str:
    """Upload a model folder's files to s3://BUCKET/prefix/; the folder URI."""
    s3.upload_folder(folder, BUCKET, prefix, skip=SKIP, replace=replace)
    return f"s3://{BUCKET}/{prefix}/"


def manifest(name: str, folder: str, **spec: Any) -> dict[str, Any]:
    """The example's Model, served from `folder`, with the store's credentials from the
    namespace's Secret, and CPU requests that fit a two-core node."""
    body = yaml.safe_load(EXAMPLES[name][0].read_text())
    body["metadata"]["namespace"] = NAMESPACE
    body["spec"]["folder"] = folder
    keys = [*CREDENTIALS, "AWS_ENDPOINT_URL"]
    if name == "gender":
        keys.append("PREDICTIONS_DB_URL")
    body["spec"]["secretEnv"] = {k: {"secret": STORE_SECRET, "key": k} for k in keys}
    body["spec"]["deployment"]["resources"]["cpu"] = "100m"
    body["spec"].update(spec)
    return body


def kubectl_apply(node: NodeCluster, body: dict[str, Any]) -> None:
    node.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))


def get_model(api: k8s.ApiClient, name: str) -> dict[str, Any]:
    return k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name
    )


def model_ready(api: k8s.ApiClient, name: str) -> bool:
    model = get_model(api, name)
    status = model.get("status") or {}
    return (
        status.get("phase") == "Ready"
        and status.get("observedGeneration") == model["metadata"]["generation"]
    )


def wait_ready(api: k8s.ApiClient, name: str, timeout: float = 420) -> float:
    began = time.monotonic()
    wait_for(lambda: model_ready(api, name), timeout, what=f"Model {name} Ready", interval=1)
    return time.monotonic() - began


def describe(node: NodeCluster, name: str) -> str:
    return node.kubectl("describe", "-n", NAMESPACE, "model,deployment,pods", "-l",
                        f"modelyard.io/model={name}", check=False)  # fmt: skip


def service_ip(api: k8s.ApiClient, name: str) -> str:
    return k8s.CoreV1Api(api).read_namespaced_service(name, NAMESPACE).spec.cluster_ip


def node_ports(api: k8s.ApiClient, model: str) -> tuple[int, int]:
    """A NodePort Service in front of the model's pods (made once): (http, grpc) ports."""
    core = k8s.CoreV1Api(api)
    name = f"{model}-nodeport"
    try:
        service = core.read_namespaced_service(name, NAMESPACE)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {
                "type": "NodePort",
                "selector": {"modelyard.io/model": model, "app.kubernetes.io/component": "server"},
                "ports": [
                    {"name": "http", "port": 8080, "targetPort": "http"},
                    {"name": "grpc", "port": 8081, "targetPort": "grpc"},
                ],
            },
        }
        service = core.create_namespaced_service(NAMESPACE, body)
    ports = {p.name: p.node_port for p in service.spec.ports}
    # Answering once kube-proxy has programmed the ports.
    request = v2_requests()["iris"] if model.startswith("iris") else None
    if request is not None:
        wait_for(
            lambda: _try(v2_client.rest, f"http://{BRIDGE_IP}:{ports['http']}", request),
            60,
            what=f"the NodePort of {model}",
            interval=0.5,
        )
    return ports["http"], ports["grpc"]


def pod_log(api: k8s.ApiClient, name: str, namespace: str = NAMESPACE, **kw: Any) -> str:
    """The log as text (the client would parse a JSON log into a Python object)."""
    response = k8s.CoreV1Api(api).read_namespaced_pod_log(
        name, namespace, _preload_content=False, **kw
    )
    return response.data.decode(errors="replace")


def run_pod(api: k8s.ApiClient, name: str, command: list[str], timeout: float = 180) -> str:
    """Run a pod of the serving image to completion; its log."""
    core = k8s.CoreV1Api(api)
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
            "containers": [
                {
                    "name": "client",
                    "image": SERVING_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                }
            ],
        },
    }
    core.create_namespaced_pod(NAMESPACE, body)

    def finished() -> str | None:
        phase = core.read_namespaced_pod(name, NAMESPACE).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, timeout, what=f"pod {name} to finish", interval=1)
    log = pod_log(api, name)
    assert phase == "Succeeded", f"pod {name} {phase}:\n{log}"
    return log


def v2_requests(expected_breast_cancer: list[Any] | None = None) -> dict[str, dict[str, Any]]:
    return {
        "iris": {
            "model": "iris",
            "input": {"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": IRIS_ROWS},
            "outputs": ["predict"],
        },
        "breast-cancer": {
            "model": "breast-cancer",
            "input": {
                "name": "input-0",
                "datatype": "FP32",
                "shape": [2, 30],
                "data": breast_cancer_rows(),
            },
            "outputs": ["predict"],
        },
        "gender": {
            "model": "gender",
            "input": {
                "name": "user_id",
                "datatype": "BYTES",
                "shape": [2],
                "data": ["u0000001", "nobody"],
            },
            "outputs": ["user_id", "male_percentile", "female_percentile", "missing"],
        },
    }


def breast_cancer_rows() -> list[list[float]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    # A malignant case (0) and a benign one (1).
    return [data.data[0].tolist(), data.data[19].tolist()]


def expected_breast_cancer() -> list[int]:
    import numpy as np
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(REPO / "model-settings/breast-cancer/model.ubj"))
    rows = np.array(breast_cancer_rows(), dtype=np.float32)
    return [int(p > 0.5) for p in booster.predict(xgboost.DMatrix(rows))]


def same(a: Any, b: Any) -> bool:
    # JSON has no NaN: MLServer writes it as null over REST.
    a = math.nan if a is None else a
    b = math.nan if b is None else b
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


def check_answers(answers: dict[str, Any]) -> None:
    """REST and gRPC agree, and the predictions are the models' own."""
    for key, protocols in answers.items():
        rest, grpc = protocols["rest"], protocols["grpc"]
        for output, values in rest["outputs"].items():
            assert all(map(same, values, grpc["outputs"][output])), (key, output, rest, grpc)
    assert answers["iris"]["rest"]["outputs"]["predict"] == [0, 2]
    assert answers["breast-cancer"]["rest"]["outputs"]["predict"] == expected_breast_cancer()
    gender = answers["gender"]["grpc"]["outputs"]
    assert gender["user_id"] == ["u0000001", "nobody"]
    assert gender["missing"] == [False, True]
    assert 0.0 <= gender["male_percentile"][0] <= 100.0


@pytest.fixture(scope="module")
def folders(s3: S3Server) -> dict[str, str]:
    return {
        "iris": upload(s3, EXAMPLES["iris"][1], "iris/1"),
        "iris-2": upload(s3, EXAMPLES["iris"][1], "iris/2"),
        "iris-broken": upload(
            s3, EXAMPLES["iris"][1], "iris/broken", {"model.joblib": b"not a pickle" * 100}
        ),
        "breast-cancer": upload(s3, EXAMPLES["breast-cancer"][1], "breast-cancer/1"),
        "gender": upload(s3, EXAMPLES["gender"][1], "customer-profile/0.1.0"),
    }


@pytest.fixture(scope="module")
def models(
    node: NodeCluster,
    api: k8s.ApiClient,
    release: dict[str, Any],
    namespace: str,
    folders: dict[str, str],
) -> dict[str, float]:
    """The three examples applied with kubectl; seconds each took to be Ready."""
    began = time.monotonic()
    for name in EXAMPLES:
        kubectl_apply(node, manifest(name, folders[name]))
    took = {}
    for name in EXAMPLES:
        try:
            wait_ready(api, name)
        except TimeoutError:
            raise AssertionError(describe(node, name)) from None
        took[name] = time.monotonic() - began
        timed(f"Model {name} Ready after kubectl apply", took[name])
    return took


# -- the tests ---------------------------------------------------------------------------


def test_the_operator_runs_in_the_cluster_as_the_charts_service_account(
    api: k8s.ApiClient, release: dict[str, Any]
) -> None:
    assert release["status"] == "deployed"
    pods = k8s.CoreV1Api(api).list_namespaced_pod(
        SYSTEM_NAMESPACE, label_selector="app.kubernetes.io/name=modelyard"
    )
    [pod] = [p for p in pods.items if p.status.phase == "Running"]
    assert pod.spec.service_account_name == RELEASE
    assert pod.spec.node_name == NODE_NAME
    assert all(c.ready for c in pod.status.container_statuses)


def test_the_examples_are_ready_through_their_probes(
    api: k8s.ApiClient, models: dict[str, float]
) -> None:
    core = k8s.CoreV1Api(api)
    for name in EXAMPLES:
        pods = core.list_namespaced_pod(
            NAMESPACE, label_selector=f"modelyard.io/model={name},{SERVER_LABELS}"
        ).items
        # The autoscaler holds each at its minimum, 2 (no metrics here to scale on).
        assert len([p for p in pods if p.status.phase == "Running"]) >= 2, name
        for pod in pods:
            # The folder came from S3 through the serving image's initializer.
            [init] = pod.status.init_container_statuses
            assert init.state.terminated.exit_code == 0
            log = pod_log(api, pod.metadata.name, container=init.name)
            assert f"s3://{BUCKET}/" in log and "file(s)" in log
            assert all(c.ready for c in pod.status.container_statuses)


def test_v2_from_a_pod_inside_the_cluster(
    node: NodeCluster, api: k8s.ApiClient, models: Any
) -> None:
    job = {
        key: {
            "host": service_ip(api, request["model"]),
            "http": 8080,
            "grpc": 8081,
            "request": request,
        }
        for key, request in v2_requests().items()
    }
    script = Path(v2_client.__file__).read_text()
    log = run_pod(api, "v2-client", ["python", "-c", script, json.dumps(job)])
    check_answers(json.loads(log.strip().splitlines()[-1]))


def test_v2_through_port_forward_and_a_node_port(
    node: NodeCluster, api: k8s.ApiClient, models: Any
) -> None:
    requests = v2_requests()
    # kubectl port-forward to each Service, as the README shows.
    answers = {}
    for key, request in requests.items():
        http_port, grpc_port = free_port(), free_port()
        forward = subprocess.Popen(
            [str(node.bin_dir / "kubectl"), f"--kubeconfig={node.kubeconfig}", "port-forward",
             "-n", NAMESPACE, f"svc/{request['model']}",
             f"{http_port}:8080", f"{grpc_port}:8081"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(
                partial(_listening, grpc_port), 30, what=f"port-forward to {key}", interval=0.5
            )
            answers[key] = v2_client.call("127.0.0.1", http_port, grpc_port, request)
        finally:
            forward.terminate()
            forward.wait(timeout=10)
    check_answers(answers)
    # And a NodePort Service, on the node's address.
    through_node = {}
    for key, request in requests.items():
        http_port, grpc_port = node_ports(api, request["model"])
        through_node[key] = wait_for(
            partial(_try, v2_client.call, BRIDGE_IP, http_port, grpc_port, request),
            30,
            what=f"NodePort of {key}",
            interval=0.5,
        )
    check_answers(through_node)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _try(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception:
        return None


class Load:
    """Steady REST and gRPC traffic to a NodePort until stopped (bounded in time)."""

    def __init__(self, http_port: int, grpc_port: int, limit: float = 600) -> None:
        self.request = v2_requests()["iris"]
        self.http, self.grpc = http_port, grpc_port
        self.stop = threading.Event()
        self.limit = time.monotonic() + limit
        self.ok = {"rest": 0, "grpc": 0}
        self.failures: list[str] = []
        self.versions: dict[str, set[str]] = {"rest": set(), "grpc": set()}
        self.versions_seen: dict[str, set[str]] = {"rest": set(), "grpc": set()}
        self.threads = [
            threading.Thread(target=self._rest, daemon=True),
            threading.Thread(target=self._grpc, daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.limit

    def _rest(self) -> None:
        url = f"http://{BRIDGE_IP}:{self.http}"
        while self._running():
            try:
                answer = v2_client.rest(url, self.request)
                assert v2_client.flat(answer["outputs"]["predict"]) == [0, 2], answer
                self.ok["rest"] += 1
                self.versions["rest"].add(answer["version"])
                self.versions_seen["rest"].add(answer["version"])
            except Exception as exc:
                self.failures.append(f"REST {time.strftime('%T')}: {exc!r}")
            time.sleep(0.02)

    def _grpc(self) -> None:
        # One channel for the whole run, as a client service keeps one.
        client = grpcclient.InferenceServerClient(f"{BRIDGE_IP}:{self.grpc}")
        tensor = grpcclient.InferInput("input-0", [2, 4], "FP64")
        import numpy as np

        tensor.set_data_from_numpy(np.array(IRIS_ROWS, dtype=np.float64))
        try:
            while self._running():
                try:
                    result = client.infer("iris", [tensor], client_timeout=10)
                    assert result.as_numpy("predict").reshape(-1).tolist() == [0, 2]
                    self.ok["grpc"] += 1
                    version = result.get_response().model_version
                    self.versions["grpc"].add(version)
                    self.versions_seen["grpc"].add(version)
                except Exception as exc:
                    self.failures.append(f"gRPC {time.strftime('%T')}: {exc!r}")
                time.sleep(0.02)
        finally:
            client.close()


def rollout_done(api: k8s.ApiClient, name: str) -> bool:
    deployment = k8s.AppsV1Api(api).read_namespaced_deployment(name, NAMESPACE)
    status, wanted = deployment.status, deployment.spec.replicas
    return (
        (status.observed_generation or 0) >= deployment.metadata.generation
        and status.updated_replicas == wanted
        and status.ready_replicas == wanted
        and status.replicas == wanted
    )


def only_new_pods(api: k8s.ApiClient, name: str) -> bool:
    pods = (
        k8s.CoreV1Api(api)
        .list_namespaced_pod(NAMESPACE, label_selector=f"modelyard.io/model={name},{SERVER_LABELS}")
        .items
    )
    hashes = {p.metadata.labels.get("pod-template-hash") for p in pods}
    return len(hashes) == 1 and not any(p.metadata.deletion_timestamp for p in pods)


def test_a_version_change_under_load_fails_no_request(
    node: NodeCluster, api: k8s.ApiClient, models: Any, folders: dict[str, str]
) -> None:
    http_port, grpc_port = node_ports(api, "iris")
    with Load(http_port, grpc_port) as load:
        time.sleep(3)
        began = time.monotonic()
        kubectl_apply(node, manifest("iris", folders["iris-2"], version="2"))
        wait_for(
            lambda: get_model(api, "iris")["metadata"]["generation"] > 1,
            30,
            what="generation 2",
            interval=0.5,
        )
        wait_ready(api, "iris")
        wait_for(lambda: rollout_done(api, "iris"), 300, what="the iris rollout", interval=1)
        took = time.monotonic() - began
        # The old pods answer until they have stopped (the gRPC channel stays on one of
        # them until then); from there on only the new version answers.
        wait_for(
            lambda: only_new_pods(api, "iris"), 120, what="the old iris pods to stop", interval=1
        )
        load.versions = {"rest": set(), "grpc": set()}
        time.sleep(3)
    timed("rollout of iris 1 -> 2 under load", took)
    print(f"\nunder load: {load.ok} answered, {len(load.failures)} failed")
    assert not load.failures, load.failures[:10]
    assert load.ok["rest"] > 50 and load.ok["grpc"] > 50
    assert load.versions == {"rest": {"2"}, "grpc": {"2"}}
    assert load.versions_seen == {"rest": {"1", "2"}, "grpc": {"1", "2"}}


def test_a_broken_version_stalls_with_the_old_pods_serving(
    node: NodeCluster, api: k8s.ApiClient, models: Any, folders: dict[str, str]
) -> None:
    http_port, grpc_port = node_ports(api, "iris")
    began = time.monotonic()
    kubectl_apply(node, manifest("iris", folders["iris-broken"], version="3"))

    def failed() -> dict[str, Any] | None:
        status = get_model(api, "iris").get("status") or {}
        return status if status.get("phase") == "Failed" else None

    with Load(http_port, grpc_port) as load:
        status = wait_for(failed, PROGRESS_DEADLINE + 240, what="Model iris Failed", interval=1)
    timed("broken version reported Failed", time.monotonic() - began)
    [condition] = status["conditions"]
    print(f"\nstalled rollout: {condition['message']}")
    assert condition["reason"] == "RolloutStalled"
    assert "ProgressDeadlineExceeded" in condition["message"] or "progress" in condition["message"]
    assert "not ready" in condition["message"] or "Readiness probe failed" in condition["message"]
    # The previous version answered throughout, and alone.
    assert not load.failures, load.failures[:10]
    assert load.versions["rest"] == {"2"} and load.versions["grpc"] == {"2"}
    pods = (
        k8s.CoreV1Api(api)
        .list_namespaced_pod(NAMESPACE, label_selector=f"modelyard.io/model=iris,{SERVER_LABELS}")
        .items
    )
    assert sum(all(c.ready for c in p.status.container_statuses or []) for p in pods) == 2
    # Putting the good version back heals it.
    kubectl_apply(node, manifest("iris", folders["iris-2"], version="2"))
    wait_ready(api, "iris")
    wait_for(lambda: rollout_done(api, "iris"), 300, what="the iris rollback", interval=1)


def runs(postgres: PostgresServer, run_id: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(postgres.url("predictions"))
    try:
        with engine.connect() as conn:
            query = sa.text(f"SELECT * FROM {RUNS_TABLE} WHERE {RUN_COLUMN} = :run")
            return [dict(r._mapping) for r in conn.execute(query, {"run": run_id})]
    finally:
        engine.dispose()


def wait_jobs(api: k8s.ApiClient, names: list[str], timeout: float = 420) -> None:
    batch = k8s.BatchV1Api(api)

    def done() -> bool:
        for name in names:
            status = batch.read_namespaced_job(name, NAMESPACE).status
            if status.failed:
                pods = (
                    k8s.CoreV1Api(api)
                    .list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}")
                    .items
                )
                logs = [pod_log(api, p.metadata.name) for p in pods]
                raise AssertionError(f"job {name} failed:\n" + "\n".join(logs))
            if not status.succeeded:
                return False
        return True

    wait_for(done, timeout, what=f"jobs {names}", interval=1)


def test_the_cronjobs_job_runs_in_a_pod_and_the_lookup_answers_from_it(
    node: NodeCluster, api: k8s.ApiClient, models: Any, postgres: PostgresServer
) -> None:
    began = time.monotonic()
    node.kubectl("create", "job", "-n", NAMESPACE, "--from=cronjob/gender-batch", "gender-run-1")
    wait_jobs(api, ["gender-run-1"])
    timed("batch Job of the gender CronJob", time.monotonic() - began)
    [run] = runs(postgres, "gender-run-1")
    assert run["status"] == "complete", run
    assert run["rows"] > 1000 and run["bad_rows"] == 0
    # The lookup model in the gender pods answers from the run within seconds.
    http_port, grpc_port = node_ports(api, "gender")
    lookup = {
        "model": "gender-lookup",
        "input": {
            "name": "user_id",
            "datatype": "BYTES",
            "shape": [2],
            "data": ["u0000001", "nobody"],
        },
        "outputs": ["male_percentile", "missing"],
    }

    def answered() -> dict[str, Any] | None:
        answer = _try(v2_client.call, BRIDGE_IP, http_port, grpc_port, lookup)
        return answer if answer and answer["grpc"]["outputs"]["missing"] == [False, True] else None

    stored = wait_for(answered, 60, what="gender-lookup answering from the run", interval=0.5)
    online = v2_client.call(BRIDGE_IP, http_port, grpc_port, v2_requests()["gender"])
    # The batch run scored with the same predictor as the online model.
    assert same(stored["grpc"]["outputs"]["male_percentile"][0],
                online["grpc"]["outputs"]["male_percentile"][0])  # fmt: skip


def test_a_run_sharded_over_three_jobs_completes_as_one(
    node: NodeCluster, api: k8s.ApiClient, models: Any, postgres: PostgresServer
) -> None:
    """Kubernetes 1.20 has no Indexed Jobs (1.21 alpha, 1.22 beta): the same three pods an
    Indexed Job would run, each with its $JOB_COMPLETION_INDEX, as three Jobs."""
    cronjob = json.loads(node.kubectl("get", "-n", NAMESPACE, "cronjob/gender-batch", "-o", "json"))
    job_spec = cronjob["spec"]["jobTemplate"]["spec"]
    names = []
    began = time.monotonic()
    for index in range(3):
        spec = copy.deepcopy(job_spec)
        [container] = spec["template"]["spec"]["containers"]
        container["env"] = [e for e in container["env"] if e["name"] != "MODELYARD_RUN_ID"] + [
            {"name": "MODELYARD_RUN_ID", "value": "gender-sharded-1"},
            {"name": "JOB_COMPLETION_INDEX", "value": str(index)},
        ]
        container["args"] = ["--run-id", "$(MODELYARD_RUN_ID)", "--shards", "3"]
        spec["template"]["metadata"]["labels"].pop("controller-uid", None)
        name = f"gender-shard-{index}"
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}
        k8s.BatchV1Api(api).create_namespaced_job(NAMESPACE, body)
        names.append(name)
    wait_jobs(api, names)
    timed("batch run in 3 shards (3 Jobs)", time.monotonic() - began)
    [run] = runs(postgres, "gender-sharded-1")
    [single] = runs(postgres, "gender-run-1")
    assert run["status"] == "complete" and run["shards"] == 3 and run["shards_done"] == 3
    assert run["rows"] == single["rows"]


def children_versions(node: NodeCluster) -> dict[str, str]:
    listed = json.loads(node.kubectl(
        "get", "-n", NAMESPACE, "configmaps,deployments,services,hpa,pdb,cronjobs",
        "-l", "app.kubernetes.io/managed-by=modelyard-operator", "-o", "json",
    ))  # fmt: skip
    return {
        f"{item['kind']}/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
        for item in listed["items"]
    }


def test_an_operator_restart_changes_no_child(
    node: NodeCluster, api: k8s.ApiClient, models: Any
) -> None:
    before = children_versions(node)
    assert len(before) >= 3 * 5, before
    core = k8s.CoreV1Api(api)
    selector = "app.kubernetes.io/name=modelyard"
    [old] = core.list_namespaced_pod(SYSTEM_NAMESPACE, label_selector=selector).items
    began = time.monotonic()
    core.delete_namespaced_pod(old.metadata.name, SYSTEM_NAMESPACE)

    def new_pod_resumed() -> bool:
        pods = [
            p
            for p in core.list_namespaced_pod(SYSTEM_NAMESPACE, label_selector=selector).items
            if p.metadata.name != old.metadata.name and p.status.phase == "Running"
        ]
        if not pods:
            return False
        log = pod_log(api, pods[0].metadata.name, SYSTEM_NAMESPACE)
        return all(
            f"[{NAMESPACE}/{name}] Handler 'reconcile' succeeded" in log for name in EXAMPLES
        )

    wait_for(new_pod_resumed, 180, what="the restarted operator to resume every Model", interval=1)
    timed("operator restarted and resumed", time.monotonic() - began)
    time.sleep(5)
    assert children_versions(node) == before


def test_gpu_models_land_on_the_labelled_tainted_node(
    node: NodeCluster, api: k8s.ApiClient, models: Any, folders: dict[str, str]
) -> None:
    """The node advertises a GPU resource (no device, no plugin: scheduling only), carries
    both labels and the GPU taint; the chart's defaults and a Model's nodeLabel place pods."""
    core = k8s.CoreV1Api(api)
    labels = {
        "nvidia.com/gpu.product": "Fake-T4",
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
    }
    core.patch_node(NODE_NAME, {"metadata": {"labels": labels}})
    core.patch_node_status(NODE_NAME, {"status": {"capacity": {"nvidia.com/gpu": "4"}}})
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    core.patch_node(NODE_NAME, {"spec": {"taints": [taint]}})
    try:
        gpus = {
            "iris-gpu": {"type": "Fake-T4", "count": 1},
            "iris-gke": {
                "type": "nvidia-tesla-t4",
                "count": 1,
                "nodeLabel": "cloud.google.com/gke-accelerator",
            },
            "iris-nowhere": {"type": "A100", "count": 1},
        }
        for name, gpu in gpus.items():
            body = manifest("iris", folders["iris"])
            body["metadata"]["name"] = name
            body["spec"]["name"] = "iris"
            body["spec"]["deployment"] = {
                "replicas": {"min": 1},
                "resources": {"cpu": "100m", "memory": "512Mi", "gpu": gpu},
            }
            kubectl_apply(node, body)
        for name in ("iris-gpu", "iris-gke"):
            wait_ready(api, name)
            [pod] = core.list_namespaced_pod(
                NAMESPACE, label_selector=f"modelyard.io/model={name}"
            ).items
            assert pod.spec.node_name == NODE_NAME
            assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in [
                {"key": t.key, "operator": t.operator, "effect": t.effect}
                for t in pod.spec.tolerations
            ]
        selectors = {
            name: core.list_namespaced_pod(NAMESPACE, label_selector=f"modelyard.io/model={name}")
            .items[0].spec.node_selector
            for name in gpus
        }  # fmt: skip
        assert selectors["iris-gpu"] == {"nvidia.com/gpu.product": "Fake-T4"}
        assert selectors["iris-gke"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}

        def unschedulable() -> bool:
            [pod] = core.list_namespaced_pod(
                NAMESPACE, label_selector="modelyard.io/model=iris-nowhere"
            ).items
            return any(
                c.type == "PodScheduled" and c.reason == "Unschedulable"
                for c in pod.status.conditions or []
            )

        wait_for(
            unschedulable, 60, what="the A100 pod to be refused by the scheduler", interval=0.5
        )
    finally:
        core.patch_node(NODE_NAME, {"spec": {"taints": None}})
        for name in ("iris-gpu", "iris-gke", "iris-nowhere"):
            node.kubectl("delete", "-n", NAMESPACE, "model", name, "--wait=false", check=False)


def test_deleting_a_model_collects_its_children(
    node: NodeCluster, api: k8s.ApiClient, models: Any
) -> None:
    began = time.monotonic()
    node.kubectl("delete", "-n", NAMESPACE, "model", "breast-cancer", "--wait=false")

    def gone() -> bool:
        left = node.kubectl(
            "get", "-n", NAMESPACE, "configmaps,deployments,replicasets,pods,services,hpa,pdb",
            "-l", "modelyard.io/model=breast-cancer", "-o", "name",
        )  # fmt: skip
        return not left.strip()

    wait_for(gone, 180, what="breast-cancer's children to be collected", interval=1)
    timed("Model deleted -> children and pods gone", time.monotonic() - began)
    # The other Models are untouched.
    assert model_ready(api, "iris") and model_ready(api, "gender")


# -- a model folder's own packages, baked into an image by `modelyard image` --------------


def probe_model(s3: S3Server, folder: Path, name: str, **spec: Any) -> dict[str, Any]:
    """A Model of a folder written by write_folder (the env tests'), uploaded to S3."""
    declaration = yaml.safe_load((folder / "model.yaml").read_text())
    keys = [*CREDENTIALS, "AWS_ENDPOINT_URL"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Model",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            **declaration,
            "name": name,
            "folder": upload(s3, folder, f"{name}/1"),
            "secretEnv": {k: {"secret": STORE_SECRET, "key": k} for k in keys},
            "deployment": {"resources": {"cpu": "100m"}},
            **spec,
        },
    }


def probe_answers(node: NodeCluster, api: k8s.ApiClient, body: dict[str, Any]) -> int:
    """Apply the Model, wait for it, and call it over V2 from a pod: the library
    version it reports (major*10000 + minor*100 + patch)."""
    name = body["metadata"]["name"]
    began = time.monotonic()
    kubectl_apply(node, body)
    try:
        wait_ready(api, name)
    except TimeoutError:
        raise AssertionError(describe(node, name)) from None
    timed(f"Model {name} Ready", time.monotonic() - began)
    request = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]}
    script = (
        "import json, sys, urllib.request\n"
        "r = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),"
        " headers={'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(r, timeout=30).read().decode())\n"
    )
    url = f"http://{service_ip(api, name)}:8080/v2/models/{name}/infer"
    log = run_pod(api, f"{name}-client", ["python", "-c", script, url, json.dumps(request)])
    outputs = {o["name"]: o["data"][0] for o in json.loads(log.strip().splitlines()[-1])["outputs"]}
    return int(outputs["version"])


def version_number(version: str) -> int:
    major, minor, patch = (int(p) for p in version.split("."))
    return major * 10000 + minor * 100 + patch


def server_pod(api: k8s.ApiClient, name: str) -> Any:
    [pod] = (
        k8s.CoreV1Api(api)
        .list_namespaced_pod(NAMESPACE, label_selector=f"modelyard.io/model={name},{SERVER_LABELS}")
        .items
    )
    return pod


def test_an_image_built_by_modelyard_image_serves_the_folders_own_library(
    node: NodeCluster,
    api: k8s.ApiClient,
    release: dict[str, Any],
    namespace: str,
    s3: S3Server,
    package_index: str,
    tmp_path: Path,
) -> None:
    from tests.serving.test_environments import write_folder

    name, version = PROBE_LIB
    folder = tmp_path / "probe"
    write_folder(folder, name, f"{name}=={version}\n")
    tag = "registry.example.com/ml/probe:1"
    began = time.monotonic()
    # For real, against the node's dockerd; the build's steps reach the index on the
    # host's bridge address (--network host).
    built = subprocess.run(
        [str(Path(sys.executable).parent / "modelyard"), "image", str(folder),
         "--tag", tag, "--base", SERVING_IMAGE, "--context", str(tmp_path / "context"),
         "--build-arg", f"UV_INDEX_URL={package_index}", "--network", "host"],
        capture_output=True, text=True, env=node.docker_env(), check=False, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"built {tag}" in built.stdout
    timed("modelyard image (docker build)", time.monotonic() - began)
    assert node.docker("images", "-q", tag).strip()

    # The folder's own probe-lib, which the serving image does not have, answered by a
    # worker on the image's environment: the pod built nothing (nor has an index).
    body = probe_model(s3, folder, "probe-image", image=tag)
    assert probe_answers(node, api, body) == version_number(version)
    pod = server_pod(api, "probe-image")
    assert [c.name for c in pod.spec.init_containers] == ["fetch-folder"]
    node.kubectl("delete", "-n", NAMESPACE, "model", "probe-image", "--wait=false")


def test_a_model_building_its_environment_in_an_init_container(
    node: NodeCluster,
    api: k8s.ApiClient,
    release: dict[str, Any],
    namespace: str,
    s3: S3Server,
    tmp_path: Path,
) -> None:
    from tests.serving.test_environments import write_folder

    name, version = PROBE_LIB
    folder = tmp_path / "probe"
    write_folder(folder, name, f"{name}=={version}\n")
    # The serving image, which lacks probe-lib; the operator's index (the chart value) has it.
    body = probe_model(s3, folder, "probe-built", buildEnvironment=True)
    assert probe_answers(node, api, body) == version_number(version)
    pod = server_pod(api, "probe-built")
    assert [c.name for c in pod.spec.init_containers] == ["fetch-folder", "build-environment"]
    build = pod.spec.init_containers[1]
    assert build.security_context.run_as_user != pod.spec.security_context.run_as_user
    [model_mount] = [m for m in build.volume_mounts if m.name == "model"]
    assert model_mount.read_only
    [status] = [s for s in pod.status.init_container_statuses if s.name == build.name]
    assert status.state.terminated.exit_code == 0
    # It printed the environment's path, in the volume the server reads.
    log = pod_log(api, pod.metadata.name, container=build.name)
    assert log.strip().splitlines()[-1].startswith("/var/lib/modelyard/envs/")
    node.kubectl("delete", "-n", NAMESPACE, "model", "probe-built", "--wait=false")


@pytest.fixture(autouse=True)
def _print_cluster_state_on_failure(
    request: pytest.FixtureRequest, node: NodeCluster
) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        out = io.StringIO()
        out.write(node.kubectl("get", "-A", "pods,deployments,models", "-o", "wide", check=False))
        out.write(
            node.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)[-6000:]
        )
        print(f"\n----- cluster state -----\n{out.getvalue()}")
