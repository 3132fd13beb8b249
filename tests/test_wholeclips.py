"""Whole clips end to end: preprocessing, random-crop training, pooled evaluation, predict.py.

A small audio set with clips of 0.3 to 2.6 s is preprocessed with ``--whole_clips`` (up to 2 s),
a tiny model is trained on random crops (with background mixing), and a clip's pooled
evaluation score is compared with ``predict.py``'s clip and long modes on its audio.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from audioclf.checkpoint import checkpoint_windows, load_checkpoint, model_from_checkpoint
from audioclf.config import ConfigError, Params
from audioclf.evaluation import predict_list, read_score_file, run_evaluation
from audioclf.frontend import FeatureParams
from audioclf.inference import Predictor
from audioclf.listfile import LISTS_DIR, list_path
from audioclf.preprocess import PreprocessOptions, run_preprocessing
from audioclf.training import train
from conftest import make_dataset, write_wav
from audioclf.windows import window_starts
from dataloaders.dataloader import SpectrogramDataset
from tools.soundscapes import build_soundscapes
from tools.synthetic_features import make_config

PARAMS = FeatureParams(n_fft=512, n_mels=32, n_frames=50, max_seconds=2.0)  # 0.5 s crops, clips up to 2 s
DURATIONS = (0.3, 0.8, 1.4, 2.6)  # seconds, cycling over each class's clips; 2.6 s is cut to 2 s


@dataclass
class Prepared:
    root: Path
    features: Path
    audio_dir: Path
    rows: list[dict]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
    root = tmp_path_factory.mktemp("whole")
    dataset = make_dataset(root, clips_per_class=10)
    for index, row in enumerate(dataset.rows):
        class_id = int(row["classID"])
        write_wav(dataset.audio_path(row), duration=DURATIONS[index % len(DURATIONS)], kind="tone+noise",
                  frequency=300.0 * (class_id + 1), seed=index)
    run_preprocessing(PreprocessOptions(csv_file=dataset.csv_file, data_dir=dataset.data_dir,
                                        save_dir=dataset.save_dir, params=PARAMS, num_workers=1))
    return Prepared(root, dataset.save_dir, dataset.data_dir, dataset.rows)


@pytest.fixture(scope="module")
def trained(prepared) -> Path:
    run = prepared.root / "run"
    run.mkdir()
    config = make_config(run, prepared.features, epochs=4, lr=0.01, crop_hop_frames=20, background_prob=0.5,
                         background_classes=["noise"], normalization="per_clip")
    train(Params(config), show_progress=False)
    return run


def test_preprocessed_whole_clips_vary_in_length(prepared):
    lengths = sorted({np.load(path).shape for path in prepared.features.rglob("*.npy")})
    # 0.3 s padded to n_frames; 80 and 140 frames rounded up to 50 + k x 25; 2.6 s cut at 2 s
    assert lengths == [(32, 50), (32, 100), (32, 150), (32, 200)]


def test_checkpoint_records_the_windows_and_the_model_input(trained):
    checkpoint = load_checkpoint(trained / "checkpoints" / "model_best.pth.tar")
    assert checkpoint["feature_shape"] == [32, 50]  # (n_mels, crop_frames)
    assert checkpoint_windows(checkpoint) == (50, 20)
    assert checkpoint["feature_params"]["max_seconds"] == 2.0


def test_pooled_evaluation_equals_predict_clip_and_long_mode_on_the_same_audio(prepared, trained):
    checkpoint = load_checkpoint(trained / "checkpoints" / "model_best.pth.tar")
    window, hop = checkpoint_windows(checkpoint)
    clips = SpectrogramDataset(prepared.features / "filenames" / "train.txt", prepared.features)
    pooled, _ = predict_list(model_from_checkpoint(checkpoint), clips, torch.device("cpu"), batch_size=5,
                             window=window, hop=hop)
    predictor = Predictor(checkpoint)
    files = [str(prepared.audio_dir / Path(entry.feature_file).with_suffix(".wav")) for entry in clips.entries]
    clip_mode, skipped = predictor.predict_clips(files, batch_size=7)
    assert not skipped
    np.testing.assert_allclose(np.stack([c.probabilities for c in clip_mode]), pooled, rtol=1e-4, atol=1e-5)
    compared = 0
    for file, feature_file, expected in zip(files, clips.paths, pooled):
        n_frames = np.load(feature_file).shape[1]
        if n_frames == PARAMS.max_frames:  # cut at max_seconds: long mode sees the whole file
            continue
        long_mode = predictor.predict_long(file, batch_size=3, block_seconds=0.25)  # the checkpoint's hop
        assert len(long_mode.probabilities) == len(window_starts(n_frames, window, hop))
        np.testing.assert_allclose(long_mode.probabilities.mean(axis=0), expected, rtol=1e-4, atol=1e-5)
        compared += 1
    assert compared >= 15  # the 0.3, 0.8 and 1.4 s clips


def test_evaluation_of_whole_clips_keeps_the_score_file_format(prepared, trained):
    params = Params(make_config(trained, prepared.features, crop_hop_frames=20))
    metrics = run_evaluation(params)
    rows, accuracy = read_score_file(metrics["files"]["score"])
    assert list(rows[0]) == ["file", "true_class", "predicted_class", "confidence"]
    assert len(rows) == metrics["n_clips"] == 3 and accuracy == pytest.approx(metrics["accuracy"])


def straight_and_resumed(prepared: Prepared, tmp_path: Path, common: dict) -> tuple[dict, dict]:
    """Epoch 3's checkpoints of a 3-epoch run and of a 2-epoch run resumed for a third; their weights must match."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    train(Params(make_config(straight, prepared.features, epochs=3, **common)), show_progress=False)
    train(Params(make_config(resumed, prepared.features, epochs=2, **common)), show_progress=False)
    train(Params(make_config(resumed, prepared.features, epochs=3, **common)), resume=True, show_progress=False)
    a = load_checkpoint(straight / "checkpoints" / "checkpoint_epoch0003.pth.tar")
    b = load_checkpoint(resumed / "checkpoints" / "checkpoint_epoch0003.pth.tar")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    return a, b


