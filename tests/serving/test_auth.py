"""Who may call a real `modelyard serve`: the repository API's admin token, inference
tokens, TLS and client certificates, over REST (tritonclient.http, requests), gRPC
(tritonclient.grpc through the Go front end, and through Python's gRPC server) and the
metrics port; the health probes stay open."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serving.test_live_registry import SETOSA, write_iris
from tests.support.clients import expect_error, infer
from tests.support.server import ServerProcess, running
from tests.support.tls import Pki, make_pki

ADMIN = "admin-secret-1"
TOKENS = ("reader-token-a", "reader-token-b")
IRIS = {"input-0": (np.array([SETOSA]), "FP64")}
BODY = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}


def bearer(token: str) -> dict[str, str]:
    # Lower case: gRPC metadata keys are (tritonclient.grpc refuses "Authorization").
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    write_iris(tmp_path / "models" / "iris", "1")
    return tmp_path / "models"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def serve(tmp_path: Path, models: Path, *args: str, ca: Path | None = None, **env: str):
    name = f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log"
    server = ServerProcess(
        models, tmp_path / name, extra_args=("--processes", "1", *args), env=env, ca=ca
    )
    return running(server)


def health_check(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


# -- the repository API ------------------------------------------------------------------


@pytest.mark.parametrize("front", ["go", "python"])
def test_repository_api_is_refused_without_an_admin_token(
    tmp_path: Path, models: Path, front: str
) -> None:
    env = {"MODELYARD_GRPC_FRONT": "off"} if front == "python" else {}
    with serve(tmp_path, models, **env) as server:
        r = requests.post(f"{server.base}/v2/repository/models/iris/unload", timeout=30)
        assert r.status_code == 403, r.text
        assert "--admin-token-file" in r.json()["error"]
        assert "MODELYARD_ADMIN_TOKEN" in r.json()["error"]
        r = requests.post(f"{server.base}/v2/repository/index", json={}, timeout=30)
        assert r.status_code == 403, r.text

        http = httpclient.InferenceServerClient(server.http_url)
        expect_error(http, lambda: http.unload_model("iris"), 403, "", "--admin-token-file")
        client = grpcclient.InferenceServerClient(server.grpc_url)
        expect_error(
            client, lambda: client.unload_model("iris"), 0, "PERMISSION_DENIED",
            "--admin-token-file",
        )  # fmt: skip
        expect_error(client, lambda: client.get_model_repository_index(), 0, "PERMISSION_DENIED")
        # A token sent to a server that has none changes nothing.
        expect_error(
            client,
            lambda: client.load_model("iris", headers=bearer(ADMIN)),
            0,
            "PERMISSION_DENIED",
        )
        # Still served, and inference is open.
        assert infer(client, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]
        assert infer(http, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]


@pytest.mark.parametrize("front", ["go", "python"])
def test_repository_api_needs_the_admin_token(tmp_path: Path, models: Path, front: str) -> None:
    env = {"MODELYARD_GRPC_FRONT": "off"} if front == "python" else {}
    with serve(tmp_path, models, MODELYARD_ADMIN_TOKEN=ADMIN, **env) as server:
        unload = f"{server.base}/v2/repository/models/iris/unload"
        r = requests.post(unload, timeout=30)
        assert r.status_code == 401, r.text
        assert "Authorization: Bearer" in r.json()["error"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert requests.post(unload, headers=bearer("wrong"), timeout=30).status_code == 401
        assert (
            requests.post(unload, headers={"Authorization": ADMIN}, timeout=30).status_code == 401
        )
        r = requests.post(unload, headers=bearer(ADMIN), timeout=30)
        assert r.status_code == 200, r.text
        assert requests.post(f"{server.base}/v2/models/iris/infer", json=BODY).status_code == 404

        client = grpcclient.InferenceServerClient(server.grpc_url)
        expect_error(client, lambda: client.load_model("iris"), 0, "UNAUTHENTICATED", "Bearer")
        expect_error(
            client,
            lambda: client.load_model("iris", headers=bearer(ADMIN + "x")),
            0,
            "UNAUTHENTICATED",
        )
        client.load_model("iris", headers=bearer(ADMIN))
        assert infer(client, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]
        index = client.get_model_repository_index(headers=bearer(ADMIN), as_json=True)
        assert [m["name"] for m in index["models"]] == ["iris"]


def test_an_admin_token_file_is_read(tmp_path: Path, models: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(f"# the operator's token\n{ADMIN}\n")
    with serve(tmp_path, models, "--admin-token-file", str(token_file)) as server:
        index = f"{server.base}/v2/repository/index"
        assert requests.post(index, json={}, timeout=30).status_code == 401
        r = requests.post(index, json={}, headers=bearer(ADMIN), timeout=30)
        assert r.status_code == 200, r.text
        assert [m["name"] for m in r.json()] == ["iris"]


# -- inference tokens --------------------------------------------------------------------


@pytest.mark.parametrize("front", ["go", "python"])
def test_inference_tokens_guard_rest_grpc_and_metrics(
    tmp_path: Path, models: Path, front: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("\n".join(TOKENS) + "\n")
    env = {"MODELYARD_GRPC_FRONT": "off"} if front == "python" else {}
    with serve(tmp_path, models, "--inference-token-file", str(tokens), **env) as server:
        # The probes stay open: the kubelet sends no token.
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).json() == {"ready": True}
        # A model's readiness too: a Model's pods are ready when their model is.
        assert requests.get(f"{server.base}/v2/models/iris/ready", timeout=5).status_code == 200
        unknown = requests.get(f"{server.base}/v2/models/nope/ready", timeout=5)
        assert unknown.status_code == 404
        metadata = requests.get(f"{server.base}/v2/models/iris", timeout=5)
        assert metadata.status_code == 401
        with grpc.insecure_channel(server.grpc_url) as channel:
            assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING

        http = httpclient.InferenceServerClient(server.http_url)
        expect_error(http, lambda: infer(http, "iris", IRIS), 401, "", "--inference-token-file")
        for token in TOKENS:
            result = http.infer(
                "iris",
                [_http_input()],
                headers=bearer(token),
            )
            assert result.as_numpy("predict").ravel().tolist() == [0]
        r = requests.post(f"{server.base}/v2/models/iris/infer", json=BODY, timeout=10)
        assert r.status_code == 401
        r = requests.get(f"{server.base}/v2/models/iris", headers=bearer("nope"), timeout=10)
        assert r.status_code == 401  # metadata too
        r = requests.get(f"{server.base}/v2/models/iris", headers=bearer(TOKENS[0]), timeout=10)
        assert r.status_code == 200 and r.json()["name"] == "iris"

        client = grpcclient.InferenceServerClient(server.grpc_url)
        expect_error(client, lambda: infer(client, "iris", IRIS), 0, "UNAUTHENTICATED", "token")
        expect_error(client, lambda: client.get_model_metadata("iris"), 0, "UNAUTHENTICATED")
        result = client.infer("iris", [_grpc_input()], headers=bearer(TOKENS[1]))
        assert result.as_numpy("predict").ravel().tolist() == [0]
        metadata = client.get_model_metadata("iris", headers=bearer(TOKENS[0]), as_json=True)
        assert metadata["name"] == "iris"
        # An inference token is not the admin token.
        expect_error(
            client, lambda: client.unload_model("iris", headers=bearer(TOKENS[0])), 0,
            "PERMISSION_DENIED",
        )  # fmt: skip

        metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
        assert requests.get(metrics, timeout=10).status_code == 401
        r = requests.get(metrics, headers=bearer(TOKENS[0]), timeout=10)
        assert r.status_code == 200 and "model_infer_request" in r.text


def _http_input() -> httpclient.InferInput:
    request_input = httpclient.InferInput("input-0", [1, 4], "FP64")
    request_input.set_data_from_numpy(np.array([SETOSA]))
    return request_input


def _grpc_input() -> grpcclient.InferInput:
    request_input = grpcclient.InferInput("input-0", [1, 4], "FP64")
    request_input.set_data_from_numpy(np.array([SETOSA]))
    return request_input


def test_a_token_file_without_tokens_stops_the_server_with_a_reason(tmp_path: Path) -> None:
    import subprocess

    from tests.support.server import MODELYARD

    empty = tmp_path / "tokens"
    empty.write_text("# nothing yet\n\n")
    (tmp_path / "models").mkdir()
    done = subprocess.run(
        [MODELYARD, "serve", str(tmp_path / "models"), "--inference-token-file", str(empty)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--inference-token-file" in done.stderr and "no token in it" in done.stderr
    done = subprocess.run(
        [MODELYARD, "serve", str(tmp_path / "models"), "--tls-cert", str(empty)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--tls-key" in done.stderr


# -- TLS and client certificates ---------------------------------------------------------


def tls_args(pki: Pki, client_ca: bool = False) -> list[str]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    return [*args, "--tls-client-ca", str(pki.ca)] if client_ca else args


def http_tls_client(
    server: ServerProcess, pki: Pki, cert: bool
) -> httpclient.InferenceServerClient:
    def context() -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        if cert:
            ctx.load_cert_chain(pki.client_cert, pki.client_key)
        return ctx

    return httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_context_factory=context)


def grpc_tls_client(
    server: ServerProcess, pki: Pki, cert: bool
) -> grpcclient.InferenceServerClient:
    pair = {"private_key": str(pki.client_key), "certificate_chain": str(pki.client_cert)}
    return grpcclient.InferenceServerClient(
        server.grpc_url, ssl=True, root_certificates=str(pki.ca), **(pair if cert else {})
    )


@pytest.mark.parametrize("front", ["go", "python"])
def test_tls_serves_rest_grpc_and_metrics(
    tmp_path: Path, models: Path, pki: Pki, front: str
) -> None:
    env = {"MODELYARD_GRPC_FRONT": "off"} if front == "python" else {}
    with serve(tmp_path, models, *tls_args(pki), ca=pki.ca, **env) as server:
        http = http_tls_client(server, pki, cert=False)
        assert infer(http, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]
        client = grpc_tls_client(server, pki, cert=False)
        assert infer(client, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]
        metrics = f"https://127.0.0.1:{server.metrics_port}/metrics"
        assert requests.get(metrics, verify=str(pki.ca), timeout=10).status_code == 200
        # Plain HTTP and a client that does not trust the CA get no answer.
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{server.http_url}/v2/health/ready", timeout=5)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.base}/v2/health/ready", timeout=5)
        with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError):
            health_check(channel)


def test_client_certificates_guard_inference_but_not_probes(
    tmp_path: Path, models: Path, pki: Pki
) -> None:
    with serve(tmp_path, models, *tls_args(pki, client_ca=True), ca=pki.ca) as server:
        # The kubelet's HTTPS probe sends no certificate, and gets its answer.
        r = requests.get(f"{server.base}/v2/health/ready", verify=str(pki.ca), timeout=5)
        assert r.json() == {"ready": True}
        r = requests.get(f"{server.base}/v2/models/iris/ready", verify=str(pki.ca), timeout=5)
        assert r.status_code == 200
        credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        with grpc.secure_channel(server.grpc_url, credentials) as channel:
            assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING

        http = http_tls_client(server, pki, cert=False)
        expect_error(http, lambda: infer(http, "iris", IRIS), 401, "", "--tls-client-ca")
        client = grpc_tls_client(server, pki, cert=False)
        expect_error(
            client, lambda: infer(client, "iris", IRIS), 0, "UNAUTHENTICATED", "--tls-client-ca"
        )
        expect_error(client, lambda: client.get_model_metadata("iris"), 0, "UNAUTHENTICATED")
        metrics = f"https://127.0.0.1:{server.metrics_port}/metrics"
        assert requests.get(metrics, verify=str(pki.ca), timeout=10).status_code == 401

        http = http_tls_client(server, pki, cert=True)
        assert infer(http, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]
        client = grpc_tls_client(server, pki, cert=True)
        assert infer(client, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]
        assert client.get_model_metadata("iris", as_json=True)["name"] == "iris"
        r = requests.get(
            metrics, verify=str(pki.ca), cert=(str(pki.client_cert), str(pki.client_key))
        )
        assert r.status_code == 200

        # A certificate from another CA does not get through the handshake (under TLS
        # 1.3 the client learns it as the connection closing, an SSLError's parent).
        other = make_pki(tmp_path / "other", ca_name="another CA")
        with pytest.raises(requests.ConnectionError):
            requests.get(
                f"{server.base}/v2/health/ready",
                verify=str(pki.ca),
                cert=(str(other.client_cert), str(other.client_key)),
                timeout=5,
            )


def test_pythons_grpc_server_asks_for_the_client_certificate_at_the_handshake(
    tmp_path: Path, models: Path, pki: Pki
) -> None:
    env = {"MODELYARD_GRPC_FRONT": "off"}
    with serve(tmp_path, models, *tls_args(pki, client_ca=True), ca=pki.ca, **env) as server:
        # Refused at the handshake: the channel never connects.
        client = grpc_tls_client(server, pki, cert=False)
        expect_error(client, lambda: infer(client, "iris", IRIS), 0, "UNAVAILABLE")
        client = grpc_tls_client(server, pki, cert=True)
        assert infer(client, "iris", IRIS).as_numpy("predict").ravel().tolist() == [0]
        # REST still checks per call: the probe without a certificate is answered.
        r = requests.get(f"{server.base}/v2/health/ready", verify=str(pki.ca), timeout=5)
        assert r.json() == {"ready": True}
