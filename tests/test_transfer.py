"""Training pretrained backbones: front-end check, normalisation rule, frozen backbone, learning rates, head.

The yamnet tests use the real AudioSet weights (converted once per session) on tiny synthetic
feature sets of one 96-frame patch per clip, so each trains in seconds.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from audioclf.checkpoint import load_checkpoint
from audioclf.classifier import AudioClassifier, constructor_args
from audioclf.config import ConfigError
from audioclf.frontend import FeatureParams
from audioclf.listfile import FEATURE_CONFIG, LISTS_DIR
from audioclf.training import build_optimizer, build_scheduler, train
from audioclf.transfer import TransferError, apply_freezing, parameter_groups
from models.yamnet import audioset_class_names
from tools.synthetic_features import make_config, make_feature_dataset
from utils import Params

CRY = "Baby cry, infant cry"


def yamnet_features(root: Path, frontend: str = "yamnet") -> Path:
    """A 3-class feature set of (64, 96) clips whose feature_config.json says ``frontend``'s preset."""
    features = make_feature_dataset(root, per_class=(4, 2, 2), n_mels=64, n_frames=96)
    config_path = features / LISTS_DIR / FEATURE_CONFIG
    config = json.loads(config_path.read_text())
    params = FeatureParams.preset("yamnet") if frontend == "yamnet" else FeatureParams(n_mels=64, n_frames=96)
    config["feature_params"] = params.to_dict()
    config_path.write_text(json.dumps(config))
    return features


def yamnet_config(root: Path, features: Path, **overrides) -> Params:
    root.mkdir(parents=True, exist_ok=True)
    values = dict(model="yamnet", pretrained=True, model_args={}, epochs=1, batch_size=4, lr=0.001)
    values.update(overrides)
    return Params(make_config(root, features, **values))


def test_pretrained_yamnet_on_other_features_names_the_flags(tmp_path, yamnet_weights):
    """Default-front-end features: an error listing what differs and the --frontend yamnet command; no run folder."""
    params = yamnet_config(tmp_path, yamnet_features(tmp_path, frontend="default"))
    with pytest.raises(TransferError) as error:
        train(params, show_progress=False)
    message = str(error.value)
    assert "--frontend yamnet" in message and "n_fft 1024 (preset: 512)" in message
    assert "frontend 'default' (preset: 'yamnet')" in message and '"pretrained": false' in message
    assert not Path(params.checkpoint_dir).exists()


def test_scratch_yamnet_trains_on_any_features(tmp_path):
    """Without pretrained weights the front end is free (and normalisation applies as configured)."""
    features = make_feature_dataset(tmp_path, per_class=(3, 1, 1), n_mels=32, n_frames=96)
    result = train(yamnet_config(tmp_path, features, pretrained=False), show_progress=False)
    assert len(result["history"]) == 1


def test_normalisation_is_forced_off_and_an_explicit_one_refused(tmp_path, yamnet_weights):
    """Pretrained yamnet: the default becomes "none" (recorded); asking for per_band is an error."""
    features = yamnet_features(tmp_path)
    with pytest.raises(TransferError, match='"normalization": "per_band" cannot be used with pretrained "yamnet"'):
        train(yamnet_config(tmp_path / "a", features, normalization="per_band"), show_progress=False)
    params = yamnet_config(tmp_path / "b", features, freeze_backbone=True)
    train(params, show_progress=False)
    checkpoint = load_checkpoint(Path(params.checkpoint_dir) / "model_best.pth.tar")
    assert checkpoint["config"]["normalization"] == "none" and checkpoint["normalization"]["mode"] == "none"
    assert (checkpoint["model"]["normalize.mean"] == 0).all() and (checkpoint["model"]["normalize.std"] == 1).all()
    assert json.loads((Path(params.checkpoint_dir) / "config.json").read_text())["normalization"] == "none"


def pretrained_and_trained(tmp_path: Path, epochs: int, **overrides) -> tuple[dict, dict]:
    """YAMNet's pretrained state dict (3-class head) and the one after ``epochs`` of training with ``overrides``."""
    params = yamnet_config(tmp_path, yamnet_features(tmp_path), epochs=epochs, lr=0.01, **overrides)
    pretrained = AudioClassifier(**constructor_args("yamnet", 3, 64, {}), pretrained=True).state_dict()
    train(params, show_progress=False)
    return pretrained, load_checkpoint(Path(params.checkpoint_dir) / f"checkpoint_epoch{epochs:04d}.pth.tar")["model"]


def test_frozen_backbone_trains_only_the_head_and_keeps_batch_norm_statistics(tmp_path, yamnet_weights):
    """Linear probe: after training, every backbone tensor (BN running stats included) is the pretrained one."""
    pretrained, trained = pretrained_and_trained(tmp_path, 2, freeze_backbone=True)
    head = ("backbone.classifier.weight", "backbone.classifier.bias")
    for key, value in pretrained.items():
        if key not in head and not key.startswith("normalize."):
            assert torch.equal(trained[key], value), key
    assert not torch.equal(trained[head[0]], pretrained[head[0]])


