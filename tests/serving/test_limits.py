"""What one client may cost a real `modelyard serve`: bodies bounded on every path
(decompressed size counted), gRPC metadata bounded, deadlines for slow clients, and a
SIGTERM that answers what was received and still ends in bounded time."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.serving.test_live_registry import SETOSA
from tests.support.server import ServerProcess, copy_model, running

LIMIT_MB = 8
LIMIT = LIMIT_MB * 1024 * 1024
METADATA_KB = 128
IRIS = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}

SLOW_MODEL = """
import asyncio
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class SlowModel(MLModel):
    async def predict(self, payload):
        await asyncio.sleep(1.5)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("answer", __import__("numpy").array([1]))],
        )
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One process (its pid is the serving process) with small limits and deadlines."""
    root = tmp_path_factory.mktemp("limits")
    copy_model("iris", root / "models")
    args = (
        "--processes", "1", "--max-message-mb", str(LIMIT_MB),
        "--max-metadata-kb", str(METADATA_KB),
        "--header-timeout-s", "2", "--body-timeout-s", "3", "--idle-timeout-s", "3",
    )  # fmt: skip
    with running(ServerProcess(root / "models", root / "serve.log", extra_args=args)) as s:
        yield s


def iris_ok(server: ServerProcess) -> None:
    """A good call is still answered."""
    r = requests.post(f"{server.base}/v2/models/iris/infer", json=IRIS, timeout=30)
    assert r.status_code == 200, r.text


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def peak_growth(server: ServerProcess, call: Callable[[], None]) -> int:
    """How far, in bytes, the serving process's resident memory rose above where it was
    while ``call`` ran (the kernel's peak, reset first: nothing is missed between
    samples)."""
    assert server.proc is not None
    pid = server.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss_kb(pid, "VmRSS")
    call()
    return (rss_kb(pid, "VmHWM") - before) * 1024


def gzip_of_zeros(size: int) -> bytes:
    """``size`` zero bytes, gzipped (about 1 MB for 1 GiB), made a piece at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    piece = bytes(16 * 1024 * 1024)
    out = [packer.compress(piece) for _ in range(size // len(piece))]
    out.append(packer.flush())
    return b"".join(out)


def assert_names_limit(r: requests.Response) -> None:
    assert r.status_code == 413, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert str(LIMIT) in error and "--max-message-mb" in error, error


# -- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/models/iris/generate"])
def test_gzip_bomb_stops_at_the_limit(server: ServerProcess, path: str) -> None:
    bomb = gzip_of_zeros(1024 * 1024 * 1024)
    assert len(bomb) < 2 * 1024 * 1024
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    answers: list[requests.Response] = []

    def send() -> None:
        answers.append(requests.post(server.base + path, data=bomb, headers=headers, timeout=60))

    grew = peak_growth(server, send)
    assert_names_limit(answers[0])
    assert "decompressed" in answers[0].json()["error"]
    assert grew < 2 * LIMIT, f"the process grew by {grew / 2**20:.0f} MB"
    iris_ok(server)


@pytest.mark.parametrize("path", ["/v2/models/iris/generate", "/v2/models/iris/infer"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_body_refused_on_every_path(server: ServerProcess, path: str, chunked: bool) -> None:
    body = b"[" + b"1," * (5 * 1024 * 1024) + b"1]"  # 10 MB over an 8 MB limit
    data: bytes | Iterator[bytes] = body
    if chunked:  # no Content-Length: the size is only known as it arrives
        data = (body[i : i + 1024 * 1024] for i in range(0, len(body), 1024 * 1024))
    answers: list[requests.Response] = []

    def send() -> None:
        try:
            answers.append(requests.post(server.base + path, data=data, timeout=60))
        except requests.ConnectionError:
            # The server answers 413 and closes as soon as it is over the limit; a client
            # still sending may see the close before the answer. Asked again, at once:
            answers.append(requests.post(server.base + path, data=body, timeout=60))

    grew = peak_growth(server, send)
    assert_names_limit(answers[-1])
    assert grew < 2 * LIMIT, f"the process grew by {grew / 2**20:.0f} MB"
    iris_ok(server)


def test_body_under_the_limit_gzipped_or_not_is_answered(server: ServerProcess) -> None:
    plain = json.dumps(IRIS).encode()
    for data, headers in [
        (plain, {}),
        (gzip.compress(plain), {"Content-Encoding": "gzip"}),
        # Two gzip members, one after the other, are one body (RFC 1952).
        (gzip.compress(plain[:10]) + gzip.compress(plain[10:]), {"Content-Encoding": "gzip"}),
    ]:
        r = requests.post(
            f"{server.base}/v2/models/iris/infer",
            data=data,
            headers={"Content-Type": "application/json", **headers},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [0]


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/models/iris/generate"])
@pytest.mark.parametrize(
    "body", [b"this is not gzip", gzip.compress(json.dumps(IRIS).encode())[:-12]],
    ids=["not-gzip", "truncated"],
)  # fmt: skip
def test_corrupt_gzip_is_a_400_naming_the_encoding(
    server: ServerProcess, path: str, body: bytes
) -> None:
    r = requests.post(
        server.base + path, data=body, headers={"Content-Encoding": "gzip"}, timeout=30
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert "Content-Encoding: gzip" in r.json()["error"]
    iris_ok(server)


def test_unknown_encoding_is_a_415(server: ServerProcess) -> None:
    r = requests.post(
        f"{server.base}/v2/models/iris/infer",
        data=b"...",
        headers={"Content-Encoding": "br"},
        timeout=30,
    )
    assert r.status_code == 415, r.text
    assert "'br'" in r.json()["error"]


# -- slow clients ------------------------------------------------------------------------


def read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    """What the server sends until it closes; fails if it has not closed in ``limit_s``."""
    sock.settimeout(limit_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {limit_s} s; got {out!r}") from None
    return out


def trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send ``data`` a byte at a time, one every 0.2 s, until closed or told to stop."""
    for byte in data:
        if stop.wait(0.2):
            return
        try:
            sock.send(bytes([byte]))
        except OSError:
            return


def slow_client(server: ServerProcess, data: bytes, stop: threading.Event) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    threading.Thread(target=trickle, args=(sock, data, stop), daemon=True).start()
    return sock


REQUEST_HEAD = (
    b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
)


def test_slow_headers_get_a_408_and_are_closed(server: ServerProcess) -> None:
    stop = threading.Event()
    try:
        socks = [slow_client(server, REQUEST_HEAD * 100, stop) for _ in range(50)]
        silent = socket.create_connection(("127.0.0.1", server.http_port))  # sends nothing
        iris_ok(server)  # meanwhile, others are answered
        for sock in [*socks, silent]:
            answer = read_until_closed(sock, 30)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"--header-timeout-s" in answer
            sock.close()
    finally:
        stop.set()
    iris_ok(server)


def test_slow_body_gets_a_408_and_is_closed(server: ServerProcess) -> None:
    stop = threading.Event()
    body = json.dumps(IRIS).encode()
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    try:
        sock.sendall(REQUEST_HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
        threading.Thread(target=trickle, args=(sock, body, stop), daemon=True).start()
        answer = read_until_closed(sock, 30)
    finally:
        stop.set()
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"--body-timeout-s" in answer
    iris_ok(server)


def test_idle_connection_is_closed(server: ServerProcess) -> None:
    body = json.dumps(IRIS).encode()
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(REQUEST_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = read_until_closed(sock, 30)  # answered, kept alive, then closed when idle
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"connection: close" not in answer.lower()


# -- gRPC metadata -----------------------------------------------------------------------


def grpc_iris(server: ServerProcess, headers: dict[str, str]) -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("input-0", [1, 4], "FP64")
        inp.set_data_from_numpy(np.array([SETOSA]))
        return client.infer("iris", [inp], headers=headers, client_timeout=30)
    finally:
        client.close()


def test_grpc_metadata_over_the_limit_is_refused(server: ServerProcess) -> None:
    assert grpc_iris(server, {"x-small": "a" * 1024}).as_numpy("predict") is not None
    for size in (METADATA_KB * 1024 + 1024, 16 * 1024 * 1024):
        with pytest.raises(InferenceServerException) as e:
            grpc_iris(server, {"x-large": "a" * size})
        assert "StatusCode.OK" not in str(e.value)
    assert grpc_iris(server, {}).as_numpy("predict") is not None


def test_grpc_metadata_bounded_without_the_front_end(tmp_path: Path) -> None:
    """MLServer's gRPC server on the port itself holds the same bound."""
    copy_model("iris", tmp_path / "models")
    server = ServerProcess(
        tmp_path / "models",
        tmp_path / "serve.log",
        extra_args=("--processes", "1", "--max-metadata-kb", "16"),
        env={"MODELYARD_GRPC_FRONT": "off"},
    )
    with running(server):
        assert grpc_iris(server, {"x-small": "a" * 1024}).as_numpy("predict") is not None
        for size in (32 * 1024, 16 * 1024 * 1024):
            with pytest.raises(InferenceServerException) as e:
                grpc_iris(server, {"x-large": "a" * size})
            assert "StatusCode.OK" not in str(e.value)
        assert grpc_iris(server, {}).as_numpy("predict") is not None


def test_grpc_metadata_key_longer_than_the_frame_holds_is_refused(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as e:
        grpc_iris(server, {"x-" + "k" * 70_000: "v"})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
    assert "metadata key of 70002 bytes" in e.value.message()
    assert grpc_iris(server, {}).as_numpy("predict") is not None


# -- SIGTERM -----------------------------------------------------------------------------


def test_sigterm_answers_what_was_received_and_ends_in_bounded_time(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "slow").mkdir(parents=True)
    (models / "slow" / "slowmodel.py").write_text(SLOW_MODEL)
    (models / "slow" / "model-settings.json").write_text(
        json.dumps({"name": "slow", "implementation": "slowmodel.SlowModel"})
    )
    args = ("--processes", "1", "--shutdown-grace-s", "4", "--body-timeout-s", "300")
    server = ServerProcess(models, tmp_path / "serve.log", extra_args=args)
    with running(server):
        assert server.proc is not None
        # A client that would hold the process for 300 s if nothing bounded the drain;
        # its request is not received (its body is not all in), and is refused.
        slow = socket.create_connection(("127.0.0.1", server.http_port))
        slow.sendall(REQUEST_HEAD + b"Content-Length: 1000\r\n\r\n{")
        body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]}

        def call(_: int) -> int:
            with requests.Session() as s:
                return s.post(
                    f"{server.base}/v2/models/slow/infer", json=body, timeout=60
                ).status_code

        with ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(call, i) for i in range(8)]
            time.sleep(0.5)  # sent; each is answered 1.5 s after it is read
            os.kill(server.proc.pid, signal.SIGTERM)
            stopping = time.monotonic()
            codes = [c.result() for c in calls]
            server.proc.wait(timeout=60)
            took = time.monotonic() - stopping
        refused = read_until_closed(slow, 30)
        slow.close()
    assert codes == [200] * 8
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert b"send the request again" in refused
    assert server.proc.returncode == 0, server.log()
    assert took < 30, f"took {took:.0f} s to stop with a grace period of 4 s"
