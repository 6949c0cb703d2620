"""A batch run of a folder with requirements.txt scores on the folder's own environment,
streaming into the store as any run."""

from __future__ import annotations

from pathlib import Path

from tests.batch.conftest import assert_matches, batch, direct_scores, ok, stored
from tests.serving.test_environments import ENVS

PROBE = """

import os as _os

if _os.environ.get("ENV_PROBE"):  # the folder's own package, from its environment
    import sys as _sys
    from importlib.metadata import version as _version

    import humanize  # noqa: F401

    with open(_os.environ["ENV_PROBE"], "w") as _probe:
        _probe.write(f"{_version('humanize')} {_sys.prefix}")
"""


def test_a_batch_run_scores_in_the_folders_environment(
    folder: Path, sqlite_store: str, tmp_path: Path
) -> None:
    (folder / "requirements.txt").write_text("humanize==4.9.0\n")
    with (folder / "predictor.py").open("a") as f:
        f.write(PROBE)
    probe = tmp_path / "probe.txt"
    env = {"ENV_PROBE": str(probe), "MODELYARD_ENVS_DIR": str(ENVS)}
    out = ok(batch(folder, sqlite_store, "--run-id", "r1", "--no-progress", env=env))
    assert "5,000 rows" in out, out
    humanize_version, prefix = probe.read_text().split()
    assert humanize_version == "4.9.0"
    assert Path(prefix).parent == ENVS  # the environment's interpreter, not the server's
    assert_matches(stored(sqlite_store, "r1"), direct_scores(folder))
