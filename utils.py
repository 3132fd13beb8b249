"""The contract's helper names, kept importable from ``utils`` (``from utils import Params``).

Each lives in its own module: the config schema and ``Params`` in ``audioclf/config.py``, the
checkpoint format and run-folder layout in ``audioclf/checkpoint.py``, atomic writes in
``audioclf/files.py``, ``RunningAverage`` and ``setup_logging`` in ``audioclf/runtime.py``.
"""
from __future__ import annotations

from audioclf.checkpoint import (BEST_CHECKPOINT_NAME, CheckpointError, latest_checkpoint, list_checkpoints,
                                 load_checkpoint, save_checkpoint)
from audioclf.config import CONFIG_SCHEMA, REQUIRED, ConfigError, ConfigKey, Params, config_reference_markdown
from audioclf.files import atomic_save_npy, atomic_write_json, atomic_write_text
from audioclf.runtime import RunningAverage, setup_logging

__all__ = [
    "REQUIRED",
    "ConfigError",
    "ConfigKey",
    "CONFIG_SCHEMA",
    "Params",
    "config_reference_markdown",
    "RunningAverage",
    "CheckpointError",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "save_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "BEST_CHECKPOINT_NAME",
    "setup_logging",
]
