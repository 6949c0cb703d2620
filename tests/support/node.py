"""A real single-node Kubernetes 1.20 cluster on this machine, for `make test-cluster`.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet driving a Docker
daemon of its own through dockershim, and kube-proxy (iptables mode). Pods live on a
bridge of their own (`modelyard0`, 10.250.0.0/24) with no route out: the FORWARD chain
drops anything leaving the bridge for another interface and nothing is masqueraded,
so pods reach each other, Service addresses and the host's bridge address only.

Everything it changes on the host is recorded before it is changed, in
`/run/modelyard-cluster/state.json` (process ids, sysctls, iptables dumps, paths it
created), and `down()` undoes it from that record: by the test that started it, or by
`python -m tests.support.node down` after a run that was killed. Processes are stopped
by their recorded ids, never by name.

The binaries come from `scripts/kube/build.sh` (Debian's source package), kubectl from
Debian's `kubernetes-client` package unpacked beside them, Docker from `docker.io`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.support.kube import AdminAccess, cache_dir, ensure_binaries
from tests.support.server import free_port

BRIDGE = "modelyard0"
BRIDGE_IP = "10.250.0.1"
BRIDGE_CIDR = "10.250.0.0/24"
SERVICE_CIDR = "10.251.0.0/24"
NODE_NAME = "modelyard-node"
PAUSE_IMAGE = "k8s.gcr.io/pause:3.2"
STATE_DIR = Path("/run/modelyard-cluster")
STATE_FILE = STATE_DIR / "state.json"
# The same daemon (socket, data) as scripts/images/build.sh: the images it built are here.
DOCKER_RUN = Path("/run/modelyard-docker")
DOCKER_HOST = f"unix://{DOCKER_RUN}/docker.sock"
DOCKER_DATA = Path("/var/lib/modelyard-docker")
CONTROLLERS = (
    "garbagecollector", "namespace", "serviceaccount", "serviceaccount-token",
    "deployment", "replicaset", "endpoint", "endpointslice", "nodelifecycle",
    "job", "cronjob", "podgc",
    # Without metrics it only holds replicas within the autoscaler's min and max.
    "horizontalpodautoscaling",
)  # fmt: skip
# What the kubelet and kube-proxy set, and what the cluster needs; restored at teardown.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# Paths outside the kubelet's --root-dir that it makes; removed only if it made them.
KUBELET_OUTSIDE_PATHS = (
    Path("/var/lib/kubelet/device-plugins"),
    Path("/var/lib/kubelet"),
    Path("/var/log/pods"),
    Path("/var/log/containers"),
)
# Stopped in this order: the node first, the store last.
STOP_ORDER = (
    "kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager",
    "kube-apiserver", "etcd", "dockerd",
)  # fmt: skip
CAP_SYS_RESOURCE = 24

RUNC_WRAPPER = r"""#!/bin/sh
# dockerd's default runtime in the test cluster: runc, with any negative oomScoreAdj of
# the bundle's config.json raised to 0. This host's root lacks CAP_SYS_RESOURCE, so the
# kernel refuses the -998 the kubelet asks for sandboxes (and -997 for Guaranteed pods)
# and runc fails with "can't get final child's PID from pipe: EOF".
bundle=""
prev=""
for arg in "$@"; do
  case "$prev" in --bundle|-b) bundle=$arg ;; esac
  case "$arg" in --bundle=*) bundle=${arg#--bundle=} ;; esac
  prev=$arg
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i -E 's/"oomScoreAdj":[[:space:]]*-[0-9]+/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec RUNC "$@"
"""


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def run(*argv: str, check: bool = True, input: str | None = None, **kw: Any) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr}")
    return result.stdout


def has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    return path.read_text().strip() if path.exists() else None


def write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    if path.exists():
        path.write_text(value + "\n")


def kubectl_binary() -> Path:
    """kubectl v1.20.2 from Debian's kubernetes-client, unpacked beside the other binaries
    (installing the package could clash with another kubectl on the machine)."""
    target = cache_dir() / "bin" / "kubectl"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if subprocess.run(["apt-get", "download", "kubernetes-client"], cwd=tmp,
                          capture_output=True).returncode != 0:  # fmt: skip
            run("apt-get", "update", "-qq")
            run("apt-get", "download", "kubernetes-client", cwd=tmp)
        deb = next(Path(tmp).glob("kubernetes-client_*.deb"))
        run("dpkg-deb", "-x", str(deb), f"{tmp}/root")
        shutil.copy2(f"{tmp}/root/usr/bin/kubectl", target)
    return target


def ensure_node_packages() -> None:
    """Docker Engine, etcd and the tools the harness calls, from Debian."""
    needed = {
        "dockerd": "docker.io", "etcd": "etcd-server", "iptables-save": "iptables",
        "ip": "iproute2", "openssl": "openssl", "conntrack": "conntrack",
        # dockershim's port-forward runs socat in the pod's network namespace.
        "socat": "socat", "nsenter": "util-linux",
    }  # fmt: skip
    missing = sorted({pkg for binary, pkg in needed.items() if not shutil.which(binary)})
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        run("apt-get", "update", "-qq")
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


# -- the record of what was changed, and its undoing ------------------------------------


def _load_state() -> dict[str, Any]:
    return json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}


def _save_state(state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(STATE_FILE)


def _process_matches(pid: int, binary: str) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(argv0).name == Path(binary).name


def _stop_pid(pid: int, binary: str, timeout: float) -> None:
    if not _process_matches(pid, binary):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _process_matches(pid, binary):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _process_matches(pid, binary):
        time.sleep(0.05)


def _mounts_under(root: Path) -> list[str]:
    found = []
    prefix = str(root).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].encode().decode("unicode_escape")
        if mountpoint == str(root) or mountpoint.startswith(prefix):
            found.append(mountpoint)
    return found


def _tables(dump: str) -> set[str]:
    return {line[1:].strip() for line in dump.splitlines() if line.startswith("*")}


def restore_iptables(command: str, dump: str) -> None:
    """Every table as the dump has it. iptables-restore replaces only the tables its input
    names: a table that was empty (absent from the dump) is flushed and its chains
    deleted, leaving the built-in chains empty with ACCEPT policies, as they were."""
    for table in sorted(_tables(run(f"{command}-save")) - _tables(dump)):
        run(command, "-t", table, "-F", check=False)
        run(command, "-t", table, "-X", check=False)
        builtin = {"filter": ("INPUT", "FORWARD", "OUTPUT")}.get(table, ())
        for chain in builtin:
            run(command, "-t", table, "-P", chain, "ACCEPT", check=False)
    if _tables(dump):
        result = subprocess.run(
            [f"{command}-restore"], input=dump, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            log(f"{command}-restore failed: {result.stderr.strip()}")


def _rules(dump: str) -> list[str]:
    """A dump without comments and packet counters, for comparing two of them."""
    return [
        line.split(" [")[0] if line.startswith(":") else line
        for line in dump.splitlines()
        if line and not line.startswith("#")
    ]


def host_differences(saved: dict[str, Any]) -> list[str]:
    """What differs from the record taken before the cluster started."""
    found = []
    for command, dump in saved.get("iptables", {}).items():
        now = {
            t: _table_rules(run(f"{command}-save"), t) for t in ("filter", "nat", "mangle", "raw")
        }
        before = {t: _table_rules(dump, t) for t in now}
        for table in now:
            extra = sorted(set(now[table]) - set(before[table]) - set(_EMPTY_TABLE.get(table, [])))
            if extra:
                found.append(f"{command} -t {table}: rules left: {extra[:5]}")
    for name, value in saved.get("sysctls", {}).items():
        if value is not None and read_sysctl(name) != value:
            found.append(f"sysctl {name} is {read_sysctl(name)}, was {value}")
    if run("ip", "link", "show", BRIDGE, check=False).strip():
        found.append(f"link {BRIDGE} still exists")
    for info in saved.get("processes", {}).values():
        if _process_matches(info["pid"], info["binary"]):
            found.append(f"{info['binary']} (pid {info['pid']}) still runs")
    for root in saved.get("mount_roots", []):
        if _mounts_under(Path(root)):
            found.append(f"mounts left under {root}")
    return found


# What iptables-nft shows of a table that holds nothing (built-in chains, policies).
_EMPTY_TABLE = {
    "filter": [":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT", "COMMIT", "*filter"],
    "nat": [":PREROUTING ACCEPT", ":INPUT ACCEPT", ":OUTPUT ACCEPT", ":POSTROUTING ACCEPT",
            "COMMIT", "*nat"],
    "mangle": [":PREROUTING ACCEPT", ":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT",
               ":POSTROUTING ACCEPT", "COMMIT", "*mangle"],
    "raw": [":PREROUTING ACCEPT", ":OUTPUT ACCEPT", "COMMIT", "*raw"],
}  # fmt: skip


def _table_rules(dump: str, table: str) -> list[str]:
    rules, inside = [], False
    for line in _rules(dump):
        if line.startswith("*"):
            inside = line == f"*{table}"
        if inside:
            rules.append(line)
    return rules


def down() -> dict[str, float]:
    """Undo everything the recorded cluster changed; safe to call twice. Returns timings."""
    state = _load_state()
    if not state:
        return {}
    began = time.monotonic()
    timings: dict[str, float] = {}
    processes: dict[str, dict[str, Any]] = state.get("processes", {})
    env = {**os.environ, "DOCKER_HOST": DOCKER_HOST}
    # The kubelet first, so that it restarts nothing; then every container of our daemon.
    if "kubelet" in processes:
        _stop_pid(processes["kubelet"]["pid"], processes["kubelet"]["binary"], 15)
    if "dockerd" in processes and _process_matches(processes["dockerd"]["pid"], "dockerd"):
        ids = run("docker", "ps", "-aq", check=False, env=env).split()
        if ids:
            run("docker", "rm", "-f", *ids, check=False, env=env)
    timings["containers removed"] = time.monotonic() - began
    for name in STOP_ORDER:
        if name in processes:
            _stop_pid(processes[name]["pid"], processes[name]["binary"], 20)
    for name, info in processes.items():
        if name not in STOP_ORDER:
            _stop_pid(info["pid"], info["binary"], 10)
    timings["processes stopped"] = time.monotonic() - began
    for root in state.get("mount_roots", []):
        for mountpoint in reversed(_mounts_under(Path(root))):
            run("umount", "-l", mountpoint, check=False)
    # Firewall rules: back to the dumps taken before anything was changed (the KUBE-*
    # chains, the mangle rules, our bridge's FORWARD rules all go with it).
    for command, dump in state.get("iptables", {}).items():
        restore_iptables(command, dump)
    if state.get("bridge_created"):
        run("ip", "link", "del", BRIDGE, check=False)
    for name, value in state.get("sysctls", {}).items():
        if value is not None and read_sysctl(name) != value:
            write_sysctl(name, value)
    for path in state.get("created_paths", []):
        shutil.rmtree(path, ignore_errors=True)
    for workdir in state.get("remove_dirs", []):
        shutil.rmtree(workdir, ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)
    timings["teardown"] = time.monotonic() - began
    return timings


# -- the cluster ------------------------------------------------------------------------


@dataclass
class _Process:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            # Under nice: the cluster shares two cores with other work.
            self.proc = subprocess.Popen(
                ["nice", "-n", "19", *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )

    def log(self, tail: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])


@dataclass
class NodeCluster(AdminAccess):
    """Start with `up()` (or as a context manager); `down()` undoes it all."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    processes: dict[str, _Process] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    node_labels: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    bin_dir: Path = field(default_factory=lambda: cache_dir() / "bin")

    # -- public ---------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://{BRIDGE_IP}:{self.port}"

    def docker_env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": DOCKER_HOST}

    def docker(self, *args: str, check: bool = True) -> str:
        return run("docker", *args, check=check, env=self.docker_env())

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return run(
            str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args,
            check=check, input=input,
        )  # fmt: skip

    def logs(self, tail: int = 40) -> str:
        return "\n".join(
            f"----- {name} (last {tail} lines of {p.log_path}) -----\n{p.log(tail)}"
            for name, p in self.processes.items()
        )

    def up(self, timeout: float = 180.0) -> NodeCluster:
        if os.geteuid() != 0:
            raise RuntimeError("the cluster tests run as root: they start dockerd and a kubelet")
        if _load_state():
            log("a previous cluster was not torn down: tearing it down first")
            down()
        ensure_node_packages()
        ensure_binaries()
        kubectl_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._phase("host prepared", self._prepare_host)
            self._phase("dockerd up", lambda: self._start_dockerd(deadline))
            self._phase("pause image", self._pause_image)
            self._phase("control plane up", lambda: self._start_control_plane(deadline))
            self._phase("node Ready", lambda: self._start_node(deadline))
        except BaseException as exc:
            logs = self.logs()
            self.down()
            raise RuntimeError(f"the cluster failed to start: {exc}\n{logs}") from exc
        return self

    def down(self) -> None:
        """Tear down, then check the host is as it was: `leftovers` says what is not."""
        began = time.monotonic()
        saved = _load_state()
        for name, seconds in down().items():
            self.timings[f"down: {name}"] = seconds
        self.timings["down"] = time.monotonic() - began
        self.leftovers = host_differences(saved) if saved else []

    def __enter__(self) -> NodeCluster:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # -- internals -----------------------------------------------------------------------

    def _phase(self, name: str, action: Callable[[], None]) -> None:
        began = time.monotonic()
        action()
        self.timings[name] = time.monotonic() - began
        log(f"{name}: {self.timings[name]:.1f} s")

    def _record(self, **changes: Any) -> None:
        state = _load_state()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(state.get(key), dict):
                state[key].update(value)
            elif isinstance(value, list) and isinstance(state.get(key), list):
                state[key].extend(value)
            else:
                state[key] = value
        _save_state(state)

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        process = _Process(name, argv, self.workdir / f"{name}.log", env)
        self.processes[name] = process
        process.start()
        assert process.proc is not None
        # nice execs the binary in place: the pid is the binary's.
        self._record(processes={name: {"pid": process.proc.pid, "binary": argv[0]}})

    def _prepare_host(self) -> None:
        # Everything is recorded before anything is changed.
        dumps = {}
        for command in ("iptables", "ip6tables"):
            if shutil.which(f"{command}-save"):
                dumps[command] = run(f"{command}-save")
        created = [str(p) for p in KUBELET_OUTSIDE_PATHS if not p.exists()]
        self._record(
            processes={},
            sysctls={name: read_sysctl(name) for name in SYSCTLS},
            iptables=dumps,
            created_paths=created,
            mount_roots=[str(self.workdir / "kubelet")],
            remove_dirs=[str(self.workdir / "kubelet")],
            bridge_created=False,
        )
        if run("ip", "link", "show", BRIDGE, check=False):
            raise RuntimeError(f"a link named {BRIDGE} already exists; remove it first")
        self._record(bridge_created=True)
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        # Service addresses stay on the bridge: a packet no rule rewrote goes nowhere.
        run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE)
        # Pods reach each other and the host; nothing leaves the bridge for elsewhere.
        run("iptables", "-I", "FORWARD", "1", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        run("iptables", "-I", "FORWARD", "1", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
        # Routing between the bridge and Service addresses (DNAT) needs forwarding on;
        # the DROP above keeps it from reaching any other interface.
        write_sysctl("net.ipv4.ip_forward", "1")
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        (self.workdir / "resolv.conf").write_text("nameserver 127.0.0.1\n")

    def _start_dockerd(self, deadline: float) -> None:
        DOCKER_RUN.mkdir(parents=True, exist_ok=True)
        runtime_args: list[str] = []
        if not has_capability(CAP_SYS_RESOURCE):
            wrapper = self.workdir / "runc-oom-wrapper"
            wrapper.write_text(RUNC_WRAPPER.replace("RUNC", shutil.which("runc") or "runc"))
            wrapper.chmod(0o755)
            runtime_args = [
                f"--add-runtime=modelyard-runc={wrapper}",
                "--default-runtime=modelyard-runc",
            ]
        self._spawn("dockerd", [
            shutil.which("dockerd") or "dockerd",
            f"--host={DOCKER_HOST}",
            f"--exec-root={DOCKER_RUN / 'exec'}",
            f"--pidfile={DOCKER_RUN / 'docker.pid'}",
            f"--data-root={DOCKER_DATA}",
            f"--bridge={BRIDGE}",
            "--iptables=false",
            "--ip-masq=false",
            # Hairpin: a pod calling its own Service through the bridge.
            "--userland-proxy=false",
            "--oom-score-adjust=0",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            *runtime_args,
        ])  # fmt: skip
        self._wait(
            lambda: bool(
                self.docker("version", "--format", "{{.Server.Version}}", check=False).strip()
            ),
            deadline,
            "dockerd",
        )

    def _pause_image(self) -> None:
        if self.docker("images", "-q", PAUSE_IMAGE).strip():
            return
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy2(self.bin_dir / "pause", Path(tmp) / "pause")
            tar = subprocess.run(
                ["tar", "-C", tmp, "-c", "pause"], capture_output=True, check=True
            ).stdout
            subprocess.run(
                ["docker", "import", "-c", 'ENTRYPOINT ["/pause"]', "-", PAUSE_IMAGE],
                input=tar, capture_output=True, check=True, env=self.docker_env(),
            )  # fmt: skip

    def _write_credentials(self) -> None:
        (self.workdir / "tokens.csv").write_text(f"{self.token},admin,admin-uid,system:masters\n")
        w = self.workdir
        openssl = ["openssl"]
        run(*openssl, "genrsa", "-out", str(w / "sa.key"), "2048")
        run(*openssl, "rsa", "-in", str(w / "sa.key"), "-pubout", "-out", str(w / "sa.pub"))
        # A CA for the kubelet's client authentication: the API server presents a client
        # certificate of it when it proxies logs, exec and port-forward to the kubelet.
        run(*openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=modelyard-test-kubelet-ca",
            "-keyout", str(w / "kubelet-ca.key"), "-out", str(w / "kubelet-ca.crt"))  # fmt: skip
        run(*openssl, "req", "-newkey", "rsa:2048", "-nodes",
            "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "-keyout", str(w / "apiserver-kubelet.key"),
            "-out", str(w / "apiserver-kubelet.csr"))  # fmt: skip
        run(*openssl, "x509", "-req", "-in", str(w / "apiserver-kubelet.csr"),
            "-CA", str(w / "kubelet-ca.crt"), "-CAkey", str(w / "kubelet-ca.key"),
            "-CAcreateserial", "-days", "2", "-out", str(w / "apiserver-kubelet.crt"))  # fmt: skip

    def _start_control_plane(self, deadline: float) -> None:
        w = self.workdir
        self._write_credentials()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn("etcd", [
            shutil.which("etcd") or "etcd", "--name=modelyard-node",
            f"--data-dir={w / 'etcd'}",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=modelyard-node={peer_url}",
            "--unsafe-no-fsync", "--logger=zap", "--log-level=warn",
        ])  # fmt: skip
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={client_url}",
            # The bridge address: pods reach it through the `kubernetes` Service.
            f"--bind-address={BRIDGE_IP}",
            f"--advertise-address={BRIDGE_IP}",
            f"--secure-port={self.port}",
            f"--cert-dir={w / 'certs'}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={w / 'apiserver-kubelet.crt'}",
            f"--kubelet-client-key={w / 'apiserver-kubelet.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "--v=1",
        ])  # fmt: skip
        self._wait(lambda: self._ok("/readyz"), deadline, "kube-apiserver /readyz")
        self._write_kubeconfig()
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--secure-port=0", "--port=0",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={w / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # A node that stops reporting is noticed within 20 s, not 40.
            "--node-monitor-grace-period=20s",
            "--profiling=false", "--v=1",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--port=0", "--secure-port=0",
            "--profiling=false", "--v=1",
        ])  # fmt: skip
        self._wait(
            lambda: self._ok("/api/v1/namespaces/default/serviceaccounts/default"),
            deadline,
            "kube-controller-manager (default ServiceAccount)",
        )

    def _start_node(self, deadline: float) -> None:
        w = self.workdir
        root = w / "kubelet"
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.node_labels.items()))
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"),
            f"--kubeconfig={self.kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={BRIDGE_IP}",
            *([f"--node-labels={labels}"] if labels else []),
            "--container-runtime=docker",
            f"--docker-endpoint={DOCKER_HOST}",
            f"--container-runtime-endpoint=unix://{w / 'dockershim.sock'}",
            f"--pod-infra-container-image={PAUSE_IMAGE}",
            "--cgroup-driver=cgroupfs",
            "--cgroups-per-qos=false",
            "--enforce-node-allocatable=",
            "--fail-swap-on=false",
            "--hairpin-mode=none",
            # Reached by the API server only (logs, exec, port-forward), with a client
            # certificate of the test's CA.
            f"--address={BRIDGE_IP}",
            f"--port={free_port()}",
            "--read-only-port=0",
            "--healthz-port=0",
            "--anonymous-auth=false",
            f"--client-ca-file={w / 'kubelet-ca.crt'}",
            "--authorization-mode=AlwaysAllow",
            f"--root-dir={root}",
            f"--cert-dir={w / 'kubelet-pki'}",
            f"--experimental-dockershim-root-directory={w / 'dockershim'}",
            f"--seccomp-profile-root={w / 'seccomp'}",
            f"--volume-plugin-dir={w / 'volume-plugins'}",
            f"--resolv-conf={w / 'resolv.conf'}",
            "--image-gc-high-threshold=100",
            "--image-gc-low-threshold=99",
            "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
            "--node-status-update-frequency=1s",
            "--oom-score-adj=0",
            "--v=1",
        ])  # fmt: skip
        self._spawn("kube-proxy", [
            str(self.bin_dir / "kube-proxy"),
            f"--kubeconfig={self.kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            f"--bind-address={BRIDGE_IP}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={BRIDGE_CIDR}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--healthz-bind-address=127.0.0.1:{free_port()}",
            "--conntrack-max-per-core=0", "--conntrack-min=0",
            "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
            "--oom-score-adj=0",
            "--v=1",
        ])  # fmt: skip
        core = client.CoreV1Api(self.api_client())

        def node_ready() -> bool:
            try:
                node = core.read_node(NODE_NAME)
            except client.ApiException:
                return False
            ready = any(
                c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
            )
            return ready and not any(t.effect == "NoSchedule" for t in node.spec.taints or [])

        self._wait(node_ready, deadline, f"node {NODE_NAME} Ready and schedulable")

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.proc is not None and (code := process.proc.poll()) is not None:
                    raise RuntimeError(f"{name} exited with {code} waiting for {what}")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["down"]:
        timings = down()
        print("cluster torn down" if timings else "no cluster to tear down")
        return 0
    print("usage: python -m tests.support.node down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
