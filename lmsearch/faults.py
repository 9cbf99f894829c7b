"""Fault injection for tests and the chaos benchmark (off unless LMSEARCH_FAULTS is set).

``LMSEARCH_FAULTS`` holds comma-separated rules ``ACTION@NUMBER:EPOCH`` for the
trial with Optuna number NUMBER:

``raise``
    it raises as it is about to report EPOCH (Ray then retries it, up to
    ``resources.max_failures`` times, and records it FAILED);
``kill``
    its worker process is SIGKILLed as it is about to report EPOCH (once per
    rule: a marker file in ``LMSEARCH_FAULTS_DIR``, required for kill, records
    that it did), so Ray retries it from its last checkpoint;
``diverge``
    during EPOCH its network's training output becomes NaN: a non-finite
    training loss, which the trainer calls diverged;
``nan``
    during EPOCH a batch-norm running statistic becomes NaN while the training
    loss stays finite (training mode normalises with the batch's statistics):
    the epoch ends with non-finite weights (not with ``training.bn_recalibration``,
    which recomputes those statistics);
``nanval``
    EPOCH's validation outputs are NaN while the training loss and the weights
    stay finite: a non-finite objective (the validation loss).

``diverge``, ``nan`` and ``nanval`` need EPOCH >= 2: they are armed in the
trial's worker as it reports EPOCH - 1, and act on that trial's next forward
pass of the kind named (training or evaluation) through a global forward hook
of ``torch.nn`` that removes itself once it fired.

``LMSEARCH_EPOCH_LOG`` names a file that gets a line ``NUMBER,EPOCH`` for every
epoch a trial actually trains (not for results re-reported after a resume), so
the chaos benchmark can tell a resumed trial from a finished one trained again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

__all__ = ["maybe_inject_fault", "log_trained_epoch", "InjectedFault", "ACTIONS"]

#: The actions a rule may name; the last three act during the epoch they name (see the module docstring).
ACTIONS = ("raise", "kill", "diverge", "nan", "nanval")
_ARMED_ACTIONS = ("diverge", "nan", "nanval")


class InjectedFault(RuntimeError):
    """Raised by a ``raise@N:E`` rule."""


def _rules() -> list[tuple[str, int, int]]:
    """The rules of ``LMSEARCH_FAULTS`` as ``(action, number, epoch)``; a malformed rule is a ValueError."""
    rules = []
    for rule in filter(None, (r.strip() for r in os.environ.get("LMSEARCH_FAULTS", "").split(","))):
        action, _, where = rule.partition("@")
        n, _, e = where.partition(":")
        if action not in ACTIONS or not n.strip().isdigit() or not e.strip().isdigit():
            raise ValueError(f"LMSEARCH_FAULTS: bad rule {rule!r}; expected ACTION@NUMBER:EPOCH with ACTION one of "
                             f"{', '.join(ACTIONS)}")
        if action in _ARMED_ACTIONS and int(e) < 2:
            raise ValueError(f"LMSEARCH_FAULTS: {rule!r}: {action} acts during an epoch >= 2 (it is armed as the "
                             f"epoch before is reported)")
        rules.append((action, int(n), int(e)))
    return rules


def maybe_inject_fault(number: int, epoch: int) -> None:
    """Apply the rules for trial ``number`` about to report ``epoch`` (called by the trial function)."""
    for action, n, e in _rules():
        if n != number:
            continue
        if action in _ARMED_ACTIONS and e == epoch + 1:
            _arm(action)
        if e != epoch:
            continue
        if action == "raise":
            raise InjectedFault(f"injected fault in trial {number} at epoch {epoch}")
        if action == "kill":
            marker = Path(os.environ["LMSEARCH_FAULTS_DIR"]) / f"kill-{number}-{epoch}"
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)


def _current_trial() -> str | None:
    """The Ray trial this thread trains, when known."""
    try:
        from ray import tune

        return tune.get_context().get_trial_id()
    except Exception:  # outside a Tune trial  # noqa: BLE001
        return None


def _arm(action: str) -> None:
    """Make the next training (``diverge``, ``nan``) or evaluation (``nanval``) forward pass of this trial's network
    non-finite, once."""
    import torch
    from torch import nn

    from lmsearch.nn.network import ResidualNetwork

    trial = _current_trial()
    want_training = action != "nanval"

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(module, ResidualNetwork) or module.training != want_training:
            return None
        if _current_trial() != trial:  # another trial reuses this worker: not ours
            return None
        handle.remove()
        if action == "nan":
            norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                     and m.running_mean is not None]
            if not norms:
                raise InjectedFault("nan fault: the network has no batch-norm statistics to make non-finite")
            # a new tensor, not an in-place change: this forward pass saved the old one for its backward
            norms[0].running_mean = torch.full_like(norms[0].running_mean, float("nan"))
            return None
        return output * float("nan")  # diverge: the training loss; nanval: the validation loss

    handle = nn.modules.module.register_module_forward_hook(hook)


def log_trained_epoch(number: int, epoch: int) -> None:
    path = os.environ.get("LMSEARCH_EPOCH_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{number},{epoch}\n")
