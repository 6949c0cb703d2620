"""The storage initializer: fetches a Model's folder or artifact into its pod before the
server starts. The serving image runs it as an init container:

    python -m modelyard_operator.storage URI DEST

URIs follow the renderers' rules (`spec.py`): a prefix (`s3://bucket/iris/`, or a last
segment without a dot) is copied as its contents into DEST; an archive (`.tar.gz`,
`.tgz`, `.tar`, `.zip`) is unpacked into DEST; any other URI is one file, written to
DEST under its own name. Every scheme fsspec knows works when its library is installed:
`s3://` (s3fs), `gs://` (gcsfs), `az://`/`abfs://` (adlfs), `http(s)://`, `file://`.

S3 credentials and endpoint come from the standard variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`), which a Model passes
through `secretEnv`; KServe's `S3_ENDPOINT` and `S3_USE_HTTPS` are read too.
"""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import fsspec

from modelyard_operator.spec import is_archive, is_prefix

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A URI that could not be fetched; the message names it and why."""


def storage_options(uri: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec options for `uri`'s scheme from the environment."""
    environ = os.environ if environ is None else environ
    scheme = urlparse(uri).scheme
    if scheme not in ("s3", "s3a"):
        return {}
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if not endpoint and environ.get("S3_ENDPOINT"):
        # KServe's variables: a host[:port] and whether to speak TLS to it.
        https = environ.get("S3_USE_HTTPS", "1") not in ("0", "false", "False")
        endpoint = f"{'https' if https else 'http'}://{environ['S3_ENDPOINT']}"
    options: dict[str, Any] = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    if environ.get("AWS_ACCESS_KEY_ID"):
        options["key"] = environ["AWS_ACCESS_KEY_ID"]
        options["secret"] = environ.get("AWS_SECRET_ACCESS_KEY", "")
        if environ.get("AWS_SESSION_TOKEN"):
            options["token"] = environ["AWS_SESSION_TOKEN"]
    elif not environ.get("AWS_PROFILE"):
        # No credentials at all: a public bucket.
        options["anon"] = True
    if region := environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"):
        options["client_kwargs"] = {"region_name": region}
    return options


def _safe_target(dest: Path, name: str) -> Path:
    target = (dest / name).resolve()
    if dest.resolve() not in (target, *target.parents):
        raise FetchError(f"archive member {name!r} would be written outside {dest}; refusing")
    return target


def unpack(archive: Path, dest: Path, name: str) -> int:
    """Unpack a .tar(.gz) or .zip into dest; members escaping it are refused."""
    count = 0
    if name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                _safe_target(dest, member.filename)
                count += not member.is_dir()
            zf.extractall(dest)
        return count
    with tarfile.open(archive) as tf:
        for entry in tf.getmembers():
            _safe_target(dest, entry.name)
            count += entry.isfile()
        # "data": no device files, no absolute or escaping links, no setuid bits.
        tf.extractall(dest, filter="data")
    return count


def _copy_file(fs: fsspec.AbstractFileSystem, path: str, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    size = 0
    with fs.open(path, "rb") as src, partial.open("wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            size += len(chunk)
    partial.replace(target)
    return size


def fetch(uri: str, dest: Path, environ: Mapping[str, str] | None = None) -> list[Path]:
    """Fetch `uri` into the folder `dest` (made if missing); the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, environ))
    except (ImportError, ValueError) as exc:
        raise FetchError(f"{uri}: no filesystem for this URI ({exc})") from exc
    written: list[Path] = []
    try:
        if is_prefix(uri) and not uri.startswith(("http://", "https://")):
            root = path.rstrip("/")
            files = [f for f in fs.find(root) if not f.endswith("/")]
            if not files:
                raise FetchError(f"{uri}: no files under this prefix")
            for remote in files:
                relative = PurePosixPath(remote).relative_to(root)
                target = _safe_target(dest, str(relative))
                _copy_file(fs, remote, target)
                written.append(target)
            return written
        name = PurePosixPath(urlparse(uri).path).name
        if not name:
            raise FetchError(f"{uri}: names no file")
        if is_archive(uri):
            with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
                local = Path(tmp) / name
                _copy_file(fs, path, local)
                unpack(local, dest, name)
            return sorted(p for p in dest.rglob("*") if p.is_file())
        target = dest / name
        _copy_file(fs, path, target)
        return [target]
    except FileNotFoundError as exc:
        raise FetchError(f"{uri}: not found ({exc})") from exc
    except PermissionError as exc:
        raise FetchError(f"{uri}: access denied; check the credentials ({exc})") from exc
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{uri}: {type(exc).__name__}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m modelyard_operator.storage URI DEST", file=sys.stderr)
        return 2
    uri, dest = argv
    began = time.monotonic()
    try:
        files = fetch(uri, Path(dest))
    except FetchError as exc:
        print(f"storage initializer: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in files)
    print(
        f"storage initializer: {uri} -> {dest}: {len(files)} file(s), {size:,} bytes "
        f"in {time.monotonic() - began:.2f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
