"""Pictures people look at: sample grids, side-by-side pairs, strips."""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write


def to_uint8(x) -> np.ndarray:
    """Generator output in [-1, 1], (N, C, H, W), a torch tensor (any device) or a float array -> uint8."""
    if not isinstance(x, np.ndarray):
        x = x.detach().float().cpu().numpy()
    x = np.clip(x.astype(np.float32, copy=False), -1, 1)
    return np.round((x + 1) * np.float32(127.5)).astype(np.uint8)


def to_float(x):
    """uint8 (N, C, H, W) -> a float32 tensor in [-1, 1], the generator's range."""
    import torch   # here, not at the top: the serving image draws pictures with numpy alone, without torch

    return torch.as_tensor(x).float() / 127.5 - 1.0


def to_pil(img: np.ndarray) -> Image.Image:
    """One uint8 (C, H, W) image -> PIL."""
    return Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(img: np.ndarray, level: int = 1) -> bytes:
    """One uint8 (C, H, W) image (1 or 3 channels) -> PNG bytes: 8-bit grey or RGB, rows unfiltered, zlib.
    Written here because the server encodes one small image per prediction: Pillow's per-image setup takes
    ~130 us of CPU for a 32 px digit, these few lines ~20 us, for the same PNG (decoders read both)."""
    c, h, w = img.shape
    if c not in (1, 3):
        raise ValueError(f"png_bytes: 1 or 3 channels, got {c}")
    rows = np.ascontiguousarray(img[0] if c == 1 else img.transpose(1, 2, 0)).reshape(h, w * c)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, level))
            + _png_chunk(b"IEND", b""))


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, min_tile: int = 64,
         fill: int = 40) -> Image.Image:
    """uint8 (N, C, H, W) -> one picture; small tiles are enlarged (nearest) so 32px digits are legible."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    scale = max(1, math.ceil(min_tile / max(h, w)))
    th, tw = h * scale, w * scale
    canvas = np.full((ncol * (th + pad) + pad, nrow * (tw + pad) + pad, 3), fill, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        tile = img.transpose(1, 2, 0)
        if c == 1:
            tile = np.repeat(tile, 3, axis=2)
        tile = tile.repeat(scale, 0).repeat(scale, 1)
        y, x = pad + r * (th + pad), pad + col * (tw + pad)
        canvas[y:y + th, x:x + tw] = tile
    return Image.fromarray(canvas, "RGB")


def pairs(left: np.ndarray, right: np.ndarray, min_tile: int = 64) -> Image.Image:
    """Rows of (left | right) pairs, e.g. input | reconstruction or generated | nearest training image."""
    assert left.shape == right.shape, (left.shape, right.shape)
    inter = np.empty((2 * len(left),) + left.shape[1:], np.uint8)
    inter[0::2], inter[1::2] = left, right
    return grid(inter, nrow=2, min_tile=min_tile)


def save_png(img: Image.Image, path: Path):
    """Atomic PNG write: a reader never sees half a file."""
    atomic_write(path, lambda f: img.save(f, format="PNG"))
