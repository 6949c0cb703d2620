"""`modelyard image`: a Dockerfile FROM the serving image whose build step is the very
build a server does, so the server finds the baked environment under its hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard import environments
from tests.cli.test_envs import model_folder
from tests.support.declarations import run_cli


def test_the_image_bakes_the_environment_the_server_looks_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = model_folder(tmp_path / "models", "churn", "six==1.16.0\n")
    context = tmp_path / "context"
    done = run_cli(
        "image", str(folder), "--tag", "registry.example/churn:1", "--context", str(context),
        "--base", "registry.example/modelyard:0.1.0", "--no-build",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"docker build -t registry.example/churn:1 {context}" in done.stdout
    dockerfile = (context / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM registry.example/modelyard:0.1.0" in dockerfile
    assert "ENV MODELYARD_ENVS_DIR=/opt/modelyard-envs" in dockerfile
    assert (context / "requirements.txt").read_text() == "six==1.16.0\n"

    # The Dockerfile's build step, run here: the server then finds it, built.
    envs = tmp_path / "envs"
    monkeypatch.setenv(environments.ENVS_DIR_VAR, str(envs))
    run_line = next(line for line in dockerfile.splitlines() if line.startswith("RUN "))
    assert run_line.startswith("RUN modelyard envs build /opt/modelyard-envs/.requirements/")
    built = run_cli("envs", "build", str(context / "requirements.txt"))
    assert built.returncode == 0, built.stderr
    assert Path(built.stdout.strip().splitlines()[-1]).name == environments.folder_hash(folder)


def test_a_folder_without_requirements_needs_no_image(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "models", "plain", "")
    (folder / "requirements.txt").unlink()
    done = run_cli("image", str(folder), "--tag", "t", "--context", str(tmp_path / "c"))
    assert done.returncode != 0
    assert "no requirements.txt" in done.stderr


def test_the_index_and_network_of_the_build_are_the_callers(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "models", "churn", "six==1.16.0\n")
    context = tmp_path / "context"
    done = run_cli(
        "image", str(folder), "--tag", "churn:1", "--context", str(context), "--no-build",
        "--build-arg", "UV_INDEX_URL=http://127.0.0.1:3141/simple", "--network", "host",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "docker build -t churn:1 --build-arg UV_INDEX_URL=http://127.0.0.1:3141/simple "
        f"--network host {context}"
    ) in done.stdout
    refused = run_cli(
        "image", str(folder), "--tag", "churn:1", "--context", str(context), "--no-build",
        "--build-arg", "UV_INDEX_URL",
    )  # fmt: skip
    assert refused.returncode == 2 and "'UV_INDEX_URL' is not KEY=VALUE" in refused.stderr