def test_freeze_bn_fine_tunes_the_weights_but_keeps_the_pretrained_statistics(tmp_path, yamnet_weights):
    """freeze_bn: conv weights and BN shifts move, every BN running statistic stays the pretrained one."""
    pretrained, trained = pretrained_and_trained(tmp_path, 1, freeze_bn=True)
    statistics = [key for key in pretrained if key.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * 27  # YAMNet's 27 batch-norm layers
    for key in statistics:
        assert torch.equal(trained[key], pretrained[key]), key
    moved = {key for key in pretrained if not torch.equal(trained[key], pretrained[key])}
    assert {"backbone.classifier.weight", "backbone.features.0.conv.weight", "backbone.features.0.bn.bias"} <= moved


def test_freeze_bn_needs_pretrained_weights(tmp_path):
    """From scratch there are no statistics to keep: the config error says which key to set."""
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=16, n_frames=20)
    with pytest.raises(ConfigError, match='"freeze_bn": true keeps pretrained batch-norm statistics, so it needs '
                                          '"pretrained": true'):
        Params(make_config(tmp_path, features, freeze_bn=True))


def test_freeze_layers_keeps_the_first_layers_as_loaded_and_fine_tunes_the_rest(tmp_path, yamnet_weights):
    """freeze_layers 6: layers 0-5 (weights, BN statistics) stay the pretrained ones; layer 6 on moves."""
    pretrained, trained = pretrained_and_trained(tmp_path, 1, freeze_layers=6)
    frozen = [key for key in pretrained if key.split(".")[:2] == ["backbone", "features"]
              and int(key.split(".")[2]) < 6]
    assert len(frozen) == 6 + 5 * 12  # the first conv and its BN (6 tensors), then 5 separable blocks of 12
    for key in frozen:
        assert torch.equal(trained[key], pretrained[key]), key
    moved = {key for key in pretrained if not torch.equal(trained[key], pretrained[key])}
    assert {"backbone.features.6.depthwise.conv.weight", "backbone.features.6.depthwise.bn.running_mean",
            "backbone.classifier.weight"} <= moved


def test_freeze_layers_stays_in_eval_mode_and_out_of_the_optimizer():
    """model.train() leaves frozen layers in eval mode; their parameters get no gradient and no optimizer group."""
    model = AudioClassifier(**constructor_args("yamnet", 2, 64, {}))
    model.freeze_layers(2)
    model.eval()
    model.train()
    for instance in (model, copy.deepcopy(model).train()):  # (a deep copy, as the weight average makes)
        layers = instance.backbone.features
        assert not any(module.training for layer in layers[:2] for module in layer.modules())
        assert all(module.training for layer in layers[2:] for module in layer.modules()) and instance.training
    layers = model.backbone.features
    model(torch.randn(2, 1, 64, 96)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in layers[:2].parameters())
    assert all(p.grad is not None for p in layers[2:].parameters() if p.requires_grad)  # (BN scales: fixed at 1)
    assert sum(p.requires_grad for p in layers[2:].parameters()) == 12 * 4  # 2 conv weights + 2 BN shifts per block
    params = SimpleNamespace(lr=0.1, backbone_lr_scale=0.1, freeze_backbone=False)  # the keys parameter_groups reads
    trained = {id(p) for group in parameter_groups(params, model) for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert not trained & {id(p) for p in layers[:2].parameters()}


def test_freeze_layers_errors_name_the_key_and_the_limit(tmp_path):
    """Beyond the model's layers, a model without a layer list, from scratch, or with freeze_backbone: clear errors."""
    freeze = SimpleNamespace(freeze_backbone=False, freeze_bn=False, freeze_layers=15)  # what apply_freezing reads
    with pytest.raises(TransferError, match=r'^"freeze_layers": model \'yamnet\' has 14 layers to freeze, not 15: '
                                            r"set it to 1-14 \(0 freezes none\)$"):
        apply_freezing(freeze, AudioClassifier(**constructor_args("yamnet", 2, 64, {})))
    with pytest.raises(TransferError, match=r'^"freeze_layers": model \'resnet18\' has no list of layers to freeze '
                                            r"\(models with one: densenet, efficientnetv2_s, mobilenetv3_small, "
                                            r"yamnet\); set it to 0 or use one of those$"):
        apply_freezing(SimpleNamespace(**{**vars(freeze), "freeze_layers": 1}),
                       AudioClassifier(**constructor_args("resnet18", 2, 64, {})))
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=16, n_frames=20)
    with pytest.raises(ConfigError, match='"freeze_layers" keeps pretrained layers as loaded, so it needs '
                                          '"pretrained": true'):
        Params(make_config(tmp_path, features, freeze_layers=2))
    with pytest.raises(ConfigError, match='"freeze_backbone": true already freezes every layer'):
        Params(make_config(tmp_path, features, freeze_layers=2, freeze_backbone=True, pretrained=True))


