"""The declared promote_when / abort_when rules, and the merge of the processes'
comparisons they are judged on (the server runs them in test_rollouts.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from mlserver.types import InferenceResponse, ResponseOutput

from modelyard.declarations.folders import load_model_folder
from modelyard.serving.limits import BUSY_GAP_S, BUSY_WINDOW_S, InFlight
from modelyard.serving.rollouts import (
    SMALL_ANSWER,
    Answered,
    Comparison,
    RolloutConfig,
    ShadowShare,
    _agree,
    judge,
    summary,
)
from tests.support.server import REPO


def dump(
    compared: int = 0,
    agreed: int = 0,
    answered: tuple[int, int] = (0, 0),
    errors: tuple[int, int] = (0, 0),
    latencies: tuple[list[float], list[float]] = ([], []),
    differences: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    return {
        "compared": compared,
        "agreed": agreed,
        "dropped": 0,
        "answered": {"incumbent": answered[0], "candidate": answered[1]},
        "errors": {"incumbent": errors[0], "candidate": errors[1]},
        "latencies": {"incumbent": latencies[0], "candidate": latencies[1]},
        "differences": differences or {},
    }


def test_two_processes_merge_into_one_comparison() -> None:
    fast, slow = [0.001] * 300, [0.002] * 300
    first = dump(100, 90, (100, 100), (0, 2), (fast[:100], slow[:98]), {"y": [5.0, 100, 1.0]})
    second = dump(300, 300, (300, 300), (0, 0), (fast, slow), {"y": [0.0, 300, 0.5]})
    merged = summary([first, second])
    assert merged["compared"] == 400 and merged["agreement"] == 390 / 400
    assert merged["sides"]["candidate"]["errors"] == 2
    assert merged["sides"]["candidate"]["error_rate"] == 2 / 400
    assert merged["sides"]["incumbent"]["p99_ms"] == pytest.approx(1.0)
    assert merged["p99_ratio"] == pytest.approx(2.0)
    assert merged["outputs"]["y"] == {"mean_abs": 5.0 / 400, "max_abs": 1.0}


@pytest.mark.parametrize(
    ("datatype", "mine", "theirs", "tolerance"),
    [
        ("FP64", [0.1, 0.2, 0.7], [0.1, 0.2, 0.7 + 1e-9], 1e-6),  # within the tolerance
        ("FP64", [0.1, 0.2, 0.7], [0.1, 0.25, 0.65], 1e-6),  # not
        ("FP32", [float("nan")], [float("nan")], 1e-6),  # NaN agrees with nothing
        ("INT64", [2, 0, 1], [2, 0, 1], 0.0),  # labels: equal
        ("INT64", [2, 0, 1], [2, 1, 1], 0.5),  # labels: a tolerance does not apply
        ("FP64", [1.0, 2.0], [1.0, 2.0, 3.0], 1e-6),  # a shape that differs
    ],
)
def test_a_small_answer_is_compared_as_a_large_one_is(
    datatype: str, mine: list[float], theirs: list[float], tolerance: float
) -> None:
    """Answers of a few values take a plain-Python path; repeated past SMALL_ANSWER
    values they take numpy's. Both must judge (and measure) alike."""
    small = _agree(
        Answered("y", datatype, np.asarray(mine)), Answered("y", datatype, np.asarray(theirs)),
        tolerance,
    )  # fmt: skip
    times = SMALL_ANSWER // len(mine) + 1
    large = _agree(
        Answered("y", datatype, np.tile(mine, times)),
        Answered("y", datatype, np.tile(theirs, times)),
        tolerance,
    )
    assert small[0] == large[0]
    if small[1] is None or large[1] is None:
        assert small[1] is None and large[1] is None
    else:
        assert np.allclose(small[1], large[1], equal_nan=True)
    expected = {"FP64": None, "FP32": False, "INT64": mine == theirs}[datatype]
    if expected is not None:
        assert small[0] is expected


def test_a_comparison_dump_goes_through_json_and_merges() -> None:
    comparison = Comparison()
    comparison.answer("incumbent", 0.001, False)
    comparison.answer("candidate", 0.002, False)
    mine = [Answered("y", "FP32", np.asarray([np.float32(0.5)]))]
    theirs = InferenceResponse(
        model_name="m",
        outputs=[ResponseOutput(name="y", datatype="FP32", shape=[1], data=[0.5])],
    )
    assert comparison.compare(mine, theirs, 1e-6, ())

    merged = summary(
        [orjson.loads(orjson.dumps(comparison.dump(), option=orjson.OPT_SERIALIZE_NUMPY))]
    )
    assert merged["compared"] == 1 and merged["agreement"] == 1.0
    assert merged["p99_ratio"] == pytest.approx(2.0)


def config(**rollout: Any) -> RolloutConfig:
    return RolloutConfig(mode=rollout.pop("mode", "shadow"), **rollout)


