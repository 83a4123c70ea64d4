"""`python -m dcgan.serve` (`make serve`): serve the generator (and the encoder) over HTTP.

  python -m dcgan.serve                                   # models/generator_best.pt (or generator.pt) + encoder
  python -m dcgan.serve --model generator@v0.1.0          # a registry version (git tag), fetched via DVC
  python -m dcgan.serve --model generator --stage prod    # what the registry puts in prod
  python -m dcgan.serve --model models/export/generator.onnx --encoder models/export/encoder.onnx
  DCGAN_API_KEY=... python -m dcgan.serve --host 0.0.0.0  # beyond loopback an API key is required
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from .. import cli
from ..errors import UserError
from ..model import encoder_misfit
from . import registry
from .app import Models, Settings, create_app

API_KEY_ENV = "DCGAN_API_KEY"


def default_generator() -> str:
    from ..model import GENERATOR_FILES
    best = GENERATOR_FILES["best"]
    return str(best if best.is_file() else GENERATOR_FILES["last"])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(spec: str, stage: str | None, repo: str, want: str, threads: int | None = None):
    from ..export import load_runnable

    path, version = registry.resolve(spec, stage, repo)
    try:
        model, kind, config = load_runnable(path, threads=threads)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if kind != want:
        raise UserError(f"'{spec}' holds a {kind}, not a {want}")
    return model, config, version, path


def invert_steps(args) -> int:
    """--invert-steps, else params.yaml's invert_steps (as `generate invert`), else 0."""
    if args.invert_steps is not None:
        if args.invert_steps < 0:
            raise UserError(f"--invert-steps must be >= 0, got {args.invert_steps}")
        return args.invert_steps
    from .. import params
    if Path(params.PARAMS_FILE).is_file():
        return params.validate(params.read(params.PARAMS_FILE), ["invert_steps"])["invert_steps"]
    return 0


def build(args) -> tuple:
    args.invert_steps = invert_steps(args)
    cores = len(os.sched_getaffinity(0))
    if args.model_threads < 1:
        raise UserError(f"--model-threads must be >= 1, got {args.model_threads}")
    s = Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes,
                 model_threads=args.model_threads, torch_threads=max(1, cores // args.model_threads),
                 timeout_s=args.timeout_s, invert_steps=args.invert_steps, api_key=os.environ.get(API_KEY_ENV) or None)
    if not is_loopback(args.host) and not s.api_key:
        raise UserError(f"--host {args.host} is reachable from other machines: set {API_KEY_ENV} (a secret, never "
                        "in git) so that requests without it get 401")
    G, config, s.version, g_path = load(args.model or default_generator(), args.stage, args.repo, "generator",
                                        s.torch_threads)
    E = None
    if args.encoder != "none":
        enc_spec = args.encoder
        if Path(enc_spec).exists() or registry.is_artifact_spec(enc_spec, None):
            E, e_config, e_version, _ = load(enc_spec, None, args.repo, "encoder", s.torch_threads)
            misfit = encoder_misfit(e_config, config)
            if misfit:
                raise UserError(f"encoder '{enc_spec}' {misfit}")
            s.extra["encoder_version"] = e_version
        else:
            print(f"{enc_spec} not found: image -> embedding is off (dvc repro encoder)", file=sys.stderr)
    s.extra["model_file"] = str(g_path)
    return Models(G, config, E, s), s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a file (.pt, .ts, .onnx), name@version, or a name with --stage")
    ap.add_argument("--stage", default=None, help="registry stage, e.g. prod")
    ap.add_argument("--encoder", default="models/encoder.pt", help="a file or name@version; 'none' = no encoder")
    ap.add_argument("--repo", default=".", help="DVC repository (path or git URL) of the registry")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--model-threads", type=int, default=min(2, len(os.sched_getaffinity(0))),
                    help="model calls side by side, each on cores/N intra-op threads (default: 2, or 1 on one core)")
    ap.add_argument("--max-body-bytes", type=int, default=8 << 20)
    ap.add_argument("--timeout-s", type=float, default=30.0)
    ap.add_argument("--invert-steps", type=int, default=None,
                    help="refinement steps after the encoder (0 = encoder alone); default: params.yaml's invert_steps")
    args = ap.parse_args()
    models, settings = build(args)
    import uvicorn

    print(f"serving {settings.name} {settings.version} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(create_app(models, settings), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    cli.run(main)
