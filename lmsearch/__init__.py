"""lmsearch: neural architecture search over the numerical schemes of residual networks.

The public names are imported lazily so ``import lmsearch`` stays cheap (no
torch/ray import until a name that needs it is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ArchSpec": "lmsearch.arch",
    "build_model": "lmsearch.nn.network",
    "count_params": "lmsearch.nn.counting",
    "count_flops": "lmsearch.nn.counting",
    "create_model": "lmsearch.nn.zoo",
    "list_models": "lmsearch.nn.zoo",
    "to_lm": "lmsearch.nn.torchvision_lm",
    "register_scheme": "lmsearch.nn.registry",
    "load_dataset": "lmsearch.data",
    "Trainer": "lmsearch.train",
    "TrainConfig": "lmsearch.train",
    "load_space": "lmsearch.space",
    "run_search": "lmsearch.search",
    "load_results": "lmsearch.results",
    "load_curves": "lmsearch.results",
    "load_pareto": "lmsearch.results",
    "check_experiment": "lmsearch.consistency",
    "pareto_front": "lmsearch.pareto",
    "hypervolume": "lmsearch.pareto",
    "aggregate_seeds": "lmsearch.pareto",
    "save_architecture": "lmsearch.archfile",
    "load_architecture": "lmsearch.archfile",
    "lm_coefficients": "lmsearch.analysis",
    "experiment_lm_coefficients": "lmsearch.analysis",
    "lm_coefficients_by_depth": "lmsearch.analysis",
    "power_check": "lmsearch.analysis",
    "compression_table": "lmsearch.analysis",
    "interpolated_compression": "lmsearch.analysis",
    "compression_verdict": "lmsearch.analysis",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
