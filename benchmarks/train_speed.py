"""How fast is a training step? Our layout (channels_last on CPU/CUDA) against the default NCHW layout.

    python benchmarks/train_speed.py [--size 32] [--channels 1] [--batch 64] [--steps 20] [--repeats 3]

Both run dcgan.engine.train_step (D on real + fake, then G, Adam, BCE-with-logits) on the same
random batch, alternating, best of N after warm-up steps. Default sizes are the demo's (32x32 grayscale,
ngf = ndf = 64). The last line printed is a JSON object:
{"ours_img_s", "reference_img_s", "ratio" (= ours / reference; > 1 means ours is faster), "device", ...}
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch

from dcgan.archs.dcgan import Discriminator, Generator, init_weights
from dcgan.device import memory_format, pick_device
from dcgan.engine import train_step


def images_per_s(fmt, args, device) -> float:
    torch.manual_seed(0)
    G = Generator(args.size, args.channels, 100, args.ngf).apply(init_weights).to(device, memory_format=fmt)
    D = Discriminator(args.size, args.channels, args.ndf).apply(init_weights).to(device, memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    x = torch.rand(args.batch, args.channels, args.size, args.size, device=device).mul(2).sub(1)
    x = x.contiguous(memory_format=fmt)
    warmup = 3
    for i in range(warmup + args.steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        train_step(G, D, opt_g, opt_d, x, torch.randn(args.batch, 100, device=device), nullcontext())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--ndf", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    ours_fmt = memory_format(device)
    ours, ref = [], []
    for r in range(args.repeats):  # alternate, so drift in machine load hits both alike
        ref.append(images_per_s(torch.contiguous_format, args, device))
        ours.append(images_per_s(ours_fmt, args, device))
        print(f"repeat {r + 1}: ours {ours[-1]:.0f} img/s, NCHW {ref[-1]:.0f} img/s", flush=True)
    res = {"ours_img_s": round(max(ours), 1), "reference_img_s": round(max(ref), 1),
           "ratio": round(max(ours) / max(ref), 3), "device": str(device), "layout": str(ours_fmt),
           "size": args.size, "channels": args.channels, "batch": args.batch, "threads": torch.get_num_threads()}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
