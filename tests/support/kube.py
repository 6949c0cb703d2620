"""A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager.

The binaries are built once from Debian's source package by `scripts/kube/build.sh` and
cached outside the repository. There is no scheduler and no kubelet: Pods stay Pending,
and a test that needs a Ready Deployment patches its status subresource as a kubelet would.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import requests
import yaml
from kubernetes import client, config

from tests.support.server import REPO, free_port

KUBE_VERSION = "v1.20.2"
BUILD_SCRIPT = REPO / "scripts" / "kube" / "build.sh"
CONTROLLERS = (
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "deployment",
    "replicaset",
)


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "modelyard" / f"kube-{KUBE_VERSION}"
    return Path(os.environ.get("MODELYARD_KUBE_CACHE", default))


def ensure_binaries() -> Path:
    """The directory holding kube-apiserver and kube-controller-manager, built if missing.

    The script is a no-op taking well under a second when the binaries are cached; it also
    installs etcd from Debian when it is missing.
    """
    bin_dir = cache_dir() / "bin"
    ready = shutil.which("etcd") and all(
        (bin_dir / b).exists() for b in ("kube-apiserver", "kube-controller-manager")
    )
    if not ready:
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    return bin_dir


@dataclass
class _Process:
    name: str
    argv: Sequence[str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            # A session of its own, so stop() reaches anything the binary forks.
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self, tail: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])


class AdminAccess:
    """An API server reached as the admin of the token file: the kubeconfig and CA of
    `workdir`, plain GETs. The clusters here (this control plane, the node of
    tests/support/node.py) set `workdir`, `token` and `server`."""

    workdir: Path
    token: str

    @property
    def server(self) -> str:
        raise NotImplementedError

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        # Written by kube-apiserver itself (--cert-dir): the serving certificate and the
        # self-signed CA that issued it; valid for its bind address.
        return self.workdir / "certs" / "apiserver.crt"

    def api_client(self) -> client.ApiClient:
        """A new client of the official library, independent of its global default config."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def _write_kubeconfig(self) -> None:
        cluster = {"server": self.server, "certificate-authority": str(self.ca_file)}
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))

    def _get(self, path: str) -> requests.Response:
        return requests.get(
            self.server + path,
            headers={"Authorization": f"Bearer {self.token}"},
            verify=str(self.ca_file),
            timeout=2,
        )

    def _ok(self, path: str) -> bool:
        """`path` answers 200 (False while the API server is not up yet)."""
        if not self.ca_file.exists():
            return False
        try:
            return self._get(path).status_code == 200
        except requests.RequestException:
            return False


@dataclass
class KubeCluster(AdminAccess):
    """A control plane in `workdir`, on free loopback ports, with an admin kubeconfig.

    Use as a context manager, or call `start()` and `stop()`.
    """

    workdir: Path
    bin_dir: Path = field(default_factory=lambda: cache_dir() / "bin")
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    processes: list[_Process] = field(default_factory=list)
    startup_seconds: float = 0.0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> KubeCluster:
        began = time.monotonic()
        deadline = began + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_credentials()
            self._start_etcd()
            self._start_apiserver()
            self._wait(lambda: self._ok("/readyz"), deadline, "kube-apiserver /readyz")
            self._write_kubeconfig()
            self._start_controller_manager()
            # The serviceaccount controller creating `default` proves the controller
            # manager is up; Pods (so ReplicaSets) are refused until it exists.
            self._wait(lambda: self._ok("/api/v1/namespaces/default/serviceaccounts/default"),
                       deadline, "kube-controller-manager (default ServiceAccount)")  # fmt: skip
        except BaseException as exc:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"Kubernetes control plane failed to start: {exc}\n{logs}") from exc
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        # Clients first, store last, so nothing logs a storm of connection errors.
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def logs(self, tail: int = 60) -> str:
        return "\n".join(
            f"----- {p.name} (last {tail} lines of {p.log_path}) -----\n{p.log(tail)}"
            for p in self.processes
        )

    @cached_property
    def client(self) -> client.ApiClient:
        """One shared admin client."""
        return self.api_client()

    # -- internals ---------------------------------------------------------------------

    def _write_credentials(self) -> None:
        (self.workdir / "tokens.csv").write_text(f"{self.token},admin,admin-uid,system:masters\n")
        key, pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
            check=True,
            capture_output=True,
        )

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        process = _Process(name, argv, self.workdir / f"{name}.log")
        self.processes.append(process)
        process.start()

    def _start_etcd(self) -> None:
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn("etcd", [
            shutil.which("etcd") or "etcd",
            "--name=modelyard-test",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=modelyard-test={peer_url}",
            # Throwaway data: fsync only slows every write down.
            "--unsafe-no-fsync",
            "--logger=zap",
            "--log-level=warn",
        ])  # fmt: skip

    def _start_apiserver(self) -> None:
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--profiling=false",
            "--v=1",
        ])  # fmt: skip

    def _start_controller_manager(self) -> None:
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--port=0",
            f"--controllers={','.join(CONTROLLERS)}",
            # Without it the serviceaccount-token controller is silently disabled.
            f"--service-account-private-key-file={self.workdir / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            "--profiling=false",
            "--v=1",
        ])  # fmt: skip

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for process in self.processes:
                if (code := process.exited()) is not None:
                    raise RuntimeError(f"{process.name} exited with {code} waiting for {what}")
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")


def wait_for(
    check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


def create_crd(api: client.ApiClient, crd: dict[str, Any], timeout: float = 30.0) -> None:
    """Create a CustomResourceDefinition and wait until the API server serves it."""
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    name = crd["metadata"]["name"]

    def established() -> bool:
        status = ext.read_custom_resource_definition(name).status
        return any(c.type == "Established" and c.status == "True" for c in status.conditions or [])

    wait_for(established, timeout, what=f"CRD {name} to be established")


def mark_pods_ready(api: client.ApiClient, namespace: str, selector: str) -> int:
    """Report every Pod matching `selector` Running and Ready, as a kubelet would.

    With no scheduler or kubelet, this is how a Deployment becomes Ready: the
    ReplicaSet and Deployment controllers then count the Pods and update their status.
    """
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = [
        {"type": t, "status": "True", "lastTransitionTime": now}
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    for pod in pods:
        body = {"status": {"phase": "Running", "conditions": ready, "startTime": now}}
        core.patch_namespaced_pod_status(pod.metadata.name, namespace, body)
    return len(pods)