def test_resume_with_crops_and_background_mixing_equals_an_uninterrupted_run(prepared, tmp_path):
    common = dict(crop_frames=30, crop_hop_frames=15, background_prob=0.5, background_classes=["noise"],
                  background_snr_min=-3.0, background_snr_max=9.0, spec_augment=True, freq_mask=4, time_mask=8,
                  mixup_alpha=0.2, random_shift=True)
    a, b = straight_and_resumed(prepared, tmp_path, common)
    assert a["metrics"] == {**b["metrics"], "train": {**b["metrics"]["train"],
                                                      "samples_per_s": a["metrics"]["train"]["samples_per_s"]}}
    # mixing changed what the model saw: the same run without it ends elsewhere
    plain = tmp_path / "plain"
    plain.mkdir()
    train(Params(make_config(plain, prepared.features, epochs=3, **{**common, "background_prob": 0.0})),
          show_progress=False)
    c = load_checkpoint(plain / "checkpoints" / "checkpoint_epoch0003.pth.tar")
    assert not all(torch.equal(tensor, c["model"][name]) for name, tensor in a["model"].items())


def test_crops_from_the_feature_cache_equal_crops_from_the_files(prepared, tmp_path):
    common = dict(epochs=2, crop_frames=40, background_prob=0.5, background_classes=["noise"])
    cached, files = tmp_path / "cached", tmp_path / "files"
    cached.mkdir(), files.mkdir()
    train(Params(make_config(cached, prepared.features, feature_cache=True, **common)), show_progress=False)
    train(Params(make_config(files, prepared.features, feature_cache=False, **common)), show_progress=False)
    assert list((prepared.features / "filenames" / "cache").glob("train-*.float32.*.frames.npy"))
    a = load_checkpoint(cached / "checkpoints" / "checkpoint_epoch0002.pth.tar")
    b = load_checkpoint(files / "checkpoints" / "checkpoint_epoch0002.pth.tar")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_background_config_errors_name_the_keys(prepared, tmp_path):
    with pytest.raises(ConfigError, match='"background_prob" > 0 needs background clips'):
        Params(make_config(tmp_path, prepared.features, background_prob=0.3))
    with pytest.raises(ConfigError, match='"background_snr_min" \\(13.0\\) must not exceed "background_snr_max" \\(12.0\\)'):
        Params(make_config(tmp_path, prepared.features, background_snr_min=13.0))
    with pytest.raises(ConfigError, match='"background_classes" must be a list of str, got 3'):
        Params(make_config(tmp_path, prepared.features, background_classes=["noise", 3]))
    with pytest.raises(ConfigError, match='"crop_frames" must be > 0'):
        Params(make_config(tmp_path, prepared.features, crop_frames=0))
    config = make_config(tmp_path, prepared.features, background_prob=0.3, background_classes=["nois"])
    with pytest.raises(ValueError, match=r"\"background_classes\": \['nois'\] are not training classes"):
        train(Params(config), show_progress=False)


