"""Using a trained generator: sample images, latent -> image, image -> latent (projection), interpolation.

Images come from `sampling.sample_images` (the generator in eval mode: an image depends only on its own z,
never on what else is in the batch). Every file is written atomically (dcgan.files): a run killed half-way
leaves whole files, the previous ones or the new ones, never a truncated one.
"""
from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import pictures, sampling
from .errors import UserError
from .files import atomic_write
from .images import EXTENSION_FORMATS, BadImage, decode

NOISE_BATCH = 256  # latents write_samples draws from its generator per step: changing it changes every image
_SAFE_KEY = re.compile(r"^[^/\\\x00-\x1f]+$")
MAX_KEY_BYTES = 200  # <key>.png and its temporary name stay under the usual 255-byte file name limit


def noise(n: int, nz: int, seed: int) -> torch.Tensor:
    return torch.randn(n, nz, generator=torch.Generator().manual_seed(seed))


def write_samples(G, out_dir: Path, n: int, seed: int, device, progress: bool = True) -> int:
    """n PNG files out_dir/000000.png ... from seeded noise, generated and written batch by batch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    width = max(6, len(str(n - 1)))
    with tqdm(total=n, desc="generate", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, n, NOISE_BATCH):
            m = min(NOISE_BATCH, n - start)
            # Always draw a full batch of noise: image i is then the same whatever n is
            # (torch draws short and long normal runs with different algorithms).
            imgs = sampling.sample_images(G, torch.randn(NOISE_BATCH, G.nz, generator=gen)[:m], device)
            for j, img in enumerate(imgs):
                pictures.save_png(pictures.to_pil(img), out_dir / f"{start + j:0{width}d}.png")
            bar.update(m)
    return n


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: stays on the shell where Gaussian latents live (linear cuts through it)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1, 1))
    so = torch.sin(omega)
    lerp = (1 - t) * a + t * b
    out = (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b
    return torch.where(so.abs() < 1e-6, lerp, out)


def interpolation(G, seed: int, device, rows: int = 4, steps: int = 10) -> np.ndarray:
    """rows x steps images, each row a slerp path between two seeded latents."""
    ends = noise(2 * rows, G.nz, seed)
    z = torch.stack([slerp(ends[2 * r], ends[2 * r + 1], t) for r in range(rows)
                     for t in np.linspace(0, 1, steps)])
    return sampling.sample_images(G, z, device)


# ---- latent -> image -------------------------------------------------------------------------

@dataclass
class LineError:
    line: int
    message: str

    def __str__(self):
        return f"line {self.line}: {self.message}"


def _json_lines(text: str):
    """(line number, object) for each non-blank line; a LineError in place of the object when it is not one."""
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield i, LineError(i, f"bad JSON: {e.msg}")
            continue
        yield i, rec if isinstance(rec, dict) else LineError(i, "each line must be a JSON object")


def _key(rec: dict, seen: set) -> str:
    key = rec.get("key")
    if not isinstance(key, str) or not _SAFE_KEY.match(key) or key in (".", ".."):
        raise ValueError(f"'key' must be a non-empty string usable as a file name (no '/', '\\'), got {key!r:.80}")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:  # the key becomes <key>.png: file systems allow 255 bytes
        raise ValueError(f"'key' is {len(key.encode('utf-8'))} bytes in UTF-8; file names allow at most "
                         f"{MAX_KEY_BYTES}: use a shorter key")
    if key in seen:
        raise ValueError(f"duplicate key {key!r}")
    return key


def read_utf8(path: Path) -> str:
    """A JSON Lines file as text; a UserError naming the file when it is not UTF-8."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8 JSON Lines") from None


def parse_latents(text: str, nz: int) -> tuple[list[tuple[str, list[float]]], list[LineError]]:
    """JSON Lines of {"key": ..., "z": [nz floats]} ("embeddings" accepted for "z") -> good rows, errors."""
    good, errors, seen = [], [], set()
    for i, rec in _json_lines(text):
        if isinstance(rec, LineError):
            errors.append(rec)
            continue
        try:
            key = _key(rec, seen)
            z = rec["z"] if "z" in rec else rec.get("embeddings")
            if z is None:
                raise ValueError("missing field 'z' (or 'embeddings')")
            if not isinstance(z, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in z):
                raise ValueError("'z' must be a list of numbers")
            if len(z) != nz:
                raise ValueError(f"'z' has {len(z)} numbers, the model's nz is {nz}")
            if not all(math.isfinite(v) for v in z):
                raise ValueError("'z' contains NaN or infinity")
        except (ValueError, KeyError) as e:
            errors.append(LineError(i, str(e)))
            continue
        seen.add(key)
        good.append((key, [float(v) for v in z]))
    return good, errors


