"""The HTTP app: the cloud-prediction JSON format over FastAPI.

POST /v1/models/generator:predict   {"instances": [...]} -> {"predictions": [...]} in request order
    {"embeddings" (or "z"): [nz numbers], "key": "0"}  -> {"key", "image_bytes": {"b64": PNG}}
    {"image_bytes": {"b64": JPEG/PNG}, "key": "0"}     -> {"key", "embeddings", "reconstruction_mse"}
GET  /v1/models/generator           {"name", "version", "ready", ...}
GET  /healthz                       {"status": "ok"}
GET  /sample?n=16&seed=0            a grid PNG;   GET /interpolate?a=1&b=2&t=0.5: one PNG between two seeds
GET  /                              the page

Bad input never takes the server down: 400 with {"error": "instance 3: ..."} naming the instance and the
reason, 413 for a body, an instance count or images' total pixels over a limit, 504 for every time limit
(the body's arrival, then parsing, decoding and the model), 401 without the API key when one is set
(always when bound beyond loopback; the page and /healthz are open). The event loop only routes: bodies
are parsed, images decoded and PNGs encoded in `parse_threads` threads, the models run in their own, so
one request's work never stalls the others (or /healthz).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import math
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image

from .. import generation, pictures, sampling
from ..images import BadImage, decode
from .batching import Batcher, ModelThreads

PAGE = Path(__file__).with_name("page.html")
# PIL warns of images over its own limit; the server judges sizes itself (max_pixels, max_request_pixels).
# A filter for good, not warnings.catch_warnings, which is not thread-safe (parse threads run side by side).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
IMAGE_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}


@dataclass
class Settings:
    max_batch: int = 64               # rows per model call
    max_wait_ms: float = 5.0          # how long the first request of a batch waits for others
    model_threads: int = 1            # model calls that run side by side
    torch_threads: int | None = None  # intra-op threads of each model call (None: torch's default)
    parse_threads: int = 2            # threads that parse bodies, decode images and encode PNGs
    max_body_bytes: int = 8 << 20     # larger bodies get 413
    max_instances: int = 256          # per request
    max_pixels: int = 4096 * 4096     # larger images (judged from their header) get 400
    max_request_pixels: int = 4096 * 4096  # all images of a request together (from their headers), else 413
    timeout_s: float = 30.0           # parsing, decoding and the model over this get 504
    body_timeout_s: float = 30.0      # a body that has not arrived in full by then gets 504
    invert_steps: int = 0             # refinement steps after the encoder (0 = encoder alone)
    api_key: str | None = None        # required on every route but /healthz and the page when set
    name: str = "generator"
    version: str = "local"
    extra: dict = field(default_factory=dict)


class BadRequest(Exception):
    status = 400


class TooLarge(BadRequest):
    status = 413


def png_b64(img: np.ndarray) -> str:
    """uint8 (C, H, W) -> base64 PNG."""
    return base64.b64encode(pictures.png_bytes(img)).decode("ascii")


class Models:
    """The generator (and encoder) behind two batchers, run in `model_threads` threads; the request work
    around them (JSON, image decoding, PNGs) in `parse_threads` others, so that the event loop only routes."""

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
        # A bounded pool of its own (not asyncio's default, sized by os.cpu_count()): at most parse_threads
        # images are decoded at once, which bounds their memory, and the model threads are never starved.
        self.parse = ThreadPoolExecutor(max(1, settings.parse_threads), thread_name_prefix="parse")
        wait = settings.max_wait_ms / 1000
        self.g_batcher = Batcher(self._generate, self.threads, settings.max_batch, wait)
        self.e_batcher = Batcher(self._encode, self.threads, settings.max_batch, wait) if E is not None else None

    async def off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.parse, fn, *args)

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


def _show(v) -> str:
    """A short, printable description of a JSON value for an error message (never the whole value)."""
    if isinstance(v, float):
        if math.isinf(v):   # also what a literal beyond float64 (1e400, 400 digits) reads as
            return ("" if v > 0 else "-") + "infinite (or beyond float64's +-1.8e308)"
        return "NaN" if v != v else repr(v)
    if isinstance(v, str):
        return "the string " + json.dumps(v if len(v) <= 20 else v[:20] + "...")   # ASCII-escaped
    if isinstance(v, (list, dict)):
        return "a list" if isinstance(v, list) else "an object"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**20:
        return f"an integer of {len(str(abs(v)))} digits"
    return json.dumps(v)


def _key(inst: dict, i: int) -> str:
    key = inst.get("key", str(i))
    if not isinstance(key, str):
        raise BadRequest(f"instance {i}: 'key' must be a string, got {_show(key)}")
    try:
        key.encode("utf-8")   # a lone surrogate ("\ud800") parses but cannot be written back as JSON
    except UnicodeEncodeError:
        raise BadRequest(f"instance {i}: 'key' is not valid Unicode (a lone surrogate escape)") from None
    return key


F32_MAX = float(np.finfo(np.float32).max)
NUMBER = {int, float}   # exact types: bool is not a number here, and neither is a numeric string


def _latent(inst: dict, i: int, nz: int) -> np.ndarray:
    """JSON numbers only, on every path: a numeric string ("0.5"), a bool or null is refused, naming it."""
    field_ = "embeddings" if "embeddings" in inst else "z"
    z = inst[field_]
    if not isinstance(z, list):
        raise BadRequest(f"instance {i}: '{field_}' must be a list of {nz} numbers, got {_show(z)}")
    if len(z) != nz:
        raise BadRequest(f"instance {i}: '{field_}' has {len(z)} numbers; the generator takes {nz}")
    # fast path in C: the types first (numpy would turn "0.5" and True into numbers), then finite float32s
    if set(map(type, z)) <= NUMBER:
        try:
            arr = np.array(z, dtype=np.float64)
        except OverflowError:   # an int beyond float64: named below
            arr = None
        if arr is not None and (np.abs(arr) <= F32_MAX).all():   # False for NaN and inf too
            return arr.astype(np.float32)
    for j, v in enumerate(z):
        if type(v) not in NUMBER or (isinstance(v, float) and not math.isfinite(v)):
            raise BadRequest(f"instance {i}: '{field_}'[{j}] is {_show(v)}, not a finite number")
        if abs(v) > F32_MAX:    # exact for ints of any size: no conversion to float
            raise BadRequest(f"instance {i}: '{field_}'[{j}] is {_show(v)}, beyond float32's range (+-3.4e38)")
    raise BadRequest(f"instance {i}: '{field_}' is not {nz} finite float32 numbers")


def _image_bytes(inst: dict, i: int) -> tuple[bytes, str]:
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
    return raw, ext


def _header_pixels(raw: bytes) -> int:
    """Width x height from the image's header, nothing decoded; 0 when PIL cannot read it (decode() then
    names the problem)."""
    try:
        w, h = Image.open(io.BytesIO(raw)).size
    except Image.DecompressionBombError:   # over twice PIL's own limit: certainly over ours
        return 1 << 62
    except Exception:  # noqa: BLE001 - a corrupt header: decode() says what is wrong
        return 0
    return w * h


def _image(raw: bytes, ext: str, i: int, models: Models, max_pixels: int) -> np.ndarray:
    try:
        return decode(raw, ext, channels=models.channels, size=models.size, resize="crop", background="white",
                      max_pixels=max_pixels)
    except BadImage as e:
        raise BadRequest(f"instance {i}: image could not be used ({e})") from None


JSON_DEPTH = 1024    # orjson's nesting limit


def _parse_int(text: str):
    # Python refuses int() of over 4300 digits (ValueError) and float(int) over 1e308 (OverflowError):
    # a long integer becomes a float, as orjson reads it, so that an oversized one is named as inf.
    return int(text) if len(text) <= 18 else float(text)


def load_json(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):   # Python's parser would recurse until RecursionError: no second try
            raise BadRequest(f"body is nested deeper than {JSON_DEPTH} levels") from None
    try:  # strict JSON failed; Python's parser also takes NaN/Infinity (json.dumps writes them), named later
        return json.loads(body, parse_int=_parse_int)
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except ValueError as e:     # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"body is not JSON ({e})") from None


def parse_instances(body: bytes, models: Models, s: Settings):
    """-> list of ('z', key, array) or ('image', key, uint8 array) in request order; BadRequest names the
    problem (TooLarge: over a size limit). Runs in a parse thread: nothing here blocks the event loop."""
    doc = load_json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise BadRequest('body must be {"instances": [...]}')
    instances = doc["instances"]
    if not instances:
        raise BadRequest("'instances' is empty")
    if len(instances) > s.max_instances:
        raise TooLarge(f"{len(instances)} instances; at most {s.max_instances} per request")
    out, pixels = [], 0
    for i, inst in enumerate(instances):      # every instance checked before any image is decoded
        if not isinstance(inst, dict):
            raise BadRequest(f"instance {i}: must be an object, got {_show(inst)}")
        key = _key(inst, i)
        if "embeddings" in inst or "z" in inst:
            out.append(("z", key, _latent(inst, i, models.nz)))
        elif "image_bytes" in inst:
            if models.e_batcher is None:
                raise BadRequest(f"instance {i}: this server has no encoder (image -> embedding is off)")
            raw, ext = _image_bytes(inst, i)
            pixels += _header_pixels(raw)
            if pixels > s.max_request_pixels:
                raise TooLarge(f"the images up to instance {i} decode to over {s.max_request_pixels} pixels, "
                               f"this server's max_request_pixels: send fewer or smaller images per request")
            out.append(("image", key, (raw, ext)))
        else:
            raise BadRequest(f"instance {i}: needs 'embeddings' (or 'z') or 'image_bytes'")
    return [(kind, key, _image(*v, i, models, s.max_pixels) if kind == "image" else v)
            for i, (kind, key, v) in enumerate(out)]


async def predict(parsed, models: Models):
    """The model results for parsed instances: (images or None, (z, err) or None)."""
    zs = [v for kind, _, v in parsed if kind == "z"]
    ims = [v for kind, _, v in parsed if kind == "image"]
    jobs = []
    if zs:
        jobs.append(models.g_batcher.submit(torch.from_numpy(np.stack(zs))))
    if ims:
        jobs.append(models.e_batcher.submit(np.stack(ims)))
    results = iter(await asyncio.gather(*jobs))
    return next(results) if zs else None, next(results) if ims else None


def render(parsed, results) -> bytes:
    """{"predictions": [...]} in request order, as JSON bytes (PNG encoding included: a parse thread's work)."""
    images, encoded = results
    images = iter(() if images is None else images)
    if encoded is not None:
        z, err = encoded
        encoded = zip(np.round(np.asarray(z, dtype=np.float64), 6).tolist(), np.asarray(err).tolist())
    preds = []
    for kind, key, _ in parsed:
        if kind == "z":
            preds.append({"key": key, "image_bytes": {"b64": png_b64(next(images))}})
        else:
            zz, e = next(encoded)
            preds.append({"key": key, "embeddings": zz, "reconstruction_mse": float(e)})
    return orjson.dumps({"predictions": preds})


class JSONResponse(Response):
    """orjson: 5-10x faster than json.dumps on the predictions (the event loop's time is the server's)."""
    media_type = "application/json"

    def render(self, content) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)   # bytes: rendered off the loop


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