def test_frozen_model_keeps_batch_norm_in_eval_mode_when_training():
    """model.train() leaves a frozen backbone's BN layers in eval mode (running stats not updated)."""
    model = AudioClassifier(**constructor_args("audiocnn", 2, 16, {"width": 4}))
    model.freeze_backbone()
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.training
    before = norms[0].running_mean.clone()
    model(torch.randn(4, 1, 16, 20))
    assert torch.equal(norms[0].running_mean, before)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["backbone.fc.weight", "backbone.fc.bias"]


def test_backbone_learning_rate_is_a_fraction_of_the_heads(tmp_path):
    """backbone_lr_scale: two Adam groups (head at lr, backbone at lr x scale), both follow the schedule."""
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=16, n_frames=20)
    params = Params(make_config(tmp_path, features, backbone_lr_scale=0.1, lr=0.01, scheduler="step",
                                scheduler_step=1, scheduler_gamma=0.5))
    model = AudioClassifier(**constructor_args("audiocnn", 3, 16, {"width": 4}))
    optimizer = build_optimizer(params, model)
    assert [(group["name"], group["lr"]) for group in optimizer.param_groups] == [("head", 0.01), ("backbone", 0.001)]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
    scheduler = build_scheduler(params, optimizer)
    optimizer.step()
    scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.005, 0.0005])


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_key_picks_the_optimizer_and_where_weight_decay_applies(tmp_path, name):
    """adam and sgd decay every parameter (L2 in the gradient); adamw decays conv and linear weights only."""
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=16, n_frames=20)
    params = Params(make_config(tmp_path, features, optimizer=name, weight_decay=0.05, backbone_lr_scale=0.1,
                                lr=0.01))
    model = AudioClassifier(**constructor_args("audiocnn", 3, 16, {"width": 4}))
    optimizer = build_optimizer(params, model)
    assert type(optimizer) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
    decay = {(group["name"], group["lr"], group["weight_decay"]) for group in optimizer.param_groups}
    if name == "adamw":
        assert decay == {("head", 0.01, 0.05), ("head_no_decay", 0.01, 0.0),
                         ("backbone", 0.001, 0.05), ("backbone_no_decay", 0.001, 0.0)}
        decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] for p in group["params"]}
        assert decayed == {id(p) for p in model.parameters() if p.ndim >= 2}
    else:
        assert decay == {("head", 0.01, 0.05), ("backbone", 0.001, 0.05)}
    if name == "sgd":
        assert {group["momentum"] for group in optimizer.param_groups} == {0.9}


def test_unknown_optimizer_is_refused_with_the_choices(tmp_path):
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=16, n_frames=20)
    with pytest.raises(ConfigError, match=r'optimizer.*"adam", "adamw", "sgd"'):
        Params(make_config(tmp_path, features, optimizer="lamb"))


def test_frozen_backbone_with_a_learning_rate_scale_is_refused(tmp_path):
    """The two keys contradict each other: the error says to remove one."""
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=16, n_frames=20)
    params = Params(make_config(tmp_path, features, freeze_backbone=True, backbone_lr_scale=0.1))
    model = AudioClassifier(**constructor_args("audiocnn", 3, 16, {"width": 4}))
    model.freeze_backbone()
    with pytest.raises(TransferError, match="remove one of the two"):
        parameter_groups(params, model)


def test_head_classes_start_from_the_audioset_rows(tmp_path, yamnet_weights):
    """head_classes {"babycry": "Baby cry, infant cry"}: that class starts as YAMNet's cry detector, others at 0."""
    from audioclf.training import build_data, build_model
    from audioclf.runtime import DistInfo

    features = yamnet_features(tmp_path)
    params = yamnet_config(tmp_path, features, head_classes={"babycry": CRY})
    data = build_data(params, DistInfo(), torch.device("cpu"))
    model, _ = build_model(params, data.train_set)
    original = AudioClassifier(**constructor_args("yamnet", 521, 64, {}), pretrained=True,
                               head_from_pretrained=range(521))
    cry = audioset_class_names().index(CRY)
    assert data.train_set.class_names[0] == "babycry"
    assert torch.equal(model.head().weight[0], original.head().weight[cry])
    assert not model.head().weight[1:].any() and not model.head().bias[1:].any()


@pytest.mark.parametrize("mapping, message", [
    ({"babycry": "Baby crying"}, r"'Baby crying' is not a class of yamnet's pretrained head; close: 'Baby cry, infant cry'"),
    ({"cat": CRY}, r"'cat' is not a class of the dataset"),
])
def test_head_classes_errors_name_the_class(tmp_path, yamnet_weights, mapping, message):
    """Misspelt pretrained classes get the closest AudioSet names; unknown dataset classes are named."""
    params = yamnet_config(tmp_path, yamnet_features(tmp_path), head_classes=mapping)
    with pytest.raises(TransferError, match=message):
        train(params, show_progress=False)