def test_promote_needs_every_rule_and_says_why() -> None:
    rules = {"min_requests": 400, "min_agreement": 0.95, "max_p99_ratio": 2.5}
    merged = summary([dump(400, 390, (400, 400), (0, 0), ([0.001] * 10, [0.002] * 10))])
    assert judge(config(promote_when=rules), merged) == (
        "promote",
        "400 requests, agreement 0.9750 >= 0.95, p99 ratio 2.00 <= 2.5",
    )
    assert judge(config(promote_when={**rules, "min_requests": 401}), merged) is None
    assert judge(config(promote_when={**rules, "min_agreement": 0.98}), merged) is None
    assert judge(config(promote_when={**rules, "max_p99_ratio": 1.5}), merged) is None


def test_abort_is_judged_first_once_enough_calls_are_seen() -> None:
    merged = summary([dump(200, 100, (200, 200), (0, 30), ([0.001] * 10, [0.004] * 10))])
    both = config(
        promote_when={"min_requests": 1},
        abort_when={"min_requests": 200, "error_rate_above": 0.1},
    )
    assert judge(both, merged) == ("abort", "error rate 0.1500 > 0.1")
    assert judge(config(abort_when={"p99_ratio_above": 3}), merged) == (
        "abort",
        "p99 ratio 4.00 > 3",
    )
    assert judge(config(abort_when={"min_requests": 201, "agreement_below": 0.9}), merged) is None


def test_a_canary_counts_the_calls_its_candidate_answered() -> None:
    merged = summary([dump(0, 0, (800, 200), (0, 0), ([0.001] * 10, [0.001] * 10))])
    canary = config(mode="canary", weight=20, promote_when={"min_requests": 200})
    assert judge(canary, merged) == ("promote", "200 requests")
    assert judge(config(mode="canary", promote_when={"min_requests": 201}), merged) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_shadow_waits_once_its_share_of_a_busy_process_is_spent() -> None:
    clock = Clock()
    share = ShadowShare(0.05, window=1.0, clock=clock)
    assert share.pause(busy=True) == 0.0
    share.spend(0.01)  # 10 ms of candidate time in the first 100 ms of the window
    clock.now = 0.1
    # 10 ms is 5% of 200 ms: the next shadow call waits the other 100 ms.
    assert share.pause(busy=True) == pytest.approx(0.1)
    assert share.pause(busy=False) == 0.0  # an idle incumbent: nobody to slow down
    clock.now = 0.2
    assert share.pause(busy=True) == 0.0


def test_an_overdrawn_window_is_carried_into_the_next() -> None:
    clock = Clock()
    share = ShadowShare(0.05, window=1.0, clock=clock)
    share.spend(0.2)  # 200 ms while idle: taken, and owed once the incumbent is busy
    clock.now = 1.0
    share.spend(0.0)  # a new window: 50 ms of the 200 were the last window's due
    assert share.pause(busy=True) == pytest.approx(0.15 / 0.05)


def test_a_share_of_one_never_waits() -> None:
    clock = Clock()
    share = ShadowShare(1.0, clock=clock)
    share.spend(5.0)
    assert share.pause(busy=True) == 0.0


def test_the_share_is_read_from_the_declaration(tmp_path: Path) -> None:
    decl = yaml.safe_load((REPO / "model-settings/iris/model.yaml").read_text())
    folder = tmp_path / "iris"
    shutil.copytree(REPO / "model-settings/iris", folder)
    for rollout, share in (({"mode": "shadow"}, 0.02), ({"mode": "shadow", "share": 0.5}, 0.5)):
        (folder / "model.yaml").write_text(yaml.safe_dump({**decl, "rollout": rollout}))
        config = RolloutConfig.from_settings(load_model_folder(folder))
        assert config is not None and config.share == share


def test_a_process_answering_a_request_at_a_time_is_busy_while_they_keep_coming() -> None:
    """A saturated process whose model answers without awaiting has one request in flight
    at a time, its own: counted by requests in flight alone, it never looked busy, and a
    shadow's share never applied (the bench compared as many calls at share 0.02 as
    unbounded). A request read as soon as the last one was answered counts too; one
    after the idle time of a client calling in turn does not."""
    now = [100.0]
    inflight = InFlight(1 << 20, clock=lambda: now[0])
    assert not inflight.busy(within_a_call=False)
    assert inflight.take(10)
    assert not inflight.busy(within_a_call=True)  # the first call, nothing before it
    now[0] += 0.0003
    inflight.give(10)
    now[0] += BUSY_GAP_S / 4  # the next is read straight away: saturated
    assert inflight.take(10)
    assert inflight.busy(within_a_call=True)  # only this one in flight, yet busy
    inflight.give(10)
    assert inflight.busy(within_a_call=False)  # between calls that keep coming
    now[0] += BUSY_WINDOW_S * 2
    assert not inflight.busy(within_a_call=False)  # they stopped
    now[0] += 0.001
    assert inflight.take(10)  # a client calling in turn: idle time before each
    assert not inflight.busy(within_a_call=True)
    inflight.give(10)
    now[0] += 0.001
    assert inflight.take(10)
    assert not inflight.busy(within_a_call=True)
    assert inflight.take(10)  # two at once
    assert inflight.busy(within_a_call=False) and inflight.busy(within_a_call=True)
