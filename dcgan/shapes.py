"""What a generator and an encoder must agree on to be served or used together: nz, image size, channels.

Without torch: the serving image checks exported ONNX files with it."""
from __future__ import annotations

KEYS = ("nz", "image_size", "channels")


def encoder_misfit(encoder_config: dict, generator_config: dict) -> str | None:
    """None when an encoder fits a generator (same nz, image size and channels); else both shapes, worded
    to follow the encoder's name: "(for nz 9, 32 px, 1 channels) does not fit the generator (nz 8, ...)"."""
    if all(encoder_config[k] == generator_config[k] for k in KEYS):
        return None
    shape = "nz {nz}, {image_size} px, {channels} channels"
    return f"(for {shape.format(**encoder_config)}) does not fit the generator ({shape.format(**generator_config)})"
