"""Training loop: learning, checkpoints kept, TensorBoard tags, resume equivalence, failures."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import train as train_script
from audioclf.checkpoint import model_from_checkpoint
from audioclf.training import MultiLabelLoss, NonFiniteLossError, is_better, resumed_best, train
from dataloaders.dataloader import SpectrogramDataset
from tools.synthetic_features import make_config, make_feature_dataset
from utils import Params, list_checkpoints, load_checkpoint


def read_scalar_tags(summaries_dir: Path) -> dict[str, list[float]]:
    """Scalars from tensorboardX event files, parsed with tensorboardX's own protobufs."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[float]] = {}
    for path in sorted(summaries_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        position = 0
        while position < len(data):
            length = int.from_bytes(data[position:position + 8], "little")
            record = data[position + 12: position + 12 + length]
            position += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_feature_dataset(tmp_path_factory.mktemp("data"))


def test_best_by_last_epoch_makes_model_best_the_final_epoch(tmp_path, features):
    result = train(Params(make_config(tmp_path, features, epochs=3, best_by="last_epoch", lr=0.05)),
                   show_progress=False)
    accuracies = [entry["validation"]["accuracy"] for entry in result["history"]]
    best = load_checkpoint(tmp_path / "checkpoints" / "model_best.pth.tar")
    assert best["epoch"] == best["best_epoch"] == 3 and result["best_epoch"] == 3
    assert result["best_accuracy"] == accuracies[-1]
    last = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_epoch0003.pth.tar")["model"]
    assert all(torch.equal(best["model"][name], tensor) for name, tensor in last.items())


def test_model_best_rule_is_accuracy_then_loss():
    best = {"accuracy": 0.9, "loss": 0.30, "epoch": 4}
    assert is_better({"accuracy": 0.95, "loss": 0.90}, best)  # higher accuracy wins whatever the loss
    assert not is_better({"accuracy": 0.85, "loss": 0.01}, best)
    assert is_better({"accuracy": 0.9, "loss": 0.25}, best)  # a tie goes to the lower loss
    assert not is_better({"accuracy": 0.9, "loss": 0.30}, best)  # an exact tie keeps the earlier epoch
    assert is_better({"accuracy": 0.0, "loss": 2.0}, {"accuracy": -1.0, "loss": float("inf"), "epoch": 0})


def test_short_run_learns_keeps_five_checkpoints_and_logs(tmp_path, features):
    config = make_config(tmp_path, features, epochs=7, spec_augment=True, random_shift=True)
    result = train(Params(config), show_progress=False)
    # 3 classes: chance is 1/3; the bands are easy, so validation accuracy must be far above it.
    assert result["best_accuracy"] >= 0.9
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [path.name for path in checkpoints] == [f"checkpoint_epoch{e:04d}.pth.tar" for e in range(3, 8)]
    assert (tmp_path / "checkpoints" / "model_best.pth.tar").is_file()
    scalars = read_scalar_tags(tmp_path / "runs")
    for tag in ("loss/train", "loss/validation", "accuracy/train", "accuracy/validation", "lr"):
        assert len(scalars[tag]) == 7, tag
    best = load_checkpoint(tmp_path / "checkpoints" / "model_best.pth.tar")
    assert best["epoch"] == result["best_epoch"]
    # model_best: the highest validation accuracy, and of the epochs that reach it the lowest loss
    validation = {row["epoch"]: row["validation"] for row in result["history"]}
    top = max(row["accuracy"] for row in validation.values())
    expected = min((row["loss"], epoch) for epoch, row in validation.items() if row["accuracy"] == top)[1]
    assert result["best_epoch"] == expected
    assert best["best_loss"] == pytest.approx(validation[expected]["loss"])
    assert best["class_names"] == ["babycry", "dog bark", "noise"]
    for key in ("optimizer", "lr_scheduler", "scaler", "config", "model_args", "feature_params",
                "normalization", "rng_state", "best_accuracy"):
        assert key in best, key
    saved_config = json.loads((tmp_path / "checkpoints" / "config.json").read_text())
    assert saved_config["epochs"] == 7


def test_checkpoint_rebuilds_model_with_normalisation(tmp_path, features):
    config = make_config(tmp_path, features, epochs=1)
    train(Params(config), show_progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "model_best.pth.tar")
    model = model_from_checkpoint(checkpoint)
    mean = checkpoint["normalization"]["mean"]
    assert mean.shape == (32,)
    # class 0's band (rows 0-3) is 30 dB brighter in a third of the clips: the band means show it.
    assert mean[:4].mean() > mean[12:].mean() + 5
    assert torch.equal(model.normalize.mean.flatten(), mean)


@pytest.mark.parametrize("loader", [{}, {"feature_cache": False, "num_workers": 2}],
                         ids=["feature-cache", "files-with-workers"])
def test_resume_equals_uninterrupted_run(tmp_path, features, loader):
    common = dict(spec_augment=True, random_shift=True, mixup_alpha=0.2, splice_prob=0.3, time_stretch=0.1,
                  noise_prob=0.5, gain_db=6.0, eq_db=6.0,
                  scheduler="step", scheduler_step=1, **loader)
    straight = tmp_path / "straight"
    straight.mkdir()
    train(Params(make_config(straight, features, epochs=3, **common)), show_progress=False)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    train(Params(make_config(resumed, features, epochs=2, **common)), show_progress=False)
    train(Params(make_config(resumed, features, epochs=3, **common)), resume=True, show_progress=False)

    a = load_checkpoint(straight / "checkpoints" / "checkpoint_epoch0003.pth.tar")
    b = load_checkpoint(resumed / "checkpoints" / "checkpoint_epoch0003.pth.tar")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 3


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, features, monkeypatch):
    config = make_config(tmp_path, features, epochs=3)
    calls = {"n": 0}
    original = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, targets):
        loss = original(self, logits, targets)
        if self.reduction != "mean":  # validation's summed loss: leave it alone
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 6 else loss  # epoch 1 has 6 steps (48 clips / 8)

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="loss became nan in epoch 2"):
        train(Params(config), show_progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint_epoch0001.pth.tar"]


def test_resume_refuses_a_changed_training_setting_and_leaves_the_run_as_it_was(tmp_path, features):
    train(Params(make_config(tmp_path, features, epochs=1)), show_progress=False)
    saved = (tmp_path / "checkpoints" / "config.json").read_text()
    for overrides, named in (({"lr": 0.1}, "lr (0.003 -> 0.1)"), ({"seed": 7}, "seed (0 -> 7)"),
                             ({"scheduler": "cosine", "epochs": 2}, "scheduler ('none' -> 'cosine')"),
                             ({"background_list": str(features / "filenames/train.txt")}, "background_list (None -> ")):
        with pytest.raises(ValueError, match=re.escape(named) + ".*restore these .*config.json.* or start a new"):
            train(Params(make_config(tmp_path, features, **{"epochs": 2, **overrides})), resume=True,
                  show_progress=False)
        assert (tmp_path / "checkpoints" / "config.json").read_text() == saved
    renamed = tmp_path / "renamed"  # the same clips under other class names: the labels would be permuted
    renamed.mkdir()
    for name in ("train.txt", "validation.txt"):  # the last field is the class name
        (renamed / name).write_text(re.sub(r" babycry$", " cry", (features / "filenames" / name).read_text(),
                                           flags=re.MULTILINE))
    (renamed / "feature_config.json").write_text(
        (features / "filenames/feature_config.json").read_text().replace("babycry", "cry"))
    with pytest.raises(ValueError, match=r"it was trained on the classes \['babycry', .*the training list now has "
                                         r"\['cry', "):
        train(Params(make_config(tmp_path, features, epochs=2, trainlist=str(renamed / "train.txt"),
                                 vallist=str(renamed / "validation.txt"))), resume=True, show_progress=False)
    # more epochs of a schedule that does not depend on them, a faster loader, a detection target and
    # evaluation's own keys (its tuning grid) resume fine
    result = train(Params(make_config(tmp_path, features, epochs=2, num_workers=0, target_class="babycry",
                                      detection_grid={"edge_trims": [0.0]}, max_false_alarm_rate=0.1)),
                   resume=True, show_progress=False)
    assert [entry["epoch"] for entry in result["history"]] == [2]


def test_interrupt_keeps_finished_epochs_and_resume_continues(tmp_path, features, monkeypatch):
    import audioclf.training as training

    config = make_config(tmp_path, features, epochs=3)
    original = training.train_one_epoch

    def interrupt_in_epoch_two(*args, **kwargs):
        if args[6] == 2:  # train_one_epoch(model, loader, criterion, optimizer, scaler, options, epoch, ...)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupt_in_epoch_two)
    assert train_script.main(["--config_path", str(config), "--no_progress"]) == 130
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint_epoch0001.pth.tar"]
    monkeypatch.setattr(training, "train_one_epoch", original)
    result = train(Params(config), resume=True, show_progress=False)
    assert [entry["epoch"] for entry in result["history"]] == [2, 3]


def test_an_interrupt_while_an_epoch_is_saved_reports_the_epochs_on_disk(tmp_path, features, monkeypatch, caplog):
    """Ctrl-C during epoch 2's save: the message names epoch 1, the newest checkpoint there is."""
    import audioclf.training as training

    original = training.save_checkpoint

    def interrupt_saving_epoch_two(state, checkpoint_dir, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(state, checkpoint_dir, epoch, *args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", interrupt_saving_epoch_two)
    config = make_config(tmp_path, features, epochs=3)
    assert train_script.main(["--config_path", str(config), "--no_progress"]) == 130
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint_epoch0001.pth.tar"]
    assert "interrupted: epochs up to 1 are saved in" in caplog.text


def test_unseen_validation_class_is_an_error(tmp_path, features):
    lists = tmp_path / "lists"
    lists.mkdir()
    train_lines = [line for line in (features / "filenames/train.txt").read_text().splitlines()
                   if not line.startswith("noise/")]
    (lists / "train.txt").write_text("\n".join(train_lines) + "\n")
    (lists / "feature_config.json").write_text((features / "filenames/feature_config.json").read_text())
    config = make_config(tmp_path, features, trainlist=str(lists / "train.txt"))
    with pytest.raises(ValueError, match=r"class\(es\) \['noise'\].*never occur in the training list"):
        train(Params(config), show_progress=False)


def test_a_target_class_that_is_not_a_class_is_refused_before_training(tmp_path, features):
    config = make_config(tmp_path, features, target_class="babycri")
    with pytest.raises(ValueError, match=r'"target_class" \'babycri\' is not a class of .*train.txt; its classes '
                                         r"are \['babycry', "):
        train(Params(config), show_progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_feature_file_named(tmp_path, features):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "validation.txt").write_text("babycry/does_not_exist.npy 0 babycry\n")
    (lists / "feature_config.json").write_text((features / "filenames/feature_config.json").read_text())
    config = make_config(tmp_path, features, vallist=str(lists / "validation.txt"))
    with pytest.raises(ValueError, match="does_not_exist.npy"):
        train(Params(config), show_progress=False)


def test_train_script_reports_config_typo(tmp_path, features, caplog):
    config = make_config(tmp_path, features, batchsize=4)
    assert train_script.main(["--config_path", str(config)]) == 1
    assert 'did you mean "batch_size"' in caplog.text


def test_input_smaller_than_backbone_minimum(tmp_path, features):
    config = make_config(tmp_path, features, model="inception", model_args={})
    with pytest.raises(ValueError, match="75"):
        train(Params(config), show_progress=False)


def test_fresh_run_refuses_to_mix_with_an_earlier_runs_checkpoints(tmp_path, features):
    config = make_config(tmp_path, features, epochs=1)
    train(Params(config), show_progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume"):
        train(Params(config), show_progress=False)
    assert train(Params(config), resume=True, show_progress=False)["history"] == []  # already finished


def test_short_run_on_demo_features_learns(tmp_path):
    from tools.demo_data import generate_demo_dataset
    from audioclf.frontend import FeatureParams
    from audioclf.preprocess import PreprocessOptions, run_preprocessing

    csv_file = generate_demo_dataset(tmp_path / "demo", clips_per_class=20, seed=3)
    features = tmp_path / "features"
    run_preprocessing(PreprocessOptions(csv_file=csv_file, data_dir=tmp_path / "demo" / "audio", save_dir=features,
                                        params=FeatureParams(n_mels=32, n_frames=100, n_fft=512), num_workers=2))
    config = make_config(tmp_path, features, epochs=7, batch_size=16, lr=0.005, normalization="per_clip",
                         random_shift=True, spec_augment=True, freq_mask=4, time_mask=10)
    result = train(Params(config), show_progress=False)
    # 6 classes, 2 validation clips each: chance is 1/6 ~ 0.17.
    assert result["best_accuracy"] >= 0.6, result["history"]
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 5


def test_unknown_model_fails_first_with_a_suggestion(tmp_path):
    config = make_config(tmp_path, tmp_path / "no_features_yet", model="resnet81")
    with pytest.raises(ValueError, match="Unknown model 'resnet81'. Did you mean 'resnet18'"):
        train(Params(config), show_progress=False)


def test_resuming_a_checkpoint_without_best_loss_keeps_its_model_best_on_a_tie():
    """A checkpoint from before best_loss: its loss is read from its own metrics when it is the best epoch;
    otherwise unknown, and an epoch of equal accuracy must not replace model_best whatever its loss."""
    old = {"best_accuracy": 0.9, "best_epoch": 3, "epoch": 5, "metrics": {"validation": {"loss": 0.7}}}
    best = resumed_best(old)
    assert (best["accuracy"], best["epoch"]) == (0.9, 3)
    assert not is_better({"accuracy": 0.9, "loss": 0.01}, best) and is_better({"accuracy": 0.91, "loss": 9.0}, best)
    assert resumed_best({**old, "best_epoch": 5})["loss"] == 0.7
    assert resumed_best({**old, "best_loss": 0.4})["loss"] == 0.4


def test_input_augmentations_are_the_configs_in_their_order(tmp_path):
    from audioclf.augment import add_noise, random_gain, random_lowpass, random_time_shift, random_time_stretch
    from audioclf.frontend import LogScale
    from audioclf.training import input_augmentations
    features = tmp_path / "features"  # the config only names it
    none = Params(make_config(tmp_path, features))
    assert input_augmentations(none, None, LogScale()) == ()
    some = Params(make_config(tmp_path, features, time_stretch=0.1, gain_db=6.0, random_shift=True, noise_prob=0.3,
                              lowpass_prob=0.5))
    steps = input_augmentations(some, None, LogScale("log_magnitude", 0.001))
    assert [getattr(step, "func", step) for step in steps] == [add_noise, random_gain, random_lowpass,
                                                               random_time_shift, random_time_stretch]
    assert steps[2].keywords == {"probability": 0.5, "scale": LogScale("log_magnitude", 0.001)}
    assert steps[0].keywords["probability"] == 0.3 and steps[0].keywords["snr_db"] == (10.0, 40.0)
    assert steps[1].keywords == {"max_db": 6.0, "scale": LogScale("log_magnitude", 0.001)}


def test_multi_label_loss_is_binary_cross_entropy_summed_over_classes():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 0.0, 3.0]])
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = -(one_hot * torch.log(torch.sigmoid(logits)) + (1 - one_hot) * torch.log(1 - torch.sigmoid(logits)))
    assert MultiLabelLoss()(logits, torch.tensor([0, 2])).item() == pytest.approx(expected.sum(1).mean().item())
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])  # a mixed example's probability targets
    expected_soft = -(soft * torch.log(torch.sigmoid(logits)) + (1 - soft) * torch.log(1 - torch.sigmoid(logits)))
    assert MultiLabelLoss()(logits, soft).item() == pytest.approx(expected_soft.sum(1).mean().item())
    smoothed = one_hot * 0.9 + 0.1 / 3  # label smoothing moves each target as cross-entropy's does
    expected_smooth = -(smoothed * torch.log(torch.sigmoid(logits)) + (1 - smoothed) * torch.log(1 - torch.sigmoid(logits)))
    assert MultiLabelLoss(label_smoothing=0.1)(logits, torch.tensor([0, 2])).item() == pytest.approx(
        expected_smooth.sum(1).mean().item())
    weight = torch.tensor([2.0, 1.0, 0.5])  # each example weighted by its label's class, as cross-entropy does
    assert MultiLabelLoss(weight)(logits, torch.tensor([0, 2])).item() == pytest.approx(
        (expected.sum(1) * torch.tensor([2.0, 0.5])).mean().item())


