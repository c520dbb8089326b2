"""Prompt tuning through the swarm: train prompts locally while the servers' blocks stay frozen.

- ``config.py``: :class:`TrainingConfig`, :class:`StepReport`, :class:`TrainingResult` (no torch import)
- ``trainer.py``: :func:`train_prompts` (the headless loop used by scripts, the CLI and the app)
- ``dataset.py``: ``.txt`` / ``.jsonl`` examples -> token ids and labels, batched
- ``prompts_io.py``: :func:`save_prompts`, :func:`load_prompts`, :func:`read_prompts_metadata`, :class:`PromptsMetadata`

Names other than the dataclasses are imported lazily, so ``from core.tuning import TrainingConfig``
stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

from core.tuning.config import TUNING_MODES, StepReport, TrainingConfig, TrainingResult  # noqa: F401 (the public API, in __all__)

_LAZY = {
    "train_prompts": "core.tuning.trainer",
    "save_prompts": "core.tuning.prompts_io",
    "load_prompts": "core.tuning.prompts_io",
    "read_prompts_metadata": "core.tuning.prompts_io",
    "PromptsMetadata": "core.tuning.prompts_io",
}

__all__ = sorted(["TUNING_MODES", "StepReport", "TrainingConfig", "TrainingResult", *_LAZY])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'core.tuning' has no attribute '{name}'")
