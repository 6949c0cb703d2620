"""A real S3 endpoint for tests: moto's server (`moto_server`, PyPI `moto[server]`) in a
subprocess on a free port, on loopback unless told otherwise.

It speaks the S3 REST API that boto3 and s3fs speak to AWS; buckets live in its memory
and vanish when it stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.support.server import free_port

# moto accepts any credentials; these make boto3 and s3fs sign requests as AWS would.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "modelyard-test",
    "AWS_SECRET_ACCESS_KEY": "modelyard-test-secret",
    "AWS_REGION": "us-east-1",
}


@dataclass
class S3Server:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables a client (s3fs, boto3, the storage initializer) needs."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = 30.0) -> S3Server:
        binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        if not Path(binary).exists():
            raise RuntimeError("moto_server not found: `pip install 'moto[server]'` (make test)")
        log = self.log_path.open("wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [binary, "-H", self.host, "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **CREDENTIALS},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                requests.get(self.endpoint + "/", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto_server did not answer on {self.endpoint}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def upload_folder(
        self,
        folder: Path,
        bucket: str,
        prefix: str,
        skip: Collection[str] = (),
        replace: Mapping[str, bytes] | None = None,
    ) -> list[str]:
        """Upload every file under `folder` to s3://bucket/prefix/..., making the bucket.
        Paths with a part in `skip` stay behind; `replace` gives other bytes for some
        files (by their path relative to `folder`)."""
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
        keys = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if any(part in skip for part in relative.parts):
                continue
            key = f"{prefix.strip('/')}/{relative.as_posix()}"
            if replace and relative.as_posix() in replace:
                s3.put_object(Bucket=bucket, Key=key, Body=replace[relative.as_posix()])
            else:
                s3.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
