"""`modelyard envs` and the builds behind it: hashed requirements (``--require-hashes``),
index lines refused, one build of a hash at a time, prune saying what and why.

Builds install six from PyPI through uv's cache, so they take about a second."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from modelyard import environments
from tests.support.declarations import run_cli as run


def run_cli(*args: str) -> tuple[int, str]:
    done = run(*args)
    return done.returncode, done.stdout + done.stderr


HASHED = """--require-hashes
six==1.16.0 \\
    --hash=sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926 \\
    --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254
"""

PREDICTOR = """
class P:
    def predict(self, instances):
        return instances
"""


def model_folder(root: Path, name: str, requirements: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "predictor.py").write_text(PREDICTOR)
    (folder / "model.yaml").write_text(
        f"name: {name}\nversion: '1'\nruntime: predictor\npredictor: predictor.py:P\n"
    )
    (folder / "requirements.txt").write_text(requirements)
    return folder


@pytest.fixture
def envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "envs"
    monkeypatch.setenv(environments.ENVS_DIR_VAR, str(where))
    return where


def test_hashed_requirements_build_and_a_wrong_hash_is_refused_by_uv(
    envs: Path, tmp_path: Path
) -> None:
    good = model_folder(tmp_path / "models", "hashed", HASHED)
    code, out = run_cli("envs", "build", str(good))
    assert code == 0, out
    env = environments.Env(Path(out.strip().splitlines()[-1]))
    assert (env.site_packages() / "six-1.16.0.dist-info").is_dir()

    tampered = HASHED.replace("sha256:1e61c", "sha256:0e61c").replace("sha256:8abb", "sha256:0abb")
    bad = model_folder(tmp_path / "models", "tampered", tampered)
    code, out = run_cli("envs", "build", str(bad))
    assert code != 0
    assert "installing" in out and "hash" in out.lower(), out
    assert not list(envs.glob(".tmp-*")), "a failed build leaves nothing behind"


def test_an_index_line_in_a_folder_is_refused(envs: Path, tmp_path: Path) -> None:
    folder = model_folder(
        tmp_path / "models", "indexed", "-i https://elsewhere.example/simple\nsix\n"
    )
    code, out = run_cli("envs", "build", str(folder))
    assert code != 0
    assert "line 1: -i is not taken from a model folder" in out
    assert "UV_INDEX_URL" in out


def test_concurrent_builds_of_one_hash_wait_for_one_another(envs: Path, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    built: list[environments.Env] = []
    started: list[float] = []

    def build() -> None:
        started.append(time.monotonic())
        built.append(environments.build(requirements))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({env.path for env in built}) == 1
    assert [p.name for p in envs.iterdir() if not p.name.startswith(".")] == [built[0].hash]
    assert not list(envs.glob(".tmp-*"))


def test_prune_keeps_what_folders_use_and_says_why_it_removes(envs: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    used = model_folder(models, "used", "six==1.16.0\n")
    unused_reqs = tmp_path / "old.txt"
    unused_reqs.write_text("six==1.15.0\n")
    assert run_cli("envs", "build", str(used))[0] == 0
    unused = environments.build(unused_reqs)

    code, out = run_cli("envs", "list", str(models))
    assert code == 0, out
    assert "six==1.15.0" in out and str(used) in out

    code, out = run_cli("envs", "prune", str(models))
    assert code == 0, out
    assert f"removed {unused.hash}: used by no model folder" in out
    assert "1 environment(s) removed" in out
    assert [p.name for p in envs.iterdir() if not p.name.startswith(".")] == [
        environments.folder_hash(used)
    ]

    # Unused for a day: gone with --older-than-days.
    kept = environments.installed_envs()[0]
    old = time.time() - 2 * 86400
    for name in (environments.LAST_USED, environments.COMPLETE_MARKER):
        os.utime(kept.path / name, (old, old))
    code, out = run_cli("envs", "prune", "--older-than-days", "1")
    assert code == 0, out
    assert f"removed {kept.hash}: not used for 2.0 days" in out
    assert environments.installed_envs() == []