def test_a_background_list_from_another_feature_folder_is_mixed_in(prepared, tmp_path):
    noise = make_dataset(tmp_path / "noise", class_names=("hum",), clips_per_class=10, duration=1.0)
    run_preprocessing(PreprocessOptions(csv_file=noise.csv_file, data_dir=noise.data_dir, save_dir=noise.save_dir,
                                        params=PARAMS, num_workers=1))
    listed = noise.save_dir / "filenames" / "train.txt"
    config = make_config(tmp_path, prepared.features, epochs=1, background_prob=1.0, background_list=str(listed))
    assert train(Params(config), show_progress=False)["history"]
    other = make_dataset(tmp_path / "other", class_names=("hum",), clips_per_class=10, duration=1.0)
    run_preprocessing(PreprocessOptions(csv_file=other.csv_file, data_dir=other.data_dir, save_dir=other.save_dir,
                                        params=FeatureParams(n_fft=1024, n_mels=32, n_frames=50), num_workers=1))
    (tmp_path / "wrong").mkdir()
    wrong = make_config(tmp_path / "wrong", prepared.features, epochs=1, background_prob=1.0,
                        background_list=str(other.save_dir / "filenames" / "train.txt"))
    with pytest.raises(ValueError, match=r"\"background_list\" .*differ from the training features \(\['n_fft'\]\)"):
        train(Params(wrong), show_progress=False)
    assert json.loads((noise.save_dir / "filenames" / "feature_config.json").read_text())["whole_clips"]["n_at_max_frames"] == 0


def test_training_soundscapes_add_one_crop_per_mixture_and_resume_identically(prepared, tmp_path):
    lists = prepared.features / LISTS_DIR
    soundscapes = tmp_path / "soundscapes"
    build_soundscapes(prepared.root / "metadata.csv", prepared.audio_dir, list_path(lists, "train"), "baby cry",
                      soundscapes, n_mixtures=4, seed=0, duration_s=3.0)
    common = dict(crop_frames=30, train_soundscapes=str(soundscapes), target_class="baby cry", background_prob=0.5,
                  background_classes=["noise"], mixup_alpha=0.2)
    a, b = straight_and_resumed(prepared, tmp_path, common)
    n_clips = len(SpectrogramDataset(list_path(lists, "train"), prepared.features))
    assert a["metrics"]["train"]["n"] == n_clips + 4  # every clip's crop, and one of each mixture


def test_training_soundscapes_need_a_target_class_and_refuse_balanced_sampling(prepared, tmp_path):
    with pytest.raises(ConfigError, match='"train_soundscapes" labels windows with their event: set "target_class"'):
        Params(make_config(tmp_path, prepared.features, train_soundscapes=str(tmp_path)))
    config = make_config(tmp_path, prepared.features, train_soundscapes=str(tmp_path), target_class="baby cry",
                         balanced_sampling=True)
    with pytest.raises(ValueError, match='"train_soundscapes" cannot be combined with "balanced_sampling"'):
        train(Params(config), show_progress=False)
