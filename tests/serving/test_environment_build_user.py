"""A package's own build code runs with no write access to the model folder or the
server's packages: the server here (as in containers and CI) is root, so the build runs
as nobody.

The package comes from a local simple index given to the server (MODELYARD_ENV_INDEX_URL),
as an sdist whose in-tree build backend tries to write into the model folder and into
the server's site-packages, and records what happened in the wheel it then builds.
"""

from __future__ import annotations

import io
import json
import os
import site
import tarfile
from pathlib import Path

import pytest

from modelyard import environments

BACKEND = """
import json, os, zipfile

TARGETS = {targets!r}
METADATA = "Metadata-Version: 2.1\\nName: evilpkg\\nVersion: 1.0\\n"
WHEEL = "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"


def _attempts():
    found = {{"uid": os.getuid(), "cwd": os.getcwd()}}
    for name, path in TARGETS.items():
        try:
            with open(path, "w") as f:
                f.write("written by a build")
            found[name] = "written"
        except OSError as e:
            found[name] = type(e).__name__
    return found


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "evilpkg-1.0-py3-none-any.whl"
    report = "REPORT = " + repr(json.dumps(_attempts())) + "\\n"
    info = "evilpkg-1.0.dist-info"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as whl:
        whl.writestr("evilpkg_report.py", report)
        whl.writestr(f"{{info}}/METADATA", METADATA)
        whl.writestr(f"{{info}}/WHEEL", WHEEL)
        whl.writestr(f"{{info}}/RECORD", "")
    return name
"""

PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "evilpkg"
version = "1.0"
"""


def add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def make_index(root: Path, targets: dict[str, str]) -> Path:
    """A PEP 503 simple index in ``root`` holding the sdist evilpkg 1.0."""
    project = root / "simple" / "evilpkg"
    project.mkdir(parents=True)
    with tarfile.open(project / "evilpkg-1.0.tar.gz", "w:gz") as tar:
        add(tar, "evilpkg-1.0/pyproject.toml", PYPROJECT)
        add(tar, "evilpkg-1.0/backend.py", BACKEND.format(targets=targets))
        add(tar, "evilpkg-1.0/PKG-INFO", "Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n")
    (project / "index.html").write_text('<a href="evilpkg-1.0.tar.gz">evilpkg-1.0.tar.gz</a>\n')
    (root / "simple" / "index.html").write_text('<a href="evilpkg/">evilpkg</a>\n')
    return root / "simple"


def test_a_packages_build_cannot_write_the_model_folder_or_the_servers_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.geteuid() == 0, "this test is about a server running as root (containers, CI)"
    folder = tmp_path / "models" / "evil"
    folder.mkdir(parents=True)
    (folder / "requirements.txt").write_text("evilpkg==1.0\n")
    server_site = Path(next(p for p in site.getsitepackages() if Path(p).is_dir()))
    targets = {
        "model_folder": str(folder / "from-the-build.txt"),
        "server_site_packages": str(server_site / "from-the-build.txt"),
    }
    index = make_index(tmp_path / "index", targets)
    monkeypatch.setenv(environments.INDEX_URL_VAR, index.as_uri())

    env = environments.build(folder / "requirements.txt", cache=tmp_path / "envs")

    # The backend ran (its wheel is installed) and recorded each write refused.
    report_file = env.site_packages() / "evilpkg_report.py"
    namespace: dict[str, str] = {}
    exec(report_file.read_text(), namespace)
    report = json.loads(namespace["REPORT"])
    assert report["uid"] != 0, report
    assert report["model_folder"] == "PermissionError", report
    assert report["server_site_packages"] == "PermissionError", report
    assert not Path(report["cwd"]).is_relative_to(folder), report
    assert not (folder / "from-the-build.txt").exists()
    assert not (server_site / "from-the-build.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["requirements.txt"]
    # The environment is the server's user's afterwards, not the build user's.
    assert env.path.stat().st_uid == 0
    assert report_file.stat().st_uid == 0
