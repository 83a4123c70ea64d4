"""Inception-v3 features for FID and KID, by pytorch-fid itself: the TF-ported FID weights file
`pt_inception-2015-12-05-6726825d.pth`, the FID-specific pooling changes, bilinear resize to 299
(pytorch-fid / torch-fidelity compatible).

The only file the metrics read: the weights file, from a local path or from the torch hub cache, where
pytorch-fid downloads it once. Shared by the metrics through `Context.inception()`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import UserError, brief

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_FEATURE_DIMS = 2048


class FeatureExtractor(Protocol):
    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> float (N, D)."""


class WeightsFileError(UserError, ValueError):
    """The FID weights file exists but is not the one FID needs."""


def default_fid_weights_path() -> Path:
    """Where pytorch-fid and torch-fidelity cache the file: <torch hub dir>/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def fid_weights_path(fid_weights: str = "") -> Path:
    """The path looked at: the `fid_weights` param when set, else the torch hub cache."""
    return Path(fid_weights).expanduser() if fid_weights else default_fid_weights_path()


def missing_weights_message(fid_weights: str = "", why: str = "") -> str:
    path = fid_weights_path(fid_weights)
    where = (f"fid_weights in params.yaml points to {path}, which does not exist" if fid_weights
             else f"{FID_WEIGHTS_FILE} is not in the torch hub cache and could not be downloaded ({why})")
    return (f"FID/KID skipped: {where}; copy {FID_WEIGHTS_FILE} (the pytorch-fid release file) to "
            f"{default_fid_weights_path()} or set fid_weights to its path")


def fid_inception(state: dict | None = None, path: Path | str = "?") -> nn.Module:
    """pytorch-fid's InceptionV3 (FID blocks, 2048-d pool features, resize to 299 and scaling to [-1, 1]
    inside). state None: pytorch-fid fetches the weights file itself, once, into the torch hub cache
    (raises offline). A state dict: loaded instead (pytorch-fid has no argument for a local file, so its
    download function is swapped for one that returns the dict)."""
    from unittest import mock

    from pytorch_fid import inception

    if state is None:
        return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[FID_FEATURE_DIMS]])
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    try:
        with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state):
            return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[FID_FEATURE_DIMS]])
    except RuntimeError as e:  # strict key/shape check of load_state_dict
        raise WeightsFileError(f"fid_weights: {path} is not the FID Inception weights file {FID_WEIGHTS_FILE} "
                               f"({brief(e, 160)})") from None


class _PoolFeatures(nn.Module):
    """pytorch-fid's network returns a list of (N, D, 1, 1) maps: give (N, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[-1].flatten(1)


class InceptionFeatures:
    """`features(uint8 (N, C, H, W)) -> (N, 2048)` with pytorch-fid's preprocessing: [0, 1] floats, grey
    repeated to RGB; the network itself resizes to 299x299 (bilinear) and scales to [-1, 1].

    Any module mapping (N, 3, H, W) in [0, 1] to (N, D) can be passed as `net`.
    """

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu", batch_size: int = 50,
                 progress: bool = False):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch_size, self.progress = batch_size, progress

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device).float() / 255.0
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def features(self, images: np.ndarray, desc: str = "Inception") -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(images), self.batch_size), desc=desc, unit="batch",
                      disable=not self.progress, leave=False, dynamic_ncols=True):
            out.append(self.net(self.preprocess(images[i:i + self.batch_size])).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FID_FEATURE_DIMS), np.float32)


def _default_build(state: dict | None, path) -> nn.Module:
    return _PoolFeatures(fid_inception(state, path))


def load_inception(fid_weights: str = "", device: str | torch.device = "cpu", log: Callable[[str], None] = print,
                   build: Callable[[dict | None, Path | str], nn.Module] = _default_build,
                   progress: bool = False) -> InceptionFeatures | None:
    """The FID feature extractor, or None (after one line saying why and where to put the file).

    fid_weights set: that local file, never a download. Empty: the torch hub cache, where pytorch-fid
    downloads the file the first time (online); offline that fails and FID/KID are skipped.
    `build(state_dict or None, path)` makes the network (tests pass a small one)."""
    path = fid_weights_path(fid_weights)
    if fid_weights and not path.is_file():
        log(missing_weights_message(fid_weights))
        return None
    if not path.is_file():
        try:
            return InceptionFeatures(build(None, path), device, progress=progress)
        except WeightsFileError:
            raise
        except Exception as e:  # noqa: BLE001 - offline, proxy, disk full: no FID, one line
            log(missing_weights_message("", brief(e, 120)))
            return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise WeightsFileError(f"fid_weights: {path} could not be read as a PyTorch state dict ({brief(e)}); "
                               f"use the pytorch-fid file {FID_WEIGHTS_FILE}, or '' to skip FID/KID") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"fid_weights: {path} does not hold a state dict")
    return InceptionFeatures(build(state, path), device, progress=progress)
