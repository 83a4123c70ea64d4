"""The HTTP app: the cloud-prediction JSON format over FastAPI.

POST /v1/models/generator:predict   {"instances": [...]} -> {"predictions": [...]} in request order
    {"embeddings" (or "z"): [nz numbers], "key": "0"}  -> {"key", "image_bytes": {"b64": PNG}}
    {"image_bytes": {"b64": JPEG/PNG}, "key": "0"}     -> {"key", "embeddings", "reconstruction_mse"}
GET  /v1/models/generator           {"name", "version", "ready", ...}
GET  /healthz                       {"status": "ok"}
GET  /sample?n=16&seed=0            a grid PNG;   GET /interpolate?a=1&b=2&t=0.5: one PNG between two seeds
GET  /                              the page

Bad input never takes the server down: 400 with {"error": "instance 3: ..."} naming the instance and the
reason, 413 for a body over the limit, 504 for a request over the time limit, 401 without the API key
when one is set (always when bound beyond loopback).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from .. import generation, pictures, sampling
from ..images import BadImage, decode
from .batching import Batcher, ModelThreads

PAGE = Path(__file__).with_name("page.html")
IMAGE_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}


@dataclass
class Settings:
    max_batch: int = 64               # rows per model call
    max_wait_ms: float = 5.0          # how long the first request of a batch waits for others
    model_threads: int = 1            # model calls that run side by side
    torch_threads: int | None = None  # intra-op threads of each model call (None: torch's default)
    max_body_bytes: int = 8 << 20     # larger bodies get 413
    max_instances: int = 256          # per request
    max_pixels: int = 4096 * 4096     # larger images (judged from their header) get 400
    timeout_s: float = 30.0           # a request over this gets 504
    invert_steps: int = 0             # refinement steps after the encoder (0 = encoder alone)
    api_key: str | None = None        # required on every route but /healthz when set
    name: str = "generator"
    version: str = "local"
    extra: dict = field(default_factory=dict)


class BadRequest(Exception):
    pass


def png_b64(img: np.ndarray) -> str:
    """uint8 (C, H, W) -> base64 PNG."""
    return base64.b64encode(pictures.png_bytes(img)).decode("ascii")


class Models:
    """The generator (and encoder) behind two batchers, run in `model_threads` threads."""

    def __init__(self, G, config: dict, E=None, settings: Settings = Settings()):
        self.G, self.E, self.config, self.s = G, E, config, settings
        self.nz, self.channels, self.size = config["nz"], config["channels"], config["image_size"]
        self.differentiable = isinstance(G, torch.nn.Module)     # eager or TorchScript: refinement possible
        if self.differentiable:
            # Eval mode for good, so sample_images's eval_mode restores eval: no model thread ever sees
            # another's mode switch. No parameter gradients in refinement, and no race between model threads.
            G.eval()
            for p in G.parameters():
                p.requires_grad_(False)
        self.threads = ModelThreads(settings.model_threads, settings.torch_threads)
        wait = settings.max_wait_ms / 1000
        self.g_batcher = Batcher(self._generate, self.threads, settings.max_batch, wait)
        self.e_batcher = Batcher(self._encode, self.threads, settings.max_batch, wait) if E is not None else None

    def _generate(self, z: torch.Tensor) -> np.ndarray:
        if self.differentiable:  # one forward pass for the batch the batcher formed
            return sampling.sample_images(self.G, z, "cpu", batch=len(z))
        with torch.no_grad():    # an ONNX session: no torch modes to set
            return pictures.to_uint8(self.G(z))

    def _encode(self, images: np.ndarray):
        steps = self.s.invert_steps if self.differentiable else 0
        if steps > 0:
            z, err = generation.invert(self.G, images, steps, "cpu", encoder=self.E, progress=False)
            return z, err
        with torch.no_grad():
            x = pictures.to_float(images)
            z = self.E(x).float()
            err = ((self.G(z).float() - x) ** 2).flatten(1).mean(1)
        return z.numpy(), err.numpy()


def _key(inst: dict, i: int) -> str:
    key = inst.get("key", str(i))
    if not isinstance(key, str):
        raise BadRequest(f"instance {i}: 'key' must be a string, got {type(key).__name__}")
    return key


def _latent(inst: dict, i: int, nz: int) -> list[float]:
    field_ = "embeddings" if "embeddings" in inst else "z"
    z = inst[field_]
    if not isinstance(z, list):
        raise BadRequest(f"instance {i}: '{field_}' must be a list of {nz} numbers, got {type(z).__name__}")
    if len(z) != nz:
        raise BadRequest(f"instance {i}: '{field_}' has {len(z)} numbers; the generator takes {nz}")
    # fast path in C: numbers only (no bools, strings, nested lists), all finite; the slow loop names the culprit
    if not any(v is True or v is False for v in z):
        try:
            arr = np.array(z, dtype=np.float32)
            if arr.shape == (nz,) and np.isfinite(arr).all():
                return arr
        except (TypeError, ValueError):
            pass
    for j, v in enumerate(z):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadRequest(f"instance {i}: '{field_}'[{j}] is {json.dumps(v)}, not a finite number")
    raise BadRequest(f"instance {i}: '{field_}' is not {nz} finite float32 numbers")


def _image(inst: dict, i: int, models: Models, max_pixels: int) -> np.ndarray:
    ib = inst["image_bytes"]
    b64 = ib.get("b64") if isinstance(ib, dict) else None
    if not isinstance(b64, str):
        raise BadRequest(f"instance {i}: 'image_bytes' must be {{\"b64\": \"<base64 JPEG or PNG>\"}}")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"instance {i}: 'image_bytes.b64' is not valid base64") from None
    ext = next((e for sig, e in IMAGE_SIGNATURES.items() if raw.startswith(sig)), None)
    if ext is None:
        raise BadRequest(f"instance {i}: 'image_bytes.b64' is not a JPEG, PNG, GIF, BMP or WebP image")
    try:
        return decode(raw, ext, channels=models.channels, size=models.size, resize="crop", background="white",
                      max_pixels=max_pixels)
    except BadImage as e:
        raise BadRequest(f"instance {i}: image could not be used ({e})") from None


def parse_instances(body: bytes, models: Models, s: Settings):
    """-> list of ('z', key, list) or ('image', key, uint8 array) in request order; BadRequest names the problem."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # strict JSON failed; Python's parser also takes NaN/Infinity (json.dumps writes them), named below
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"body is not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise BadRequest('body must be {"instances": [...]}')
    instances = doc["instances"]
    if not instances:
        raise BadRequest("'instances' is empty")
    if len(instances) > s.max_instances:
        raise BadRequest(f"{len(instances)} instances; at most {s.max_instances} per request")
    out = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise BadRequest(f"instance {i}: must be an object, got {type(inst).__name__}")
        key = _key(inst, i)
        if "embeddings" in inst or "z" in inst:
            out.append(("z", key, _latent(inst, i, models.nz)))
        elif "image_bytes" in inst:
            if models.e_batcher is None:
                raise BadRequest(f"instance {i}: this server has no encoder (image -> embedding is off)")
            out.append(("image", key, _image(inst, i, models, s.max_pixels)))
        else:
            raise BadRequest(f"instance {i}: needs 'embeddings' (or 'z') or 'image_bytes'")
    return out