def latents_to_images(G, rows: list[tuple[str, list[float]]], out_dir: Path, device) -> int:
    """out_dir/<key>.png for each (key, z), a batch at a time (memory stays flat however many rows)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(rows), sampling.BATCH):
        chunk = rows[start:start + sampling.BATCH]
        imgs = sampling.sample_images(G, torch.tensor([z for _, z in chunk], dtype=torch.float32), device)
        for (key, _), img in zip(chunk, imgs):
            pictures.save_png(pictures.to_pil(img), out_dir / f"{key}.png")
    return len(rows)


# ---- image -> latent ------------------------------------------------------------------------

def read_images_for(G, source: Path, background: str = "white") -> tuple[list[str], np.ndarray, list[LineError | str]]:
    """A folder of images or JSON Lines of {"key", "image_bytes": {"b64"}} -> keys, uint8 array, problems."""
    cfg = G.config
    args = dict(channels=cfg["channels"], size=cfg["image_size"], resize="crop", background=background,
                max_pixels=89_478_485)
    keys, arrays, problems = [], [], []
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() not in EXTENSION_FORMATS:
                continue
            try:
                arrays.append(decode(path.read_bytes(), path.suffix, **args))
                keys.append(path.relative_to(source).with_suffix("").as_posix().replace("/", "_"))
            except BadImage as e:
                problems.append(f"{path}: {e}")
    elif source.is_file():
        seen: set = set()
        for i, rec in _json_lines(read_utf8(source)):
            if isinstance(rec, LineError):
                problems.append(rec)
                continue
            try:
                key = _key(rec, seen)
                b64 = (rec.get("image_bytes") or {}).get("b64") if isinstance(rec.get("image_bytes"), dict) else None
                if not isinstance(b64, str):
                    raise ValueError("missing 'image_bytes': {'b64': ...}")
                raw = base64.b64decode(b64, validate=True)
                fmt_ext = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"BM": ".bmp"}
                ext = next((e for sig, e in fmt_ext.items() if raw.startswith(sig)), ".png")
                arrays.append(decode(raw, ext, **args))
                keys.append(key)
                seen.add(key)
            except (ValueError, BadImage) as e:
                problems.append(LineError(i, str(e)))
    else:
        raise FileNotFoundError(f"input '{source}' is neither a folder nor a file")
    shape = (0, cfg["channels"], cfg["image_size"], cfg["image_size"])
    return keys, (np.stack(arrays) if arrays else np.zeros(shape, np.uint8)), problems


def _pyramid_loss(x: torch.Tensor, y: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Per-image pixel MSE plus MSE of 2x, 4x, 8x average-pooled versions (coarse shape before detail)."""
    loss = ((x - y) ** 2).flatten(1).mean(1)
    for _ in range(levels - 1):
        if x.shape[-1] < 4:
            break
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        loss = loss + ((x - y) ** 2).flatten(1).mean(1)
    return loss


def invert(G, images: np.ndarray, steps: int, device, seed: int = 0, candidates: int = 32,
           lr: float = 0.05, batch: int = 64, progress: bool = True, encoder=None) -> tuple[np.ndarray, np.ndarray]:
    """Find for each uint8 image the z whose generated image is closest. Returns (z (N, nz), per-image MSE in [-1,1] units).
    Start: E(x) when an encoder is given (steps=0: the encoder alone), else the best of `candidates` random
    latents; then `steps` of Adam on the pixel (pyramid) loss."""
    trainable = [p.requires_grad for p in G.parameters()]
    G.eval()
    for p in G.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    zs, errs = [], []
    n_batches = math.ceil(len(images) / batch)
    with tqdm(total=n_batches * steps, desc="invert", unit="step", disable=not progress or steps == 0,
              dynamic_ncols=True) as bar:
        for start in range(0, len(images), batch):
            target = pictures.to_float(images[start:start + batch]).to(device)
            m = len(target)
            if encoder is not None:
                with torch.no_grad():
                    z = encoder.eval()(target).float().clone().requires_grad_(True)
            else:
                # Start each image from the best of several random latents: cheap, avoids bad basins.
                cand = torch.randn(candidates, m, G.nz, generator=gen).to(device)
                with torch.no_grad():
                    losses = torch.stack([_pyramid_loss(G(c), target) for c in cand])  # (candidates, m)
                z = cand[losses.argmin(0), torch.arange(m, device=device)].clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                loss = _pyramid_loss(G(z), target)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                bar.update()
            with torch.no_grad():
                errs.append(((G(z) - target) ** 2).flatten(1).mean(1).cpu())
            zs.append(z.detach().cpu())
    for p, was in zip(G.parameters(), trainable):   # as it was: a server's frozen G stays frozen
        p.requires_grad_(was)
    return torch.cat(zs).numpy(), torch.cat(errs).numpy()


def write_latents_jsonl(path: Path, keys: list[str], z: np.ndarray, errors: np.ndarray | None = None):
    """One {"key", "z"(, "reconstruction_mse")} per line, atomically."""
    def write(f):
        for i, key in enumerate(keys):
            rec = {"key": key, "z": [round(float(v), 6) for v in z[i]]}
            if errors is not None:
                rec["reconstruction_mse"] = float(errors[i])
            f.write((json.dumps(rec) + "\n").encode("utf-8"))

    atomic_write(path, write)
