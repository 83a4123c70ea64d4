"""Training throughput: our loop against a pytorch/examples-style DCGAN loop, same images, same networks.

    python benchmarks/train_throughput.py                         # CPU: 64 px RGB b64 and the demo shape
    python benchmarks/train_throughput.py --layers --procs        # also each conv's speed, and 2 processes x 1 thread
    python benchmarks/train_throughput.py --device cuda           # GPU: 64 px RGB at batch 64, 256, 1024
    python benchmarks/train_throughput.py --rows 64x3x64 --steps 30 --variants   # also each fast-path setting

reference: a Dataset that opens and decodes the image files (PIL, resize, center crop, normalise) in a
DataLoader with worker processes, fp32, default Adam, `.item()` of both losses every step, as in
pytorch/examples' dcgan/main.py. ours: the prepared uint8 arrays resident on the device and the very
`Stepper`/`train_step` the train stage runs, with the fast path the params resolve to (precision,
channels_last, compile, CUDA graph, and on the CPU each conv's layer plan). Both train our
Generator/Discriminator; images/s after warm-up steps.

MFU (model FLOPs utilisation) = FLOPs per step (torch.utils.flop_counter) x steps/s over the device's peak:
on a CPU the matmul peak measured here first (2048x2048, fp32, and bf16 where oneDNN runs it natively: an
emulated bf16 is not timed), on a GPU the card's dense bf16 datasheet peak.
--layers: each conv of G and D timed forward + backward at the row's shape in every setting the layer plan
chooses from (GFLOP/s), the uniform fast path ("before": every conv in one setting) beside the plan ("after").
--procs (CPU): the same step in 2 processes x 1 thread each (DDP over gloo, as `nproc: 2`) against 1 process
x 2 threads (see docs/speed.md for which `auto` picks).
The last line is JSON: {"device", "image_size", "batch_size", "ours_img_s", "reference_img_s", "ratio", "rows"}.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from dcgan import data as datamod
from dcgan import distributed, layer_plan
from dcgan.cpus import usable_cpus
from dcgan.device import adam, cpu_has_fast_bf16, memory_format, pick_device, resolve, synchronize
from dcgan.distributed import World
from dcgan.engine import ResidentData, Stepper, train_step
from dcgan.training import plan_layers
from dcgan.images import EXTENSION_FORMATS
from dcgan import archs
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

def ours(images: np.ndarray, bs, steps, warmup, device, params: dict, log=lambda s: None, world: World = World(),
         arch: str = "dcgan", width: int = 64):
    """(images/s, FLOPs per step, fast path, stepper) for the stage's own step with the params' fast path (and
    on the CPU its layer plan), networks of `arch` with ngf = ndf = width. Under a World of several processes
    each takes its share of every batch."""
    size, channels = images.shape[2], images.shape[1]
    fast = resolve(params, device, distributed=world.distributed)
    fmt = memory_format(device, fast.channels_last)
    torch.manual_seed(0)
    parts = archs.REGISTRY.get(arch)
    G = parts.generator(size, channels, NZ, width).apply(parts.init_weights).to(device, memory_format=fmt)
    D = parts.discriminator(size, channels, width).apply(parts.init_weights).to(device, memory_format=fmt)
    local = bs // world.size
    plan_layers(params, fast, device, {"G": G, "D": D}, local, None, world, log)
    opt_g = adam(G.parameters(), 2e-4, (0.5, 0.999), device, capturable=fast.cuda_graph)
    opt_d = adam(D.parameters(), 2e-4, (0.5, 0.999), device, capturable=fast.cuda_graph)
    data = ResidentData(images, device, fmt)
    stepper = Stepper(distributed.wrap(G, world, device), distributed.wrap(D, world, device), opt_g, opt_d, NZ,
                      fast, device, log=log)
    stepper.compile(data, local)
    n = len(images)
    perm = torch.randperm(n).to(data.index_device)
    flops = None
    if not world.distributed:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as fc:
            x = data.batch(perm[:bs])
            train_step(G, D, opt_g, opt_d, x, torch.randn(bs, NZ, device=device),
                       torch.autocast(device.type, enabled=False))
        flops = fc.get_total_flops()
    per_epoch = n // bs
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            if world.distributed:
                dist.barrier()
            t0 = time.perf_counter()
        j = i % per_epoch
        first = j * bs + world.rank * local
        stepper.step(data, perm[first:first + local])
    stepper.read_stats(steps, world if world.distributed else None)
    synchronize(device)
    return steps * bs / (time.perf_counter() - t0), flops, fast, stepper


def _ddp_rank(rank: int, size: int, init_file: str, images: np.ndarray, bs: int, steps: int, warmup: int,
              params: dict, out: str):
    """One CPU process of --procs: one thread, gloo, its share of each batch (as `nproc: 2` trains)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        img_s, *_ = ours(images, bs, steps, warmup, torch.device("cpu"), params, world=World(rank, size, rank))
        if rank == 0:
            Path(out).write_text(json.dumps(img_s))
    finally:
        dist.destroy_process_group()


