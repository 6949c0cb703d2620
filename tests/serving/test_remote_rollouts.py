"""Rollouts whose candidate is another server (``--rollout-candidate-url NAME=URL``, as
the Kubernetes operator gives a Model's pods while its candidate Deployment runs): two
real `modelyard serve` on loopback, the incumbent's sending the candidate's share to the
other's V2 REST endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from modelyard_operator.rollouts import comparison_status, read_comparison

from tests.serving.test_live_registry import wait_for
from tests.serving.test_rollouts import CANARY, SHADOW, declaration, infer, write
from tests.support.declarations import run_cli
from tests.support.server import ServerProcess, free_port, running

TOKEN = "remote-rollout-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MODELS: dict[str, dict[str, Any]] = {
    "same": SHADOW,
    "canary": CANARY,
    "down": SHADOW,  # its candidate's address answers nothing
    "aborted": SHADOW,
    # Its promote is the operator's: the server only judges.
    "ruled": {**SHADOW, "promote_when": {"min_requests": 20, "min_agreement": 0.99}},
}


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    root = tmp_path_factory.mktemp("remote-rollouts")
    for name, rollout in MODELS.items():
        write(root / "incumbent" / name, declaration(name, "1", rollout))
        write(root / "candidate" / name, declaration(name, "2", rollout))
    candidate = ServerProcess(root / "candidate", root / "candidate.log")
    closed = f"http://127.0.0.1:{free_port()}"
    urls = [f"{name}={closed if name == 'down' else candidate.base}" for name in MODELS]
    incumbent = ServerProcess(
        root / "incumbent",
        root / "incumbent.log",
        [a for url in urls for a in ("--rollout-candidate-url", url)],
        env={"MODELYARD_ADMIN_TOKEN": TOKEN},
    )
    with running(candidate), running(incumbent):
        wait_for(
            lambda: {r["model"] for r in rollouts(incumbent)} >= set(MODELS),
            60,
            "every remote rollout begun",
        )
        yield incumbent, candidate


def rollouts(server: ServerProcess) -> list[dict[str, Any]]:
    r = requests.get(f"{server.base}/modelyard/rollouts", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["rollouts"]


def rollout(server: ServerProcess, name: str) -> dict[str, Any]:
    return next(r for r in rollouts(server) if r["model"] == name)


def test_a_remote_shadow_identical_to_the_incumbent_agrees_and_is_never_seen(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    incumbent, candidate = servers
    with requests.Session() as s:
        versions = {infer(s, incumbent, "same", float(i))["model_version"] for i in range(300)}
    assert versions == {"1"}
    found: dict[str, Any] = {}

    def compared() -> bool:
        found.update(rollout(incumbent, "same"))
        return bool(found["compared"] >= 300)

    try:
        wait_for(compared, 30, "300 calls compared with the remote candidate")
    except AssertionError:
        raise AssertionError(found) from None
    assert (found["incumbent"], found["candidate"]) == ("1", "2")
    assert found["candidate_url"] == candidate.base
    assert found["compared"] == 300 and found["agreement"] == 1.0
    assert found["sides"]["candidate"]["answered"] == 300
    assert found["sides"]["candidate"]["errors"] == 0
    assert found["decision"] is None  # no rules declared
    # What the operator writes into the Model's status.rollout.comparison (a read from
    # either process, each as up to date as the other's last write).
    read: dict[str, Any] = {}

    def all_read() -> bool:
        read.update(read_comparison(incumbent.base, "same") or {})
        return bool(read.get("compared") == 300)

    wait_for(all_read, 10, "the comparison read by URL")
    assert comparison_status(read) == {
        "requestsCompared": 300,
        "agreement": 1.0,
        "p99Ratio": read["p99_ratio"],
        "errorRates": {"incumbent": 0.0, "candidate": 0.0},
        "decision": None,
        "reason": None,
    }
    assert read["p99_ratio"] > 0
    assert read_comparison(incumbent.base, "no-such-model") is None
    assert read_comparison(f"http://127.0.0.1:{free_port()}", "same") is None


def test_a_remote_canary_answers_its_weight_from_the_other_server(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    incumbent, _ = servers
    with requests.Session() as s:
        versions = [infer(s, incumbent, "canary", float(i))["model_version"] for i in range(1000)]
    share = versions.count("2") / len(versions)
    assert 0.15 <= share <= 0.25, share
    assert set(versions) == {"1", "2"}

    sides: dict[str, Any] = {}

    def counted() -> bool:
        # Each process's numbers reach the others within a quarter second: a read from
        # either may show fewer until then.
        sides.update(rollout(incumbent, "canary")["sides"])
        return bool(sides["candidate"]["answered"] + sides["incumbent"]["answered"] == 1000)

    wait_for(counted, 10, "both sides' calls counted")
    assert sides["candidate"]["answered"] == versions.count("2")
    assert sides["candidate"]["errors"] == 0


def test_a_remote_candidate_down_never_fails_a_call_and_counts_its_errors(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    incumbent, _ = servers
    with requests.Session() as s:
        versions = {infer(s, incumbent, "down", float(i))["model_version"] for i in range(50)}
    assert versions == {"1"}

    found: dict[str, Any] = {}

    def counted() -> bool:
        found.update(rollout(incumbent, "down"))
        return bool(found["sides"]["candidate"]["errors"] == 50)

    wait_for(counted, 30, "the unreachable candidate's 50 errors counted")
    assert found["compared"] == 0 and found["sides"]["candidate"]["answered"] == 50


def test_a_remote_candidate_is_aborted_here_and_promoted_by_a_version_change(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    incumbent, candidate = servers
    url = f"{incumbent.base}/modelyard/rollouts/aborted"
    r = requests.post(f"{url}/promote", headers=ADMIN, timeout=30)
    assert r.status_code == 409, r.text
    assert "served elsewhere" in r.text and candidate.base in r.text
    r = requests.post(f"{url}/abort", headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["serving"] == "1"
    assert requests.get(url, timeout=10).status_code == 409  # no rollout now
    with requests.Session() as s:
        assert infer(s, incumbent, "aborted", 1.0)["model_version"] == "1"
    # Not begun again for the version it was aborted for.
    assert "aborted" not in {r["model"] for r in rollouts(incumbent)}


def test_a_candidate_url_without_a_name_is_refused_with_the_form(tmp_path: Path) -> None:
    found = run_cli("serve", str(tmp_path), "--rollout-candidate-url", "http://elsewhere:8080")
    assert found.returncode == 2
    assert "--rollout-candidate-url" in found.stderr and "NAME=URL" in found.stderr


def test_a_remote_candidate_meeting_promote_when_is_judged_not_promoted_here(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    incumbent, _ = servers
    with requests.Session() as s:
        for i in range(30):
            assert infer(s, incumbent, "ruled", float(i))["model_version"] == "1"

    found: dict[str, Any] = {}

    def judged() -> bool:
        found.update(read_comparison(incumbent.base, "ruled") or {})
        return found.get("decision") is not None

    wait_for(judged, 30, "the promote rules judged")
    status = comparison_status(found)
    assert status["decision"] == "promote" and "agreement 1.0000 >= 0.99" in status["reason"]
    # Still comparing: the version change that promotes it is not this server's.
    assert (found["incumbent"], found["candidate"]) == ("1", "2")
    with requests.Session() as s:
        assert infer(s, incumbent, "ruled", 1.0)["model_version"] == "1"
    assert rollout(incumbent, "ruled")["candidate_url"] is not None
