"""Load on the HTTP server: N concurrent clients on loopback for a bounded time.

    python benchmarks/serve_load.py [--clients 16] [--seconds 20] [--instances 8] [--image-share 0.25]
    python benchmarks/serve_load.py --image build     # also the same ONNX files in-process, and the serving image

The server (`python -m dcgan.serve`, a separate process, default settings) serves the demo model:
models/published/generator.pt and models/encoder.pt (made for it) when `make run` has made them, else
untrained models of the demo's shape (32 px grey, nz 100, width 64: the same compute). Each client sends
requests back to back, each with `--instances` instances: embedding -> image, or with probability
`--image-share` image -> embedding (a digit-sized PNG; the encoder alone unless --invert-steps). Before the
load, in this process, the raw batched generator throughput is measured at the server's batch size (G alone,
no HTTP, no PNG), the faster of two ways: one call at a time on all cores, and one single-threaded call per
core side by side. Prints p50/p99 latency, images/s, errors, the server's resident memory after warm-up and at
the end; the last line is JSON. With --image, the same load runs in the same run against the same models
exported to ONNX and served in-process, then against the serving image (make image; 'build' builds it from
these models) run by podman on the host's network: the container's memory is its server's, PID 1. The clients use aiohttp: they share the cores with the server, and per request
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


API_KEY = "serve-load"   # the container requires one; the in-process servers on loopback ignore it


async def client(url: str, until: float, args, lat: list, errors: list, counts: list, rng: random.Random):
    pool = bodies(args, rng)
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
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


class Target:
    """A server to load: started, its URL, the pid whose memory is measured, stopped."""

    def __init__(self, label: str, cmd: list[str], port: int, pid_of=None, stop=None):
        self.label, self.cmd, self.port = label, cmd, port
        self.pid_of, self.stop_cmd, self.proc = pid_of, stop, None

    def start(self) -> str:
        # the clients send a key; a DCGAN_API_KEY of the caller's shell would turn every answer into a 401
        env = {k: v for k, v in os.environ.items() if k != "DCGAN_API_KEY"}
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env)
        base = f"http://127.0.0.1:{self.port}"
        for _ in range(1200):
            try:
                if httpx.get(base + "/v2/health/ready", timeout=1).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:   # the server, or `podman run` with its container, ended
                raise SystemExit(f"{self.label}: the server exited {self.proc.returncode}")
            time.sleep(0.1)
        raise SystemExit(f"{self.label}: not ready after 120 s")

    def pid(self) -> int:
        return self.pid_of() if self.pid_of else self.proc.pid

    def stop(self) -> None:
        if self.stop_cmd:
            subprocess.run(self.stop_cmd, capture_output=True)
        self.proc.terminate()
        self.proc.wait(30)


def podman_target(image: str, port: int, args) -> Target:
    """The serving image (make image) on the host's network: the same cores, loopback and clients."""
    from dcgan.serve import container

    engine, name = container.engine_command(), f"serve-load-{os.getpid()}"
    cmd = [*engine, "run", "--rm", *container.PODMAN_FLAGS, "--name", name, "--network", "host",
           "-e", f"PORT={port}", "-e", f"DCGAN_API_KEY={API_KEY}", image,
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--model-threads", str(args.model_threads)]

    def pid() -> int:   # the server, PID 1 in the container: its resident memory as seen from the host
        return int(subprocess.run([*engine, "inspect", "--format", "{{.State.Pid}}", name], capture_output=True,
                                  text=True).stdout)
    return Target(f"container {image} (ONNX, onnxruntime)", cmd, port, pid, [*engine, "rm", "-f", name])


def server_target(label: str, g: Path, e: Path, port: int, args) -> Target:
    cmd = [sys.executable, "-m", "dcgan.serve", "--model", str(g), "--encoder", str(e), "--port", str(port),
           "--max-batch", str(args.max_batch), "--invert-steps", str(args.invert_steps),
           "--max-wait-ms", str(args.max_wait_ms), "--model-threads", str(args.model_threads)]
    return Target(label, cmd, port)


def measure(target: Target, args) -> dict:
    base = target.start()
    try:
        url = base + "/v1/models/generator:predict"
        warm = argparse.Namespace(**{**vars(args), "seconds": 2})
        asyncio.run(load(url, warm))                     # warm-up: allocator, thread pools
        rss_start = rss_mb(target.pid())
        lat, errors, counts, wall = asyncio.run(load(url, args))
        rss_end = rss_mb(target.pid())
    finally:
        target.stop()
    lat_ms = np.array(lat) * 1000
    return {"server": target.label, "requests": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "http_images_per_s": sum(counts) / wall, "rss_start_mb": rss_start, "rss_end_mb": rss_end,
            "rss_growth": rss_end / rss_start - 1}


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
    ap.add_argument("--image", default=None,
                    help="also load this serving image (make image), and the same ONNX files in-process; "
                         "'build' builds one from the benchmark's models first")
    args = ap.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        g, e, which = demo_models(Path(tmp))
        raws = raw_throughput(g, args.max_batch)
        raw = max(raws.values())
        targets = [server_target("in-process server (torch, .pt)", g, e, free_port(), args)]
        if args.image:
            from dcgan import export
            from dcgan import model as models_

            onnx = {k: Path(tmp) / f"{k}.onnx" for k in ("g", "e")}
            export.export_onnx(models_.load(g), onnx["g"])
            export.export_onnx(models_.load(e, kind="encoder"), onnx["e"])
            targets.append(server_target("in-process server (ONNX, onnxruntime)", onnx["g"], onnx["e"], free_port(),
                                         args))
            image = args.image
            if image == "build":
                image = "localhost/dcgan-serve:serve-load"
                subprocess.run([sys.executable, "-m", "dcgan.serve.container", "--model", str(g), "--encoder", str(e),
                                "--tag", image], cwd=ROOT, check=True)
            targets.append(podman_target(image, free_port(), args))
        rows = [measure(t, args) for t in targets]
    print(f"{which}; {args.clients} clients x {args.seconds:g} s, {args.instances} instances per request "
          f"({args.image_share:.0%} image -> embedding); raw batched generator {raw:.0f} images/s (torch: "
          f"{raws['one_call_all_cores']:.0f} one call at a time on all cores, {raws['one_call_per_core']:.0f} "
          "one single-threaded call per core)")
    print("| server | requests | errors | p50 | p99 | HTTP images/s | ratio to raw | server memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = r["http_images_per_s"] / raw
        print(f"| {r['server']} | {r['requests']:,} | {r['errors']}{' ' + str(r['error_kinds']) if r['errors'] else ''} "
              f"| {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['http_images_per_s']:,.0f} | {r['ratio']:.2f} "
              f"| {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB ({r['rss_growth']:+.1%}) |")
    first = rows[0]
    res = {"model": which, "invert_steps": args.invert_steps, "max_wait_ms": args.max_wait_ms,
           "clients": args.clients, "seconds": args.seconds, "instances_per_request": args.instances,
           "image_share": args.image_share, "raw_generator_images_per_s": raw,
           "raw_generator_images_per_s_by_way": raws, "model_threads": args.model_threads,
           "device": "cpu", "cores": len(os.sched_getaffinity(0)), "servers": rows,
           **{k: first[k] for k in ("requests", "errors", "p50_ms", "p99_ms", "http_images_per_s", "ratio",
                                    "rss_start_mb", "rss_end_mb", "rss_growth")}}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
