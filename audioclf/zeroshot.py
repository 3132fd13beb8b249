"""Pretrained models used as they are, no training: ``predict.py --checkpoint audioset:yamnet``.

``zero_shot_checkpoint("audioset:yamnet")`` builds, in memory, the checkpoint dict that training
would have written for YAMNet with its own AudioSet head: the 521 AudioSet class names, the
``yamnet`` front end (zero padding, as YAMNet pads), one 0.96 s patch per window, a sigmoid
(multi-label) head and no normalisation. Everything that serves checkpoints (``Predictor``,
long-mode detection, events) then works on it unchanged. The weights come from
``python -m models.convert yamnet``; without them the error names that command.
"""
from __future__ import annotations

from audioclf.classifier import AudioClassifier, constructor_args
from audioclf.frontend import FeatureParams
from models import get_model_entry, list_models

ZERO_SHOT_PREFIX = "audioset:"  # --checkpoint audioset:<model>


def zero_shot_models() -> list[str]:
    """Registered models whose pretrained head is multi-label with a fixed front end (usable zero-shot)."""
    return [name for name in list_models()
            if get_model_entry(name).multi_label and get_model_entry(name).frontend and get_model_entry(name).weights]


def is_zero_shot(checkpoint: object) -> bool:
    """Whether ``--checkpoint`` names a pretrained model (``audioset:yamnet``) rather than a file."""
    return isinstance(checkpoint, str) and checkpoint.startswith(ZERO_SHOT_PREFIX)


def zero_shot_checkpoint(spec: str) -> dict:
    """The checkpoint dict of pretrained model ``audioset:<name>`` with its original head."""
    name = spec[len(ZERO_SHOT_PREFIX):]
    if name not in zero_shot_models():
        known = ", ".join(ZERO_SHOT_PREFIX + model for model in zero_shot_models())
        raise ValueError(f"{spec!r} is not a pretrained model that can be used without training; known: {known}")
    entry = get_model_entry(name)
    class_names = list(entry.weights.meta["categories"])
    params = FeatureParams.preset(entry.frontend, pad_mode="zeros")  # YAMNet pads short audio with silence
    args = constructor_args(name, len(class_names), params.n_mels, {}, multi_label=True)
    model = AudioClassifier(**args, pretrained=True, head_from_pretrained=range(len(class_names)))
    return {"model": model.state_dict(), "model_name": name, "model_args": args, "class_names": class_names,
            "feature_params": params.to_dict(), "feature_shape": [params.n_mels, params.n_frames],
            "normalization": {"mode": "none"}, "source": f"{spec} ({entry.weights.license})"}
