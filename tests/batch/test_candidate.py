"""`modelyard batch run --candidate`: a new version scored into its own table and
compared entity by entity with the model's latest run, which stays the latest."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.batch.conftest import MODEL, VERSION, batch, latest, ok, stored

# The candidate adds 1 to male_percentile where it is at least 90: a share of the
# entities the incumbent's own run tells.
SHIFTED = """
    def postprocess(self, p_male: np.ndarray) -> dict[str, np.ndarray]:
        out = self._postprocess(p_male)
        out["male_percentile"] = np.where(
            out["male_percentile"] >= 90, out["male_percentile"] + 1, out["male_percentile"]
        )
        return out
"""


def make_candidate(folder: Path) -> None:
    predictor = folder / "predictor.py"
    text = predictor.read_text().replace("def postprocess(", "def _postprocess(")
    predictor.write_text(text + SHIFTED)
    decl = yaml.safe_load((folder / "model.yaml").read_text())
    decl["version"] = "0.2.0"
    decl["rollout"] = {"mode": "shadow", "compare": {"tolerance": 1e-3}}
    (folder / "model.yaml").write_text(yaml.safe_dump(decl, sort_keys=False))


def test_a_candidate_run_is_compared_with_the_latest_and_never_replaces_it(
    folder: Path, sqlite_store: str
) -> None:
    refused = batch(folder, sqlite_store, "--candidate")
    assert refused.returncode == 1
    assert "has no complete run to compare a candidate with" in refused.stderr

    ok(batch(folder, sqlite_store, "--run-id", "incumbent"))
    incumbent = stored(sqlite_store, "incumbent")
    shifted = int((incumbent["male_percentile"] >= 90).sum())
    assert 0 < shifted < len(incumbent)

    make_candidate(folder)
    out = ok(batch(folder, sqlite_store, "--run-id", "candidate", "--candidate"))
    total = len(incumbent)
    assert (
        f"candidate version 0.2.0 (run candidate) against version {VERSION} (run incumbent): "
        f"{total:,} entities compared, agreement {(total - shifted) / total:.4f}; "
        "0 only in the incumbent's run, 0 only in the candidate's"
    ) in out
    assert "female_percentile: agreement 1.0000, mean |diff| 0, max 0" in out
    assert f"male_percentile: agreement {(total - shifted) / total:.4f}" in out
    assert out.count("  differs: {'user_id': ") == 10

    run = latest(sqlite_store)  # the readers' latest is still the incumbent's
    assert run is not None and (run.model, run.version, run.run_id) == (MODEL, VERSION, "incumbent")