def processes_x_threads(images, bs, steps, warmup, params: dict, procs: int = 2) -> float:
    """images/s of `procs` processes with one thread each (DDP, gloo) on the same step."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "img_s.json"
        torch.multiprocessing.spawn(_ddp_rank, args=(procs, str(Path(tmp) / "init"), images, bs, steps, warmup,
                                                     params, str(out)), nprocs=procs)
        return json.loads(out.read_text())


def matmul_peaks(device) -> dict[str, float | None]:
    """{"fp32": FLOP/s, "bf16": FLOP/s or None} of a 2048x2048 matmul here, after warm-up (bf16 on a CPU only
    where oneDNN runs it natively: emulated, one such matmul takes about a minute)."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_fast_bf16():
            peaks[name] = None
            continue
        a = torch.randn(2048, 2048, device=device, dtype=dtype)
        b = torch.randn(2048, 2048, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        synchronize(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            a @ b
            reps += 1
            if device.type != "cpu" and reps % 50 == 0:
                synchronize(device)
        synchronize(device)
        peaks[name] = 2 * 2048 ** 3 * reps / (time.perf_counter() - t0)
    return peaks


def conv_flops(conv: torch.nn.Module, shape: tuple) -> int:
    """FLOPs of one forward + backward (input and weight gradients: twice the forward) of a conv at `shape`."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        conv(torch.zeros(shape))
    return 3 * fc.get_total_flops()


def layers_table(size: int, channels: int, bs: int, params: dict):
    """Each conv of G and D at this row's shape: GFLOP/s in every setting the plan chooses from, the uniform
    fast path (before plans) and the plan's choice (after)."""
    device = torch.device("cpu")
    fast = resolve(params, device)
    models = {"G": Generator(size, channels, NZ, 64).apply(init_weights),
              "D": Discriminator(size, channels, 64).apply(init_weights)}
    settings = layer_plan.candidates(params, fast.precision, fast.channels_last)
    if len(settings) < 2:     # an explicit precision and layout: show both layouts anyway
        settings = [settings[0], settings[0][:5] + ("nchw" if settings[0].endswith("nhwc") else "nhwc")]
    shapes = layer_plan.conv_inputs(models, {"G": torch.zeros(bs, NZ), "D": torch.zeros(bs, channels, size, size)})
    timings = layer_plan.measure(models, shapes, settings)
    plan = layer_plan.choose(timings, settings[0])
    convs = layer_plan.modules_by_key(models)
    print(f"\nconvs at {size} px x{channels}, batch {bs}: GFLOP/s of forward + backward")
    print(f"{'conv':10s} {'what':28s} " + " ".join(f"{s:>10s}" for s in settings) + f" {'before':>8s} {'after':>8s}  plan")
    rows, total = [], {"before": 0.0, "after": 0.0}
    for key, shape in shapes.items():
        m = convs[key]
        flops = conv_flops(m, shape)
        what = f"{type(m).__name__.replace('Transpose', 'T')} {m.in_channels}->{m.out_channels} @{shape[2]}x{shape[3]}"
        gf = {s: flops / t / 1e9 for s, t in timings[key].items()}
        before, after = timings[key][settings[0]], timings[key][plan[key]]
        total["before"] += before
        total["after"] += after
        print(f"{key:10s} {what:28s} " + " ".join(f"{gf[s]:10.1f}" for s in settings)
              + f" {flops / before / 1e9:8.1f} {flops / after / 1e9:8.1f}  {plan[key]}")
        rows.append({"conv": key, "what": what, "gflop": flops / 1e9, "gflop_s": gf, "plan": plan[key]})
    print(f"sum of the convs' times: before {1e3 * total['before']:.1f} ms, after {1e3 * total['after']:.1f} ms")
    return rows


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
    ap.add_argument("--layers", action="store_true", help="CPU: each conv's GFLOP/s per setting, before and after the plan")
    ap.add_argument("--procs", action="store_true", help="CPU: also 2 processes x 1 thread (DDP, gloo)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--arch", default="dcgan", help="our step's architecture (the reference is always DCGAN, "
                    "so other architectures are timed without it)")
    ap.add_argument("--width", type=int, default=64, help="ngf = ndf of our networks")
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
    print(f"device {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, reference workers {workers}",
          flush=True)
    if gpu:
        # whole words: "L4" is not the L40S
        peak = next((v for k, v in BF16_PEAK.items() if re.search(rf"\b{re.escape(k)}\b", name)), None)
        print(f"peak: {peak / 1e12 if peak else '?'} TFLOP/s dense bf16 (datasheet)")
    else:
        peaks = matmul_peaks(device)
        peak = max(v for v in peaks.values() if v)
        print("matmul peak, 2048x2048, measured: " + ", ".join(
            f"{k} {v / 1e9:,.0f} GFLOP/s" if v else f"{k} emulated here (not timed)" for k, v in peaks.items()),
            flush=True)
    results = []
    for row in rows:
        size, channels, bs = map(int, row.split("x"))
        images, files = pokemon_arrays(args.data, size, channels, args.cache)
        reps = max(1, -(-(bs * 8) // len(images)))          # enough rows for 8 distinct batches
        images = np.concatenate([images] * reps)
        files = files * max(1, -(-(bs * 4) // len(files)))
        if args.layers and not gpu:
            layers_table(size, channels, bs, params)
        img_s, flops, fast, stepper = ours(images, bs, steps, args.warmup, device, params, log=print,
                                           arch=args.arch, width=args.width)
        ref = None if args.no_reference or (args.arch, args.width) != ("dcgan", 64) else reference(files, size, channels, bs, min(steps, 60), args.warmup,
                                                         device, workers)
        r = {"device": name, "arch": args.arch, "width": args.width, "image_size": size, "channels": channels,
             "batch_size": bs,
             "ours_img_s": round(img_s, 1), "reference_img_s": round(ref, 1) if ref else None,
             "ratio": round(img_s / ref, 2) if ref else None,
             "precision": fast.precision, "channels_last": fast.channels_last,
             "compile": stepper.G_step is not stepper.G, "cuda_graph": stepper.graph is not None}
        if flops:
            r["gflop_per_image"] = round(flops / bs / 1e9, 3)
            r["gflop_s"] = round(flops / bs * img_s / 1e9, 1)
            r["mfu"] = round(flops / bs * img_s / peak, 4) if peak else None
        if args.procs and not gpu:
            two = processes_x_threads(images, bs, steps, args.warmup, params)
            r["procs_2x1_img_s"] = round(two, 1)
            print(f"  2 processes x 1 thread: {two:.1f} img/s; 1 process x {torch.get_num_threads()} threads: "
                  f"{img_s:.1f} img/s")
        print(json.dumps(r), flush=True)
        results.append(r)
        if args.variants:
            for label, extra in (("fp32 eager", {"precision": "fp32", "compile": False, "channels_last": False}),
                                 ("fp32 channels_last", {"precision": "fp32", "compile": False, "channels_last": True}),
                                 ("bf16 channels_last", {"precision": "bf16", "compile": False, "channels_last": True}),
                                 ("bf16 channels_last compile", {"precision": "bf16", "compile": True,
                                                                 "channels_last": True}),
                                 ("fp32 channels_last compile", {"precision": "fp32", "compile": True,
                                                                 "channels_last": True})):
                if extra["precision"] == "bf16" and not gpu and not cpu_has_fast_bf16():
                    continue     # emulated bf16: minutes per step, nothing to learn
                v, *_ = ours(images, bs, steps, args.warmup, device, extra)
                print(f"  variant {label:28s} {v:10.1f} img/s")
    print(f"\n{'device':24s} {'shape':>10s} {'batch':>6s} {'ours':>10s} {'reference':>10s} {'ratio':>6s} "
          f"{'GFLOP/s':>8s} {'mfu':>6s}" + (f" {'2x1 procs':>10s}" if args.procs and not gpu else ""))
    for r in results:
        print(f"{r['device'][:24]:24s} {r['image_size']:>4d}px x{r['channels']} {r['batch_size']:>6d} "
              f"{r['ours_img_s']:>10.0f} {r['reference_img_s'] or 0:>10.0f} {r['ratio'] or 0:>6.2f} "
              f"{r.get('gflop_s') or 0:>8.0f} {r.get('mfu') or 0:>6.3f}"
              + (f" {r['procs_2x1_img_s']:>10.0f}" if 'procs_2x1_img_s' in r else ""))
    head = results[0]
    print(json.dumps({k: head[k] for k in ("device", "image_size", "batch_size", "ours_img_s", "reference_img_s",
                                           "ratio")} | {"rows": results}))


if __name__ == "__main__":
    main()
