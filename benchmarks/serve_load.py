"""Load on the HTTP server: N concurrent clients on loopback for a bounded time.

    python benchmarks/serve_load.py [--clients 16] [--seconds 20] [--instances 8] [--image-share 0.25]

The server (`python -m dcgan.serve`, a separate process, default settings) serves the demo model:
models/published/generator.pt and models/encoder.pt (made for it) when `make run` has made them, else
untrained models of the demo's shape (32 px grey, nz 100, width 64: the same compute). Each client sends
requests back to back, each with `--instances` instances: embedding -> image, or with probability
`--image-share` image -> embedding (a digit-sized PNG; the encoder alone unless --invert-steps). Before the
load, in this process, the raw batched generator throughput is measured at the server's batch size (G alone,
no HTTP, no PNG), the faster of two ways: one call at a time on all cores, and one single-threaded call per
core side by side. Prints p50/p99 latency, images/s, errors, the server's resident memory after warm-up and at
the end; the last line is JSON. The clients use aiohttp: they share the cores with the server, and per request
it costs about a third of the CPU that httpx does (measured: the client process at 7% of a core instead of
21%).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import aiohttp
import httpx
import numpy as np
import orjson
import torch
from PIL import Image

from dcgan import model as models
from dcgan.archs.dcgan import Encoder, Generator, init_weights


def demo_models(tmp: Path) -> tuple[Path, Path, str]:
    g, e = ROOT / models.PUBLISHED_GENERATOR, ROOT / "models/encoder.pt"     # the pipeline made e for g
    if g.is_file() and e.is_file():
        return g, e, "trained demo model"
    torch.manual_seed(0)
    models.save(Generator(32, 1, 100, 64).apply(init_weights), tmp / "g.pt")
    models.save(Encoder(32, 1, 100, 64).apply(init_weights), tmp / "e.pt")
    return tmp / "g.pt", tmp / "e.pt", "untrained models of the demo's shape (run `make run` for the trained one)"


def raw_throughput(g_path: Path, batch: int, seconds: float = 3.0) -> dict:
    """G alone on batches of `batch`, the best way this machine runs it: one call at a time on all cores,
    and one single-threaded call per core side by side (what the server does by default). images/s each."""
    G = models.load(g_path)
    G.requires_grad_(False)
    cores = len(os.sched_getaffinity(0))

    def run(workers: int, torch_threads: int) -> float:
        counts = [0] * workers

        def work(i):
            torch.set_num_threads(torch_threads)      # this thread's only
            z = torch.randn(batch, G.nz)
            with torch.no_grad():
                for _ in range(5):
                    G(z)
                barrier.wait()
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    G(z)
                    counts[i] += batch
        barrier = threading.Barrier(workers + 1)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)
    return {"one_call_all_cores": run(1, cores), "one_call_per_core": run(cores, 1)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digit_png_b64() -> str:
    img = np.full((28, 28), 255, np.uint8)
    img[6:22, 12:16] = 0   # a "1"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def bodies(args, rng: random.Random, n: int = 32) -> list[bytes]:
    """Request bodies made before the clock starts: the clients share the cores with the server, so the
    time they spend building JSON would be charged to the server."""
    png = digit_png_b64()
    out = []
    for _ in range(n):
        if rng.random() < args.image_share:
            inst = [{"image_bytes": {"b64": png}, "key": str(i)} for i in range(args.instances)]
        else:
            inst = [{"embeddings": [round(rng.gauss(0, 1), 4) for _ in range(100)], "key": str(i)}
                    for i in range(args.instances)]
        out.append(json.dumps({"instances": inst}).encode())
    return out


async def client(url: str, until: float, args, lat: list, errors: list, counts: list, rng: random.Random):
    pool = bodies(args, rng)
    headers = {"content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.perf_counter() < until:
            body = rng.choice(pool)
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    answer = await r.read()
                ok = r.status == 200 and len(orjson.loads(answer)["predictions"]) == args.instances
                why = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                ok, why = False, type(e).__name__
            lat.append(time.perf_counter() - t0)
            if ok:
                counts.append(args.instances)
            else:
                errors.append(str(why))


async def load(url: str, args) -> tuple[list, list, list, float]:
    lat, errors, counts = [], [], []
    t0 = time.perf_counter()
    until = t0 + args.seconds
    await asyncio.gather(*(client(url, until, args, lat, errors, counts, random.Random(i))
                           for i in range(args.clients)))
    return lat, errors, counts, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--instances", type=int, default=8, help="instances per request")
    ap.add_argument("--image-share", type=float, default=0.25, help="share of image -> embedding requests")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--invert-steps", type=int, default=0, help="server's refinement after the encoder")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="server's batching wait")
    ap.add_argument("--model-threads", type=int, default=min(2, len(os.sched_getaffinity(0))),
                    help="server's model threads")
    args = ap.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        g, e, which = demo_models(Path(tmp))
        raws = raw_throughput(g, args.max_batch)
        raw = max(raws.values())
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "dcgan.serve", "--model", str(g), "--encoder", str(e),
                                 "--port", str(port), "--max-batch", str(args.max_batch),
                                 "--invert-steps", str(args.invert_steps), "--max-wait-ms", str(args.max_wait_ms),
                                 "--model-threads", str(args.model_threads)],
                                cwd=ROOT)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            url = base + "/v1/models/generator:predict"
            warm = argparse.Namespace(**{**vars(args), "seconds": 2})
            asyncio.run(load(url, warm))                     # warm-up: allocator, thread pools
            rss_start = rss_mb(proc.pid)
            lat, errors, counts, wall = asyncio.run(load(url, args))
            rss_end = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    lat_ms = np.array(lat) * 1000
    imgs = sum(counts) / wall
    res = {"model": which, "invert_steps": args.invert_steps, "max_wait_ms": args.max_wait_ms, "clients": args.clients, "seconds": args.seconds, "instances_per_request": args.instances,
           "image_share": args.image_share, "requests": len(lat), "errors": len(errors),
           "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
           "http_images_per_s": imgs, "raw_generator_images_per_s": raw, "ratio": imgs / raw,
           "raw_generator_images_per_s_by_way": raws, "model_threads": args.model_threads,
           "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_growth": rss_end / rss_start - 1,
           "device": "cpu", "cores": len(os.sched_getaffinity(0))}
    print(f"{which}; {args.clients} clients x {args.seconds:g} s, {args.instances} instances per request "
          f"({args.image_share:.0%} image -> embedding)")
    print(f"requests {len(lat)}, errors {len(errors)}{' ' + str(sorted(set(errors))[:5]) if errors else ''}")
    print(f"latency p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    print(f"HTTP {imgs:.0f} images/s vs raw batched generator {raw:.0f} images/s: {res['ratio']:.2f} (raw: "
          f"{raws['one_call_all_cores']:.0f} one call at a time on all cores, {raws['one_call_per_core']:.0f} "
          "one single-threaded call per core)")
    print(f"server memory {rss_start:.0f} MB after warm-up -> {rss_end:.0f} MB at the end ({res['rss_growth']:+.1%})")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
