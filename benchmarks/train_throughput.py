"""Training throughput: our loop against a pytorch/examples-style DCGAN loop, same images, same networks.

    python benchmarks/train_throughput.py                         # CPU: 64 px RGB b64 and the demo shape
    python benchmarks/train_throughput.py --device cuda           # GPU: 64 px RGB at batch 64, 256, 1024
    python benchmarks/train_throughput.py --rows 64x3x64 --steps 30 --variants   # also each fast-path setting

reference: a Dataset that opens and decodes the image files (PIL, resize, center crop, normalise) in a
DataLoader with worker processes, fp32, default Adam, `.item()` of both losses every step, as in
pytorch/examples' dcgan/main.py. ours: the prepared uint8 arrays resident on the device and the very
`Stepper`/`train_step` the train stage runs, with the fast path the params resolve to (precision,
channels_last, compile, CUDA graph). Both train our Generator/Discriminator; images/s after warm-up steps.
On a GPU, MFU = FLOPs per step (torch.utils.flop_counter) x steps/s over the card's dense bf16 peak.
The last line is JSON: {"device", "image_size", "batch_size", "ours_img_s", "reference_img_s", "ratio", "rows"}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dcgan import data as datamod
from dcgan.cpus import usable_cpus
from dcgan.device import adam, memory_format, pick_device, resolve, synchronize
from dcgan.engine import ResidentData, Stepper, train_step
from dcgan.images import EXTENSION_FORMATS
from dcgan.archs.dcgan import Discriminator, Generator, init_weights

POKEMON = ROOT.parent / "shared" / "datasets" / "pokemon"
NZ = 100
BF16_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


# ---------------------------------------------------------------- the reference: pytorch/examples style

class ImageFiles(torch.utils.data.Dataset):
    """Decode every file on every epoch, as torchvision.datasets.ImageFolder + transforms would."""

    def __init__(self, files: list[Path], size: int, channels: int):
        self.files, self.size, self.channels = files, size, channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            im = im.convert("RGBA").convert("RGB") if self.channels == 3 else im.convert("L")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def reference(files, size, channels, bs, steps, warmup, device, workers) -> float:
    torch.manual_seed(0)
    G = Generator(size, channels, NZ, 64).apply(init_weights).to(device)
    D = Discriminator(size, channels, 64).apply(init_weights).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(ImageFiles(files, size, channels), batch_size=bs, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    done, t0, it = 0, None, iter(loader)
    while done < warmup + steps:
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if done == warmup:
            synchronize(device)
            t0 = time.perf_counter()
        x = x.to(device)
        D.zero_grad()
        out_real = D(x)
        err_real = F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
        err_real.backward()
        fake = G(torch.randn(bs, NZ, device=device))
        out_fake = D(fake.detach())
        err_fake = F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake))
        err_fake.backward()
        opt_d.step()
        G.zero_grad()
        out = D(fake)
        err_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        err_g.backward()
        opt_g.step()
        _ = (err_real + err_fake).item(), err_g.item()   # what the example prints every step
        done += 1
    synchronize(device)
    return steps * bs / (time.perf_counter() - t0)


# ---------------------------------------------------------------- ours

def ours(images: np.ndarray, bs, steps, warmup, device, params: dict, log=lambda s: None):
    """(images/s, FLOPs per step or None) for the stage's own step with the params' fast path."""
    size, channels = images.shape[2], images.shape[1]
    fast = resolve(params, device)
    fmt = memory_format(device, fast.channels_last)
    torch.manual_seed(0)
    G = Generator(size, channels, NZ, 64).apply(init_weights).to(device, memory_format=fmt)
    D = Discriminator(size, channels, 64).apply(init_weights).to(device, memory_format=fmt)
    opt_g = adam(G.parameters(), 2e-4, (0.5, 0.999), device, capturable=fast.cuda_graph)
    opt_d = adam(D.parameters(), 2e-4, (0.5, 0.999), device, capturable=fast.cuda_graph)
    data = ResidentData(images, device, fmt)
    stepper = Stepper(G, D, opt_g, opt_d, NZ, fast, device, log=log)
    stepper.compile(data, bs)
    n = len(images)
    perm = torch.randperm(n).to(data.index_device)
    flops = None
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as fc:
            x = data.batch(perm[:bs])
            train_step(G, D, opt_g, opt_d, x, torch.randn(bs, NZ, device=device), torch.autocast("cuda", enabled=False))
        flops = fc.get_total_flops()
    per_epoch = n // bs
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            t0 = time.perf_counter()
        j = i % per_epoch
        stepper.step(data, perm[j * bs:(j + 1) * bs])
    stepper.read_stats(steps)
    synchronize(device)
    return steps * bs / (time.perf_counter() - t0), flops, fast, stepper


def pokemon_arrays(source: Path, size: int, channels: int, cache: Path) -> tuple[np.ndarray, list[Path]]:
    if not source.is_dir():
        sys.exit(f"{source} not found: this benchmark trains on the Pokemon sprites of ../shared/datasets "
                 "(or pass --data FOLDER)")
    out = cache / f"{source.name}_{size}_{channels}"
    if not (out / "train.npy").is_file():
        settings = datamod.Settings(size, channels, "crop", "white", 89_478_485, 1 << 28)
        datamod.prepare(source, out, settings, 0.0, 0.0, 1.0, {}, progress=False)
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in EXTENSION_FORMATS)
    return np.load(out / "train.npy"), files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="SIZExCHANNELSxBATCH, e.g. 64x3x64 32x1x32 (default: CPU 64x3x64 32x1x32; GPU 64x3x{64,256,1024})")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 40 on CPU, 200 on GPU)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: min(8, cores))")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", default="auto")
    ap.add_argument("--channels-last", default="auto")
    ap.add_argument("--cuda-graph", default="true", help="false: no CUDA graph capture (comparison)")
    ap.add_argument("--variants", action="store_true", help="also time each fast-path setting on its own")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--data", type=Path, default=POKEMON / "images", help="folder of images")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dcgan-bench-throughput")
    args = ap.parse_args()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    rows = args.rows or (["64x3x64", "64x3x256", "64x3x1024"] if gpu else ["64x3x64", "32x1x32"])
    steps = args.steps or (200 if gpu else 40)
    workers = args.workers if args.workers is not None else min(8, usable_cpus())
    as_param = {"auto": "auto", "true": True, "false": False}
    params = {"precision": args.precision, "compile": as_param[args.compile],
              "channels_last": as_param[args.channels_last], "cuda_graph": as_param[args.cuda_graph]}
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None) if gpu else None
    results = []
    print(f"device {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, reference workers {workers}")
    for row in rows:
        size, channels, bs = map(int, row.split("x"))
        images, files = pokemon_arrays(args.data, size, channels, args.cache)
        reps = max(1, -(-(bs * 8) // len(images)))          # enough rows for 8 distinct batches
        images = np.concatenate([images] * reps)
        files = files * max(1, -(-(bs * 4) // len(files)))
        img_s, flops, fast, stepper = ours(images, bs, steps, args.warmup, device, params, log=print)
        ref = None if args.no_reference else reference(files, size, channels, bs, min(steps, 60), args.warmup,
                                                         device, workers)
        r = {"device": name, "image_size": size, "channels": channels, "batch_size": bs,
             "ours_img_s": round(img_s, 1), "reference_img_s": round(ref, 1) if ref else None,
             "ratio": round(img_s / ref, 2) if ref else None,
             "precision": fast.precision, "channels_last": fast.channels_last,
             "compile": stepper.G_step is not stepper.G, "cuda_graph": stepper.graph is not None}
        if flops:
            r["gflop_per_image"] = round(flops / bs / 1e9, 3)
            r["mfu"] = round(flops / bs * img_s / peak, 4) if peak else None
        print(json.dumps(r))
        results.append(r)
        if args.variants:
            for label, extra in (("fp32 eager", {"precision": "fp32", "compile": False, "channels_last": False}),
                                 ("fp32 channels_last", {"precision": "fp32", "compile": False, "channels_last": True}),
                                 ("bf16 channels_last", {"precision": "bf16", "compile": False, "channels_last": True}),
                                 ("bf16 channels_last compile", {"precision": "bf16", "compile": True,
                                                                 "channels_last": True}),
                                 ("fp32 channels_last compile", {"precision": "fp32", "compile": True,
                                                                 "channels_last": True})):
                v, *_ = ours(images, bs, steps, args.warmup, device, extra)
                print(f"  variant {label:28s} {v:10.1f} img/s")
    print(f"\n{'device':24s} {'shape':>10s} {'batch':>6s} {'ours':>10s} {'reference':>10s} {'ratio':>6s} {'mfu':>6s}")
    for r in results:
        print(f"{r['device'][:24]:24s} {r['image_size']:>4d}px x{r['channels']} {r['batch_size']:>6d} "
              f"{r['ours_img_s']:>10.0f} {r['reference_img_s'] or 0:>10.0f} {r['ratio'] or 0:>6.2f} "
              f"{r.get('mfu') or 0:>6.3f}")
    head = results[0]
    print(json.dumps({k: head[k] for k in ("device", "image_size", "batch_size", "ours_img_s", "reference_img_s",
                                           "ratio")} | {"rows": results}))


if __name__ == "__main__":
    main()
