"""The contract's defaults, pinned: what a user gets without passing a flag or a key."""
from __future__ import annotations

import inspect

import torch

import preprocessingBabyCrying
from audioclf.training import build_scheduler
from utils import CONFIG_SCHEMA, Params, list_checkpoints, save_checkpoint

MINIMAL = {"datapath": "f", "trainlist": "t", "vallist": "v", "evallist": "e", "checkpoint_dir": "c",
           "model": "audiocnn", "epochs": 100, "batch_size": 8, "lr": 0.01}


def test_preprocessing_command_line_defaults():
    args = preprocessingBabyCrying.parse_args(["--csv_file", "meta.csv", "--data_dir", "wav"])
    assert (args.samplerate, args.window_size, args.hop_size, args.n_fft, args.n_mels, args.n_frames) == \
        (16000, 25, 10, 1024, 128, 250)
    assert (str(args.save_dir), args.pad_mode, args.seed) == ("features", "repeat", 42)
    params = preprocessingBabyCrying.options_from_args(args).params
    assert (params.sample_rate, params.win_length, params.hop_length) == (16000, 400, 160)


def test_scheduler_true_is_steplr_every_30_epochs_times_0_1():
    params = Params.from_dict({**MINIMAL, "scheduler": True})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=params.lr)
    scheduler = build_scheduler(params, optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert (scheduler.step_size, scheduler.gamma) == (30, 0.1)
    rates = []
    for _ in range(61):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == rates[29] == 0.01
    assert abs(rates[30] - 0.001) < 1e-12 and abs(rates[60] - 0.0001) < 1e-12


def test_five_epoch_checkpoints_are_kept_by_default(tmp_path):
    assert CONFIG_SCHEMA["keep_checkpoints"].default == 5
    assert Params.from_dict(MINIMAL).keep_checkpoints == 5
    assert inspect.signature(save_checkpoint).parameters["keep"].default == 5
    for epoch in range(1, 8):
        save_checkpoint({"epoch": epoch}, tmp_path, epoch, is_best=False)
    assert [path.name for path in list_checkpoints(tmp_path)] == \
        [f"checkpoint_epoch{epoch:04d}.pth.tar" for epoch in range(3, 8)]
