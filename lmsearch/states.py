"""The one vocabulary of trial states, and how a trial's last result maps onto it.

trials.csv, the recorder, the searcher (which tells Optuna) and a resumed
search all speak it. Importing this module imports neither Ray nor Optuna.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["COMPLETE", "PRUNED", "FAILED", "RUNNING", "STATES", "FINISHED", "ROW_STATE_OF_OPTUNA", "STATUS_DIVERGED",
           "STATUS_OVER_BUDGET", "STATUS_PRUNED", "trial_outcome"]

COMPLETE, PRUNED, FAILED, RUNNING = "COMPLETE", "PRUNED", "FAILED", "RUNNING"
#: Every state of a row of trials.csv.
STATES = (COMPLETE, PRUNED, FAILED, RUNNING)
#: The states of a trial that has ended.
FINISHED = (COMPLETE, PRUNED, FAILED)
#: An Optuna trial state's name (``TrialState.name``) -> the state trials.csv records for it.
ROW_STATE_OF_OPTUNA = {"COMPLETE": COMPLETE, "PRUNED": PRUNED, "FAIL": FAILED, "RUNNING": RUNNING,
                       "WAITING": "WAITING"}

# Statuses a trial function reports besides "running"/"completed".
STATUS_DIVERGED = "diverged"
STATUS_OVER_BUDGET = "over_budget"
STATUS_PRUNED = "pruned"


def trial_outcome(result: dict[str, Any] | None, errored: bool) -> str:
    """COMPLETE, PRUNED or FAILED for a trial that has ended.

    COMPLETE only when the trial trained its whole epoch budget; stopped early
    (by a pruner or a scheduler) or skipped for exceeding ``max_params`` is
    PRUNED; raised or diverged is FAILED.
    """
    if errored:
        return FAILED
    if not result:
        return PRUNED
    status = result.get("status")
    if status == STATUS_DIVERGED:
        return FAILED
    if status in (STATUS_OVER_BUDGET, STATUS_PRUNED):
        return PRUNED
    if result.get("epoch", 0) < result.get("epochs", math.inf):
        return PRUNED
    return COMPLETE
