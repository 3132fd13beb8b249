"""The preprocessing feature flags, defined once: for ``preprocessingBabyCrying.py``, a config's
``features`` block and ``bench_accuracy``.

A recipe config records the features it expects as a ``features`` block of these flags by their
command-line names without dashes, e.g. ``{"frontend": "yamnet", "whole_clips": true,
"max_seconds": 5}``; flags it leaves out take the front end preset's value, as on the command line.
``preprocessingBabyCrying.py --config_path`` makes features from the block, and training and
evaluation check the features on disk against it (``audioclf.transfer.check_features``).
"""
from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Mapping
from typing import Any

from audioclf.frontend import (DEFAULT_MAX_SECONDS, FLAG_OF_FIELD, FREE_PARAMETERS, FRONTENDS, PAD_MODES,
                               YAMNET_LOG_OFFSET, YAMNET_PRESET, FeatureParams)

__all__ = ["FEATURE_FLAGS", "FIELDS", "FeatureFlagConflict", "add_feature_arguments", "block_problems",
           "feature_params_from_flags", "flag_name", "given_feature_flags", "merge_feature_flags",
           "preprocessing_command"]

# flag -> FeatureParams field, for the flags that set one field each (frontend, whole_clips and
# max_seconds choose the preset and the clip length); the frontend module holds the names, for its messages.
FIELDS = {flag: field for field, flag in FLAG_OF_FIELD.items()}


class FeatureFlagConflict(ValueError):
    """A feature flag given on the command line with another value than the config's ``features`` block."""


def _yamnet_summary() -> str:
    """YAMNet's preset in words, from ``YAMNET_PRESET`` (e.g. "16 kHz, 25/10 ms, FFT 512, ...")."""
    p = YAMNET_PRESET
    return (f"{p['sample_rate'] / 1000:g} kHz, {p['window_ms']:g}/{p['hop_ms']:g} ms, FFT {p['n_fft']}, "
            f"{p['n_mels']} mels {p['f_min']:g}-{p['f_max']:g} Hz, ln(magnitude mel + {YAMNET_LOG_OFFSET:g}), "
            f"{p['n_frames']} frames")