def test_balanced_class_weights_rebalance_a_sigmoid_head():
    targets = torch.tensor([0] * 10 + [1] * 90)  # a rare class: 10 %
    counts = torch.bincount(targets).float()
    weight = counts.sum() / (2 * counts)  # build_criterion's "balanced"
    for loss, expected in ((MultiLabelLoss(), 0.1), (MultiLabelLoss(weight), 0.5)):
        bias = torch.zeros(2, requires_grad=True)
        optimizer = torch.optim.LBFGS([bias], max_iter=200)

        def closure():
            optimizer.zero_grad()
            value = loss(bias.expand(100, 2), targets)
            value.backward()
            return value

        optimizer.step(closure)
        assert torch.sigmoid(bias)[0].item() == pytest.approx(expected, abs=0.02)  # the rare class's probability


def test_multi_label_training_saves_a_sigmoid_head_whose_validation_loss_is_its_bce(tmp_path, features):
    config = make_config(tmp_path, features, epochs=3, multi_label=True, mixup_alpha=0.2)
    result = train(Params(config), show_progress=False)
    assert result["best_accuracy"] >= 0.9
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "model_best.pth.tar")
    assert checkpoint["model_args"]["multi_label"] is True
    model = model_from_checkpoint(checkpoint).eval()
    inputs = torch.randn(5, 1, 32, 50) * 10 - 40
    with torch.no_grad():
        logits = model(inputs)
    probabilities = model.probabilities(logits)
    assert torch.allclose(probabilities, torch.sigmoid(logits))
    assert not torch.allclose(probabilities.sum(1), torch.ones(5))  # independent classes, not a softmax
    # the validation loss recorded for the best epoch is the BCE of the validation clips (one window each)
    val = SpectrogramDataset(Params(config).vallist, features)
    batch = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        bce = MultiLabelLoss()(model(batch), val.labels).item()
    assert checkpoint["best_loss"] == pytest.approx(bce, rel=1e-4)
