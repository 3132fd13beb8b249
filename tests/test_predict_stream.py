"""predict.py --stream: a recording piped in gives long mode's events; JSON lines; errors; --onnx.

The model is a random-weight audiocnn (speed and plumbing do not need a trained one); the
detection threshold is set from its own probabilities on the recording so that it finds events.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import predict
from audioclf.classifier import AudioClassifier, constructor_args
from audioclf.events import DetectionParams
from audioclf.export import export_onnx
from audioclf.frontend import FeatureParams
from audioclf.inference import Predictor
from audioclf.streaming import latency_bound_s
from tools.demo_data import CLASS_NAMES, make_long_recording

REPO = Path(__file__).resolve().parents[1]
PARAMS = FeatureParams(sample_rate=16000, n_fft=512, n_mels=32, n_frames=50)  # 0.5 s windows
TARGET = "babycry"
HOP_SECONDS = 0.25
RULES = DetectionParams(threshold=0.5, median_filter=5, min_duration=0.5, merge_gap=0.75, edge_trim=0.1)


@dataclass
class Setup:
    checkpoint: Path
    recording: Path
    pcm: bytes  # the recording as s16le mono
    threshold: float
    threshold_low: float


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("stream")
    torch.manual_seed(0)
    args = constructor_args("audiocnn", len(CLASS_NAMES), PARAMS.n_mels, {"width": 8}, center_per_clip=True)
    model = AudioClassifier(**args)
    model.normalize.set_statistics(torch.full((1,), -40.0), torch.full((1,), 15.0))
    checkpoint = {"model": model.state_dict(), "model_args": args, "class_names": list(CLASS_NAMES),
                  "feature_params": PARAMS.to_dict(), "feature_shape": [PARAMS.n_mels, PARAMS.n_frames]}
    checkpoint_path = root / "model_best.pth.tar"
    torch.save(checkpoint, checkpoint_path)
    recording = root / "ten_minutes.wav"
    make_long_recording(recording, duration_s=600.0, sample_rate=16000, n_events=25, seed=4)
    windows = Predictor(checkpoint).predict_long(recording, HOP_SECONDS).probabilities[:, CLASS_NAMES.index(TARGET)]
    # a random model's probabilities vary little: events where it is in its top 10 %, lasting while top 25 %
    threshold, low = (float(x) for x in np.quantile(windows, [0.9, 0.75]))
    pcm = sf.read(str(recording), dtype="int16")[0].astype("<i2").tobytes()
    return Setup(checkpoint_path, recording, pcm, threshold, low)


def rule_flags(setup: Setup) -> list[str]:
    return ["--target_class", TARGET, "--hop_seconds", str(HOP_SECONDS), "--threshold", repr(setup.threshold),
            "--threshold_low", repr(setup.threshold_low),
            "--median_filter", str(RULES.median_filter), "--min_duration", str(RULES.min_duration),
            "--merge_gap", str(RULES.merge_gap), "--edge_trim", str(RULES.edge_trim), "--no_progress"]


def long_mode_events(setup: Setup, tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / "events.json"
    assert predict.main(["--checkpoint", str(setup.checkpoint), "--long", str(setup.recording), "--events_json",
                         str(out), *rule_flags(setup), *extra]) == 0
    return [{k: e[k] for k in ("class", "onset_s", "offset_s", "peak_probability", "mean_probability")}
            for e in json.loads(out.read_text())]


def ends_of(lines: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("class", "onset_s", "offset_s", "peak_probability", "mean_probability")}
            for r in lines if r["event"] == "end"]


def test_ten_minutes_piped_in_give_exactly_the_long_mode_events(setup, tmp_path):
    command = [sys.executable, "predict.py", "--checkpoint", str(setup.checkpoint), "--stream", "-", "--format",
               "s16le", "--rate", "16000", "--channels", "1", "--threads", "1", *rule_flags(setup)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, input=setup.pcm, capture_output=True, timeout=300)  # through a pipe
    wall = time.perf_counter() - started
    stdout, stderr = done.stdout, done.stderr
    assert done.returncode == 0, stderr.decode()[-3000:]
    lines = [json.loads(line) for line in stdout.decode().splitlines()]  # every line is one JSON object
    assert wall < 600 / 4  # faster than real time, start-up included

    expected = long_mode_events(setup, tmp_path, "--batch_size", "1")
    assert len(expected) >= 5
    assert ends_of(lines) == expected
    assert [r["event"] for r in lines] == ["start", "end"] * len(expected)
    assert [r["time_s"] for r in lines if r["event"] == "start"] == [e["onset_s"] for e in expected]
    assert b"listening: s16le 16000 Hz x 1 ch" in stderr
    # end lines come within window + hop + smoothing + merge_gap of the offset (audio time), unless the
    # probability rises into the hysteresis band again within merge_gap (the detector must see whether
    # that run reaches the threshold and merges): so the median, not every line, is within the bound
    _, end_bound = latency_bound_s(PARAMS.n_samples / 16000, HOP_SECONDS, RULES)
    waits = sorted(r["stream_s"] - r["time_s"] for r in lines if r["event"] == "end" and r["stream_s"] < 600)
    assert 0 < waits[len(waits) // 2] <= end_bound

    # long mode's default batches round the model's output in the 7th digit: same events, probabilities
    # equal to the 4 decimals written (give or take the last one)
    batched = long_mode_events(setup, tmp_path)
    assert [(e["onset_s"], e["offset_s"]) for e in batched] == [(e["onset_s"], e["offset_s"]) for e in expected]
    assert max(abs(a[k] - b[k]) for a, b in zip(batched, expected)
               for k in ("peak_probability", "mean_probability")) <= 1.01e-4


def test_truncated_input_flushes_events_then_fails_clearly(setup, tmp_path, capsys, caplog):
    raw = tmp_path / "cut.raw"
    raw.write_bytes(setup.pcm[:16000 * 2 * 120] + b"\x07")  # 2 minutes and half a sample
    code = predict.main(["--checkpoint", str(setup.checkpoint), "--stream", str(raw), "--rate", "16000",
                         *rule_flags(setup)])
    assert code == 1
    assert f"{raw}: the input ended inside a sample frame: 1 byte(s) after 1920000 whole frames" in caplog.text
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and lines[-1]["event"] == "end"  # what was heard is still reported, open events closed
    assert sum(r["event"] == "start" for r in lines) == sum(r["event"] == "end" for r in lines)


@pytest.mark.parametrize("flags, message", [
    (["--rate", "0"], "--rate must be a whole number of Hz in 1..768000, got 0"),
    (["--rate", "44.1"], "argument --rate: invalid int value: '44.1'"),
    (["--rate", "16000", "--channels", "0"], "--channels must be a whole number in 1..64, got 0"),
    (["--rate", "16000", "--channels", "two"], "argument --channels: invalid int value: 'two'"),
    (["--rate", "16000", "--format", "s24le"], "argument --format: invalid choice: 's24le'"),
    ([], "--stream needs --rate"),
    (["--rate", "16000", "extra.wav"], "--stream reads one stream; leave out the INPUT files (extra.wav)"),
])
def test_invalid_stream_flags_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        predict.parse_args(["--checkpoint", "c.pth.tar", "--stream", "-", *flags])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_stream_needs_exactly_one_model(capsys):
    for flags in ([], ["--checkpoint", "c.pth.tar", "--onnx", "m.onnx"]):
        with pytest.raises(SystemExit):
            predict.parse_args(["--stream", "-", "--rate", "16000", *flags])
        assert "--stream needs a model: --checkpoint C or --onnx M" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.parse_args(["--checkpoint", "c.pth.tar", "--onnx", "m.onnx", "x.wav"])
    assert "--onnx runs with --stream only" in capsys.readouterr().err


def test_onnx_stream_gives_the_pytorch_events(setup, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    export_onnx(torch.load(setup.checkpoint, weights_only=True), onnx_path)
    raw = tmp_path / "three_minutes.raw"
    raw.write_bytes(setup.pcm[:16000 * 2 * 180])
    outputs = []
    for model in (["--checkpoint", str(setup.checkpoint)], ["--onnx", str(onnx_path), "--threads", "1"]):
        assert predict.main([*model, "--stream", str(raw), "--rate", "16000", *rule_flags(setup)]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    pytorch, onnx = outputs
    assert len(pytorch) >= 2
    # the exported model is given the samples long mode's windows' frames read (their STFT context), so it
    # scores long mode's windows: the same events at the same times
    assert [r["event"] for r in onnx] == [r["event"] for r in pytorch]
    assert [r["time_s"] for r in onnx] == [r["time_s"] for r in pytorch]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(onnx, pytorch)) <= 1e-4


def test_onnx_export_carries_the_long_mode_settings_and_predict_uses_them(setup, tmp_path, capsys, caplog):
    """A run folder whose operating_point.json has long-mode settings: export.py puts them in the ONNX
    metadata, and predict.py --onnx --stream uses them (hop included) when no flag is given."""
    import export as export_script
    from audioclf.export import OnnxClassifier

    run = tmp_path / "run"
    (run / "scores").mkdir(parents=True)
    checkpoint = run / "model_best.pth.tar"
    checkpoint.write_bytes(setup.checkpoint.read_bytes())
    long_mode = {"hop_seconds": 0.125, "threshold": setup.threshold, "threshold_low": setup.threshold_low,
                 "median_filter": RULES.median_filter, "merge_gap": RULES.merge_gap, "min_duration": RULES.min_duration,
                 "edge_trim": RULES.edge_trim}
    (run / "scores" / "operating_point.json").write_text(json.dumps(
        {"target_class": TARGET, "class_id": CLASS_NAMES.index(TARGET), "threshold": 0.999,
         "long_mode": {**long_mode, "selected_by": "lowest error rate", "n_candidates": 4}}))
    onnx_path = tmp_path / "model.onnx"
    caplog.set_level(logging.INFO)
    assert export_script.main(["--checkpoint", str(checkpoint), "--onnx", str(onnx_path)]) == 0
    assert "and its long-mode settings" in caplog.text
    assert OnnxClassifier(onnx_path).metadata.operating_point == {
        "target_class": TARGET, "class_id": CLASS_NAMES.index(TARGET), "threshold": 0.999, "long_mode": long_mode}

    raw = tmp_path / "three_minutes.raw"
    raw.write_bytes(setup.pcm[:16000 * 2 * 180])
    stream = ["--onnx", str(onnx_path), "--threads", "1", "--stream", str(raw), "--rate", "16000"]
    caplog.clear()
    assert predict.main(stream) == 0
    defaults = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "every 0.12 s" in caplog.text  # the hop of the operating point, not half a window (0.25 s)
    explicit_flags = ["--target_class", TARGET, "--hop_seconds", "0.125", "--threshold", repr(setup.threshold),
                      "--threshold_low", repr(setup.threshold_low), "--median_filter", str(RULES.median_filter),
                      "--min_duration", str(RULES.min_duration), "--merge_gap", str(RULES.merge_gap),
                      "--edge_trim", str(RULES.edge_trim)]
    assert predict.main([*stream, *explicit_flags]) == 0
    explicit = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(explicit) >= 2 and defaults == explicit  # the clip threshold (0.999) alone would find nothing


class RecordingWindows:
    """An ``OnnxClassifier`` that also keeps the graph inputs it was given."""

    def __init__(self, classifier):
        self.classifier, self.inputs = classifier, []
        self.class_names, self.params, self.metadata = classifier.class_names, classifier.params, classifier.metadata

    def classify_inputs(self, inputs: np.ndarray) -> np.ndarray:
        self.inputs.append(inputs.copy())
        return self.classifier.classify_inputs(inputs)


@pytest.mark.parametrize("hop_seconds, pad_mode, frontend", [(None, "repeat", "default"), (0.13, "zeros", "default"),
                                                          (0.13, "repeat", "yamnet"), (None, "zeros", "yamnet")])
def test_long_mode_streaming_and_onnx_score_the_same_windows(tmp_path, hop_seconds, pad_mode, frontend):
    """On generated WAVs, PyTorch long mode, streaming and the exported model score the same windows, at the
    same times, with the same probabilities (1e-4, float32 rounding: measured <= 3e-7). The exported model
    is given the samples its frames read in long mode's continuous log-mel: the STFT context before and after
    each window (it used to see the window's own padding there: up to 0.042 apart on a padded last window);
    a padded last window (hop 0.13 s) gets fewer samples and the graph fills its frames as long mode does.
    8036 samples: shorter than one window, padded like a short clip."""
    from audioclf.export import OnnxClassifier
    from audioclf.streaming import FeatureWindows, WaveformWindows

    params = FeatureParams.preset(frontend, n_frames=50, pad_mode=pad_mode, **(
        {"sample_rate": 16000, "n_fft": 512, "n_mels": 32} if frontend == "default" else {}))
    torch.manual_seed(1)
    args = constructor_args("audiocnn", 3, params.n_mels, {"width": 4}, center_per_clip=True)
    checkpoint = {"model": AudioClassifier(**args).state_dict(), "model_args": args, "class_names": ["a", "b", "c"],
                  "feature_params": params.to_dict(), "feature_shape": [params.n_mels, params.n_frames]}
    metadata = export_onnx(checkpoint, tmp_path / "model.onnx")
    predictor = Predictor(checkpoint)
    rng = np.random.default_rng(0)
    n_padded_last = 0
    for n_samples in (8036, 20032, 32000, 41000):
        time_axis = np.arange(n_samples) / 16000
        audio = (0.05 * rng.standard_normal(n_samples) + 0.3 * np.sin(2 * np.pi * 440 * time_axis)).astype(np.float32)
        path = tmp_path / f"{n_samples}.wav"
        sf.write(path, audio, 16000, subtype="FLOAT")
        blocks = np.array_split(audio, [1000, 1001, 9000])  # uneven blocks, one of a single sample

        long = predictor.predict_long(path, hop_seconds)  # (n_windows, 3)
        streamed = FeatureWindows(predictor, hop_seconds)
        stream = [scored for block in blocks for scored in streamed.feed(block)] + list(streamed.finish())
        onnx = RecordingWindows(OnnxClassifier(tmp_path / "model.onnx", threads=1))
        waveform = WaveformWindows(onnx, hop_seconds)
        exported = [scored for block in blocks for scored in waveform.feed(block)] + list(waveform.finish())

        assert len(stream) == len(exported) == len(long.probabilities), n_samples
        assert (streamed.hop_s, waveform.hop_s) == (long.hop_s, long.hop_s)
        np.testing.assert_allclose(np.stack([p for p, _ in stream]), long.probabilities, atol=1e-4)
        np.testing.assert_allclose(np.stack([p for p, _ in exported]), long.probabilities, atol=1e-4, rtol=0)
        # whole windows get input_samples samples; a padded last window those of its frames in the recording
        lengths = [inputs.shape[1] for inputs in onnx.inputs]
        assert lengths[:-1] == [metadata.input_samples] * (len(lengths) - 1) and lengths[-1] <= metadata.input_samples
        n_padded_last += lengths[-1] < metadata.input_samples
        # every window is decided once its audio is in, the last ones at the end of the recording
        assert [round(t, 6) for _, t in exported][-1] == [round(t, 6) for _, t in stream][-1] == n_samples / 16000
    assert (n_padded_last > 0) == (hop_seconds is not None)  # the grid's hop fills the last window whole
