"""What the operator's per-Model timers share (`registry_watch`, `rollout_watch`): kopf
runs a timer at one interval for every Model, while each Model's work has its own, so a
timer ticks often and works on a Model only when that Model is due."""

from __future__ import annotations

import time
from typing import Any

# How often a timer looks whether a Model is due.
TICK_SECONDS = 5.0


def due(memo: Any, work: str, seconds: float) -> bool:
    """Whether the Model whose kopf memo this is is due for ``work``; when it is, the
    next time is ``seconds`` from now."""
    now = time.monotonic()
    if now < getattr(memo, work, 0.0):
        return False
    setattr(memo, work, now + seconds)
    return True