def add_feature_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the feature flags to ``parser``; every default is None (not given: the preset's value)."""
    defaults = FeatureParams()
    group = parser.add_argument_group(
        "features", "feature flags (a config's \"features\" block holds the same names without dashes); "
        "a flag not given takes the config's block value, else the --frontend preset's (in parentheses: the "
        "default front end's)")
    group.add_argument("--frontend", choices=FRONTENDS, default=None,
                       help=f"feature preset (default: default): 'yamnet' gives YAMNet's features ({_yamnet_summary()}) "
                            "for a pretrained yamnet; the flags below default to the preset's values")
    group.add_argument("--samplerate", type=int, default=None, help=f"target sample rate in Hz ({defaults.sample_rate})")
    group.add_argument("--window_size", type=float, default=None, help=f"STFT window in ms ({defaults.window_ms:g})")
    group.add_argument("--hop_size", type=float, default=None, help=f"STFT hop in ms ({defaults.hop_ms:g})")
    group.add_argument("--n_fft", type=int, default=None, help=f"FFT size in samples ({defaults.n_fft})")
    group.add_argument("--n_mels", type=int, default=None, help=f"number of mel bands ({defaults.n_mels})")
    group.add_argument("--n_frames", type=int, default=None, help=f"frames kept per clip ({defaults.n_frames})")
    group.add_argument("--pad_mode", choices=PAD_MODES, default=None,
                       help=f"how clips shorter than n_frames are filled ({defaults.pad_mode}: repeat the clip)")
    group.add_argument("--whole_clips", action="store_true", default=None,
                       help="keep each clip whole (up to --max_seconds) as a variable-length (n_mels, T) feature, "
                            "T >= n_frames; training draws random crops of it (default: the first n_frames)")
    group.add_argument("--max_seconds", type=float, default=None,
                       help=f"with --whole_clips: the longest audio kept per clip, in seconds ({DEFAULT_MAX_SECONDS:g})")
    group.add_argument("--trim_db", type=float, default=None,
                       help="cut each clip's leading and trailing frames quieter than this many dB below its "
                            "loudest frame, e.g. 40 (default: keep clips as recorded)")
    group.add_argument("--level_db", type=float, default=None,
                       help="scale each clip so that its active level (the RMS of its frames within 30 dB of "
                            "the loudest) is this many dB re full scale, e.g. -25 (default: as recorded)")
    return group


def _actions() -> dict[str, argparse.Action]:
    """The feature flags' argparse actions by name (``add_feature_arguments`` on an empty parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_feature_arguments(parser)
    return {action.dest: action for action in parser._actions}


_ACTIONS = _actions()
FEATURE_FLAGS: tuple[str, ...] = tuple(_ACTIONS)  # the names a "features" block may use


def given_feature_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The feature flags given on the command line (those not None), by name."""
    return {name: getattr(args, name) for name in FEATURE_FLAGS if getattr(args, name, None) is not None}


def _value_problem(name: str, value: Any) -> tuple[Any, str | None]:
    """Check one block entry against its flag's type and choices; (normalised value, problem or None)."""
    action = _ACTIONS[name]
    key = f'"features.{name}"'
    shown = f"{json.dumps(value)} ({type(value).__name__})"
    if action.nargs == 0:  # an on/off flag (store_true)
        return value, None if isinstance(value, bool) else f"{key} must be true or false, got {shown}"
    if action.type in (int, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if action.type is int and not (number and isinstance(value, int)):
            return value, f"{key} must be an int, got {shown}"
        if not number:
            return value, f"{key} must be a number, got {shown}"
        return action.type(value), None
    if not isinstance(value, str):
        return value, f"{key} must be a string, got {shown}"
    if action.choices is not None and value not in action.choices:
        return value, f"{key} must be one of {', '.join(json.dumps(c) for c in action.choices)}; got {json.dumps(value)}"
    return value, None


def block_problems(block: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Validate a ``features`` block: (normalised block, problems naming each key; empty when valid).

    Names must be feature flags of ``preprocessingBabyCrying.py``, values of the flag's type; the
    features they define must be consistent (``FeatureParams.validate``).
    """
    checked, problems = {}, []
    for name, value in block.items():
        if name not in _ACTIONS:
            close = difflib.get_close_matches(str(name), FEATURE_FLAGS, n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            problems.append(f'unknown feature flag "features.{name}"{hint}; a "features" block holds '
                            f"preprocessingBabyCrying.py's feature flags without dashes: {', '.join(FEATURE_FLAGS)}")
            continue
        value, problem = _value_problem(name, value)
        if problem:
            problems.append(problem)
        else:
            checked[name] = value
    if not problems:
        if "max_seconds" in checked and not checked.get("whole_clips"):
            problems.append('"features.max_seconds" only applies to whole clips: add "whole_clips": true or '
                            "remove it")
        try:
            feature_params_from_flags(checked).validate()
        except ValueError as error:
            problems.append(f'"features": {error}')
    return checked, problems


def feature_params_from_flags(flags: Mapping[str, Any]) -> FeatureParams:
    """The features that flags (a ``features`` block or the given flags) define: the ``frontend``
    preset with the others on top; ``max_seconds`` applies with ``whole_clips``."""
    max_seconds = DEFAULT_MAX_SECONDS if flags.get("max_seconds") is None else flags["max_seconds"]
    return FeatureParams.preset(flags.get("frontend") or "default",
                                **{field: flags[flag] for flag, field in FIELDS.items() if flags.get(flag) is not None},
                                max_seconds=max_seconds if flags.get("whole_clips") else None)


def flag_name(field: str) -> str:
    """The feature flag (a block's key) that sets ``FeatureParams`` field ``field``; the field's own
    name where no flag does (``f_min``, ``f_max``: the preset's)."""
    return FLAG_OF_FIELD.get(field, field)


def _flag_value(params: FeatureParams, name: str) -> Any:
    """The value flag ``name`` has in ``params``."""
    return getattr(params, FIELDS.get(name, name))


def merge_feature_flags(block: Mapping[str, Any], given: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The block with the given flags added; FeatureFlagConflict when a given flag changes the block's features.

    A flag may repeat the block's value, or for a flag the block leaves out, the value the block
    leaves it at (its preset's). Another one is refused rather than preferred: training and
    evaluation check every feature parameter against the block, so they would refuse such features.
    """
    expected = feature_params_from_flags(block)
    conflicts = [f"--{name} {given[name]} (the block has {json.dumps(block[name])})"
                 for name in given if name in block and given[name] != block[name]]
    conflicts += [f"--{name} {given[name]} (the block leaves it at {_flag_value(expected, name)!r})"
                  for name in given if name not in block
                  and feature_params_from_flags({**block, name: given[name]}) != expected]
    if conflicts:
        raise FeatureFlagConflict(
            f"{', '.join(conflicts)}: these flags differ from the \"features\" block of {source}, which train.py "
            "and evaluation.py check the features against; drop the flags, or change the block (in a copy of "
            "the config for a new recipe)")
    return {**block, **given}


def preprocessing_command(save_dir: str, config_path: str | None = None, frontend: str = "default") -> str:
    """The preprocessing command line that makes the expected features: from a config's block
    (``config_path``; ``--overwrite`` replaces features made otherwise), else from preset ``frontend``
    with the flags it leaves free."""
    start = f"python preprocessingBabyCrying.py --csv_file CSV --data_dir DIR --save_dir {save_dir}"
    if config_path is not None:
        return f"{start} --config_path {config_path} --overwrite"
    free = " ".join(f"[--{name} ...]" for name in FREE_PARAMETERS)
    return f"{start} --frontend {frontend} {free}"
