"""The storage initializer against a real S3 endpoint (moto's server on loopback) and a
real HTTP server: folders, archives, single files, and the errors a pod's log shows."""

from __future__ import annotations

import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from modelyard_operator.storage import FetchError, fetch, storage_options

from tests.support.s3 import S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with S3Server(log_path=log) as server:
        yield server


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.yaml").write_text("name: iris\n")
    (src / "model.joblib").write_bytes(bytes(range(256)) * 4096)  # 1 MiB, several chunks
    (src / "sub" / "features.sql").write_text("select 1\n")
    return src


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname=".")
    return buffer.getvalue()


def test_prefix_is_copied_as_its_contents(s3: S3Server, folder: Path, tmp_path: Path) -> None:
    s3.upload_folder(folder, "models", "iris/1")
    dest = tmp_path / "models" / "iris"
    written = fetch("s3://models/iris/1/", dest, s3.env())
    assert tree(dest) == tree(folder)
    assert len(written) == 3


def test_archive_is_unpacked(s3: S3Server, folder: Path, tmp_path: Path) -> None:
    s3.client().put_object(Bucket="models", Key="archives/iris.tar.gz", Body=tar_gz(folder))
    dest = tmp_path / "dest"
    fetch("s3://models/archives/iris.tar.gz", dest, s3.env())
    assert tree(dest) == tree(folder)


def test_single_file_lands_under_its_name(s3: S3Server, folder: Path, tmp_path: Path) -> None:
    s3.upload_folder(folder, "models", "single")
    dest = tmp_path / "dest"
    assert fetch("s3://models/single/model.joblib", dest, s3.env()) == [dest / "model.joblib"]
    assert (dest / "model.joblib").read_bytes() == (folder / "model.joblib").read_bytes()


def test_cli_in_a_subprocess_as_the_init_container_runs_it(
    s3: S3Server, folder: Path, tmp_path: Path
) -> None:
    s3.upload_folder(folder, "models", "cli")
    dest = tmp_path / "dest"
    env = {**os.environ, **s3.env()}
    ok = subprocess.run(
        [sys.executable, "-m", "modelyard_operator.storage", "s3://models/cli/", str(dest)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "3 file(s)" in ok.stdout
    assert tree(dest) == tree(folder)
    missing = subprocess.run(
        [sys.executable, "-m", "modelyard_operator.storage", "s3://models/nope/", str(dest)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "s3://models/nope/: no files under this prefix" in missing.stderr


def test_missing_file_and_wrong_credentials_are_named(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"s3://models/absent\.joblib: not found"):
        fetch("s3://models/absent.joblib", tmp_path / "d", s3.env())
    with pytest.raises(FetchError, match=r"s3://no-such-bucket/x\.joblib"):
        fetch("s3://no-such-bucket/x.joblib", tmp_path / "d", s3.env())


def test_http_archive_and_file(folder: Path, tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "iris.tar.gz").write_bytes(tar_gz(folder))
    (served / "model.joblib").write_bytes((folder / "model.joblib").read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        try:
            fetch(f"{base}/iris.tar.gz", tmp_path / "a")
            fetch(f"{base}/model.joblib", tmp_path / "b")
            with pytest.raises(FetchError, match="not found"):
                fetch(f"{base}/absent.tar.gz", tmp_path / "c")
        finally:
            httpd.shutdown()
    assert tree(tmp_path / "a") == tree(folder)
    assert tree(tmp_path / "b") == {"model.joblib": (folder / "model.joblib").read_bytes()}


def test_archive_member_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(FetchError, match="outside"):
        fetch(archive.as_uri(), tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()


def test_s3_options_from_the_environment() -> None:
    assert storage_options("s3://b/k", {}) == {"anon": True}
    assert storage_options(
        "s3://b/k", {"AWS_ACCESS_KEY_ID": "a", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    ) == {"endpoint_url": "http://127.0.0.1:9000", "key": "a", "secret": ""}
    kserve = {"AWS_PROFILE": "p", "S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"}
    assert storage_options("s3://b/k", kserve) == {"endpoint_url": "http://minio:9000"}
    assert storage_options("https://example.invalid/x", {}) == {}