async def predict(parsed, models: Models) -> list[dict]:
    zs = [(j, v) for j, (kind, _, v) in enumerate(parsed) if kind == "z"]
    ims = [(j, v) for j, (kind, _, v) in enumerate(parsed) if kind == "image"]
    jobs = []
    if zs:
        jobs.append(models.g_batcher.submit(torch.from_numpy(np.stack([v for _, v in zs]))))
    if ims:
        jobs.append(models.e_batcher.submit(np.stack([v for _, v in ims])))
    results = await asyncio.gather(*jobs)
    preds: list[dict] = [{} for _ in parsed]
    r = iter(results)
    if zs:
        images = next(r)
        for (j, _), img in zip(zs, images):
            preds[j] = {"key": parsed[j][1], "image_bytes": {"b64": png_b64(img)}}
    if ims:
        z, err = next(r)
        for (j, _), zz, e in zip(ims, np.round(np.asarray(z, dtype=np.float64), 6).tolist(), err):
            preds[j] = {"key": parsed[j][1], "embeddings": zz, "reconstruction_mse": float(e)}
    return preds


class JSONResponse(Response):
    """orjson: 5-10x faster than json.dumps on the predictions (the event loop's time is the server's)."""
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class APIKeyCheck:
    """Plain ASGI middleware (Starlette's @app.middleware wraps every request in extra tasks and streams,
    which costs the event loop time under load): 401 unless the request carries the key."""

    def __init__(self, app, key: str, open_paths: set[str]):
        self.app, self.key, self.open_paths = app, key.encode(), open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not hmac.compare_digest(given, self.key):
                response = error(401, "missing or wrong API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key'")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(models: Models, s: Settings) -> FastAPI:
    app = FastAPI(title="DCGAN generator", docs_url=None, redoc_url=None)
    if s.api_key:
        app.add_middleware(APIKeyCheck, key=s.api_key, open_paths={"/healthz"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # a bug answers 500 and the server stays up
        return error(500, f"internal error ({type(e).__name__})")

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > s.max_body_bytes:
            raise OverflowError
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > s.max_body_bytes:
                raise OverflowError
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(f"/v1/models/{s.name}:predict")
    async def predict_route(request: Request):
        try:
            body = await read_body(request)
        except OverflowError:
            return error(413, f"body over {s.max_body_bytes} bytes: send fewer or smaller instances per request")
        try:
            parsed = parse_instances(body, models, s)
            preds = await asyncio.wait_for(predict(parsed, models), s.timeout_s)
        except BadRequest as e:
            return error(400, str(e))
        except asyncio.TimeoutError:
            return error(504, f"the request took longer than {s.timeout_s:g} s; send fewer instances")
        return JSONResponse({"predictions": preds})

    @app.get(f"/v1/models/{s.name}")
    async def metadata():
        return {"name": s.name, "version": s.version, "ready": True, "nz": models.nz,
                "image_size": models.size, "channels": models.channels, "encoder": models.E is not None,
                "invert_steps": s.invert_steps if models.differentiable else 0, **s.extra}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model_calls": models.g_batcher.calls + (models.e_batcher.calls if models.e_batcher else 0)}

    def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
        v = request.query_params.get(name, str(default))
        try:
            n = int(v)
        except ValueError:
            raise BadRequest(f"'{name}' must be an integer, got {v!r}") from None
        if not lo <= n <= hi:
            raise BadRequest(f"'{name}' must be in [{lo}, {hi}], got {n}")
        return n

    @app.get("/sample")
    async def sample(request: Request):
        try:
            n, seed = _int(request, "n", 16, 1, 256), _int(request, "seed", 0, 0, 2**31 - 1)
        except BadRequest as e:
            return error(400, str(e))
        z = generation.noise(n, models.nz, seed)
        images = await asyncio.wait_for(models.g_batcher.submit(z), s.timeout_s)
        if n == 1:
            return Response(pictures.png_bytes(images[0]), media_type="image/png")
        buf = io.BytesIO()
        pictures.grid(images, nrow=min(n, 8)).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/interpolate")
    async def interpolate(request: Request):
        try:
            a, b = _int(request, "a", 0, 0, 2**31 - 1), _int(request, "b", 1, 0, 2**31 - 1)
            t = float(request.query_params.get("t", "0.5"))
            if not 0 <= t <= 1:
                raise ValueError
        except BadRequest as e:
            return error(400, str(e))
        except ValueError:
            return error(400, "'t' must be a number in [0, 1]")
        z = generation.slerp(generation.noise(1, models.nz, a)[0], generation.noise(1, models.nz, b)[0], t)
        images = await asyncio.wait_for(models.g_batcher.submit(z[None].float()), s.timeout_s)
        return Response(pictures.png_bytes(images[0]), media_type="image/png")

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app