def timed_out(what: str, seconds: float) -> JSONResponse:
    return error(504, f"{what} took longer than {seconds:g} s")


def create_app(models: Models, s: Settings) -> FastAPI:
    app = FastAPI(title="DCGAN generator", docs_url=None, redoc_url=None)
    if s.api_key:   # the page is open: it holds no data, and it is what asks a person for the key
        app.add_middleware(APIKeyCheck, key=s.api_key, open_paths={"/healthz", "/"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # a bug answers 500 and the server stays up
        return error(500, f"internal error ({type(e).__name__})")

    async def read_body(request: Request) -> bytes:
        """The body, at most max_body_bytes (TooLarge) and in full within body_timeout_s (TimeoutError):
        uvicorn has no read timeout of its own, and a body trickled byte by byte would hold the request."""
        length = request.headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > s.max_body_bytes:
            raise TooLarge

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > s.max_body_bytes:
                    raise TooLarge
                chunks.append(chunk)
            return b"".join(chunks)
        return await asyncio.wait_for(read(), s.body_timeout_s)

    async def answer(body: bytes) -> bytes:
        parsed = await models.off_loop(parse_instances, body, models, s)
        results = await predict(parsed, models)
        return await models.off_loop(render, parsed, results)

    @app.post(f"/v1/models/{s.name}:predict")
    async def predict_route(request: Request):
        try:
            body = await read_body(request)
        except TooLarge:
            return error(413, f"body over {s.max_body_bytes} bytes: send fewer or smaller instances per request")
        except asyncio.TimeoutError:   # the rest of the body: the server's protocol drops it, then closes
            return error(504, f"the body did not arrive in full within {s.body_timeout_s:g} s")
        try:   # the time limit covers parsing and decoding too: they run in threads, the loop only waits
            return JSONResponse(await asyncio.wait_for(answer(body), s.timeout_s))
        except BadRequest as e:
            return error(e.status, str(e))
        except asyncio.TimeoutError:
            return timed_out("the request (parsing, decoding and the model)", s.timeout_s)

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
        # ASCII digits only, and few: int() takes other scripts' digits and whitespace, and refuses over 4300
        if not re.fullmatch(r"[+-]?[0-9]{1,19}", v):
            raise BadRequest(f"'{name}' must be an integer in [{lo}, {hi}], got {_show(v)}")
        n = int(v)
        if not lo <= n <= hi:
            raise BadRequest(f"'{name}' must be in [{lo}, {hi}], got {n}")
        return n

    def _grid(images: np.ndarray) -> bytes:
        if len(images) == 1:
            return pictures.png_bytes(images[0])
        buf = io.BytesIO()
        pictures.grid(images, nrow=min(len(images), 8)).save(buf, format="PNG")
        return buf.getvalue()

    async def generate_png(z: torch.Tensor) -> bytes:
        return await models.off_loop(_grid, await models.g_batcher.submit(z))

    @app.get("/sample")
    async def sample(request: Request):
        try:
            n, seed = _int(request, "n", 16, 1, 256), _int(request, "seed", 0, 0, 2**31 - 1)
        except BadRequest as e:
            return error(400, str(e))
        try:
            png = await asyncio.wait_for(generate_png(generation.noise(n, models.nz, seed)), s.timeout_s)
        except asyncio.TimeoutError:
            return timed_out(f"the sample of {n}", s.timeout_s)
        return Response(png, media_type="image/png")

    @app.get("/interpolate")
    async def interpolate(request: Request):
        try:
            a, b = _int(request, "a", 0, 0, 2**31 - 1), _int(request, "b", 1, 0, 2**31 - 1)
            v = request.query_params.get("t", "0.5")
            t = float(v) if len(v) <= 40 else math.nan
            if not 0 <= t <= 1:     # NaN too
                raise ValueError
        except BadRequest as e:
            return error(400, str(e))
        except ValueError:
            return error(400, f"'t' must be a number in [0, 1], got {_show(v)}")
        z = generation.slerp(generation.noise(1, models.nz, a)[0], generation.noise(1, models.nz, b)[0], t)
        try:
            png = await asyncio.wait_for(generate_png(z[None].float()), s.timeout_s)
        except asyncio.TimeoutError:
            return timed_out("the interpolation", s.timeout_s)
        return Response(png, media_type="image/png")

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app
