"""The HTTP app: the cloud-prediction JSON format (V1) and the Open Inference Protocol (V2, v2.py) over FastAPI.

POST /v1/models/generator:predict   {"instances": [...]} -> {"predictions": [...]} in request order
    {"embeddings" (or "z"): [nz numbers], "key": "0"}  -> {"key", "image_bytes": {"b64": PNG}}
    {"image_bytes": {"b64": JPEG/PNG}, "key": "0"}     -> {"key", "embeddings", "reconstruction_mse"}
GET  /v1/models/generator           {"name", "version", "ready", ...}
GET  /healthz                       {"status": "ok"}; 503 while the models load or the server drains
GET  /v2/...                        V2: health, metadata, infer (v2.py)
GET  /metrics                       Prometheus metrics (metrics.py)
GET  /sample?n=16&seed=0            a grid PNG;   GET /interpolate?a=1&b=2&t=0.5: one PNG between two seeds
GET  /                              the page

Bad input never takes the server down: 400 with {"error": "instance 3: ..."} naming the instance and the
reason, 413 for a body, an instance count or images' total pixels over a limit, 504 for every time limit
(the body's arrival, then parsing, decoding and the model), 401 without the API key when one is set
(always when bound beyond loopback; the page and the health probes are open), 404/405 in the same shape.
The event loop only routes: bodies are parsed, images decoded and PNGs encoded in `parse_threads` threads,
the models run in their own, so one request's work never stalls the others (or the probes).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import math
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import HTMLResponse, Response
from PIL import Image

from .. import pictures
from ..images import BadImage, decode
from . import runtime, v2
from .batching import Batcher, ModelThreads
from .bodies import (F32_MAX, NUMBER, BadRequest, JSONResponse, TooLarge, error, load_json, read_body, show,
                     timed_out)
from .lifecycle import Drain, Lifecycle, NotReady
from .metrics import Observe, ServerMetrics

PAGE = Path(__file__).with_name("page.html")
# PIL warns of images over its own limit; the server judges sizes itself (max_pixels, max_request_pixels).
# A filter for good, not warnings.catch_warnings, which is not thread-safe (parse threads run side by side).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Open without the API key: the probes of load balancers and engines (Kubernetes, KServe, Cloud Run), and the page
PROBES = frozenset({"/healthz", "/v2/health/live", "/v2/health/ready"})
OPEN_PATHS = PROBES | {"/"}
IMAGE_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}


@dataclass
class Settings:
    max_batch: int = 64               # rows per model call
    max_wait_ms: float = 5.0          # how long the first request of a batch waits for others
    model_threads: int = 1            # model calls that run side by side
    torch_threads: int | None = None  # intra-op threads of each model call, torch's or onnxruntime's (None: default)
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


def png_b64(img: np.ndarray) -> str:
    """uint8 (C, H, W) -> base64 PNG."""
    return base64.b64encode(pictures.png_bytes(img)).decode("ascii")


class Models:
    """The generator (and encoder) behind two batchers, run in `model_threads` threads; the request work
    around them (JSON, image decoding, PNGs) in `parse_threads` others, so that the event loop only routes.
    G and E: runtime nets (an ONNX file needs no torch) or torch modules. Both batchers take and give numpy
    arrays: latents (N, nz) and float32 images (N, C, H, W) in [-1, 1]."""

    def __init__(self, G, config: dict, E=None, settings: Settings = Settings()):
        self.G, self.E = runtime.as_net(G), None if E is None else runtime.as_net(E)
        self.config, self.s = config, settings
        self.nz, self.channels, self.size = config["nz"], config["channels"], config["image_size"]
        self.differentiable = self.G.differentiable     # a torch module: refinement by gradient steps possible
        self.threads = ModelThreads(settings.model_threads, settings.torch_threads)
        # A bounded pool of its own (not asyncio's default, sized by os.cpu_count()): at most parse_threads
        # images are decoded at once, which bounds their memory, and the model threads are never starved.
        self.parse = ThreadPoolExecutor(max(1, settings.parse_threads), thread_name_prefix="parse")
        wait = settings.max_wait_ms / 1000
        self.g_batcher = Batcher(self._generate, self.threads, settings.max_batch, wait)
        self.e_batcher = Batcher(self._encode, self.threads, settings.max_batch, wait) if E is not None else None

    async def off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.parse, fn, *args)

    def _generate(self, z: np.ndarray) -> np.ndarray:
        return self.G(z)         # one forward pass for the batch the batcher formed

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (latents, each image's mean squared error against the generator's image of its latent)."""
        steps = self.s.invert_steps if self.differentiable else 0
        if steps > 0:
            return self.G.invert(pictures.to_uint8(x), steps, self.E)
        z = self.E(x)
        return z, ((self.G(z) - x) ** 2).reshape(len(x), -1).mean(1)

    async def generate(self, z: np.ndarray) -> np.ndarray:
        """Latents -> float32 images in [-1, 1], batched with other requests'."""
        return await self.g_batcher.submit(np.ascontiguousarray(z, np.float32))

    async def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 images in [-1, 1] -> (latents, reconstruction errors), batched with other requests'."""
        return await self.e_batcher.submit(np.ascontiguousarray(x, np.float32))


def _key(inst: dict, i: int) -> str:
    key = inst.get("key", str(i))
    if not isinstance(key, str):
        raise BadRequest(f"instance {i}: 'key' must be a string, got {show(key)}")
    try:
        key.encode("utf-8")   # a lone surrogate ("\ud800") parses but cannot be written back as JSON
    except UnicodeEncodeError:
        raise BadRequest(f"instance {i}: 'key' is not valid Unicode (a lone surrogate escape)") from None
    return key


def _latent(inst: dict, i: int, nz: int) -> np.ndarray:
    """JSON numbers only, on every path: a numeric string ("0.5"), a bool or null is refused, naming it."""
    field_ = "embeddings" if "embeddings" in inst else "z"
    z = inst[field_]
    if not isinstance(z, list):
        raise BadRequest(f"instance {i}: '{field_}' must be a list of {nz} numbers, got {show(z)}")
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
            raise BadRequest(f"instance {i}: '{field_}'[{j}] is {show(v)}, not a finite number")
        if abs(v) > F32_MAX:    # exact for ints of any size: no conversion to float
            raise BadRequest(f"instance {i}: '{field_}'[{j}] is {show(v)}, beyond float32's range (+-3.4e38)")
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
            raise BadRequest(f"instance {i}: must be an object, got {show(inst)}")
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
        jobs.append(models.generate(np.stack(zs)))
    if ims:
        jobs.append(models.encode(runtime.to_float(np.stack(ims))))
    results = iter(await asyncio.gather(*jobs))
    return next(results) if zs else None, next(results) if ims else None


def render(parsed, results) -> bytes:
    """{"predictions": [...]} in request order, as JSON bytes (PNG encoding included: a parse thread's work)."""
    images, encoded = results
    images = iter(() if images is None else pictures.to_uint8(images))
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


def create_app(models, s: Settings) -> FastAPI:
    """The app over `models`: a Models, or a function that loads one (called in a thread at startup, so
    that the port answers liveness while the models load; model routes answer 503 until they are ready)."""
    life = Lifecycle(None if callable(models) else models)
    metrics = ServerMetrics(in_flight=lambda: life.in_flight)

    @asynccontextmanager
    async def lifespan(app):
        if callable(models):
            life.load_in_background(lambda: watched(models()))
        yield

    def watched(m: Models) -> Models:
        metrics.watch(s.name, m.g_batcher)
        if m.e_batcher is not None:
            metrics.watch(v2.ENCODER, m.e_batcher)
        return m

    if not callable(models):
        watched(models)
    app = FastAPI(title="DCGAN generator", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.life, app.state.metrics = life, metrics
    if s.api_key:   # open: the page (it holds no data, and asks a person for the key) and the health probes
        app.add_middleware(APIKeyCheck, key=s.api_key, open_paths=OPEN_PATHS)
    app.add_middleware(Drain, life=life, probes=PROBES)
    app.add_middleware(Observe, metrics=metrics, routes=lambda: app.router.routes)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, e: NotReady):
        return error(503, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def routing(request: Request, e: StarletteHTTPException):   # 404, 405: the protocols' error shape too
        return error(e.status_code, f"{e.detail}: {request.method} {request.url.path[:200]}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # a bug answers 500 and the server stays up
        return error(500, f"internal error ({type(e).__name__})")

    async def answer(body: bytes) -> bytes:
        m = life.models
        parsed = await m.off_loop(parse_instances, body, m, s)
        results = await predict(parsed, m)
        return await m.off_loop(render, parsed, results)

    @app.post(f"/v1/models/{s.name}:predict")
    async def predict_route(request: Request):
        life.models   # 503 while loading, before the body is read
        try:   # the time limit covers parsing and decoding too: they run in threads, the loop only waits
            body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
            return JSONResponse(await asyncio.wait_for(answer(body), s.timeout_s))
        except BadRequest as e:
            return error(e.status, str(e))
        except asyncio.TimeoutError:
            return timed_out("the request (parsing, decoding and the model)", s.timeout_s)

    @app.get(f"/v1/models/{s.name}")
    async def metadata():
        m = life.models
        return {"name": s.name, "version": s.version, "ready": life.ready, "nz": m.nz,
                "image_size": m.size, "channels": m.channels, "encoder": m.E is not None,
                "invert_steps": s.invert_steps if m.differentiable else 0, **s.extra}

    @app.get("/healthz")
    async def healthz():
        if not life.ready:
            return error(503, "loading" if not life.draining else "shutting down")
        m = life.models
        return {"status": "ok", "model_calls": m.g_batcher.calls + (m.e_batcher.calls if m.e_batcher else 0)}

    @app.get("/metrics")
    async def metrics_route():
        return Response(metrics.exposition(), media_type=metrics.content_type)

    v2.add_routes(app, life, s)

    def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
        v = request.query_params.get(name, str(default))
        # ASCII digits only, and few: int() takes other scripts' digits and whitespace, and refuses over 4300
        if not re.fullmatch(r"[+-]?[0-9]{1,19}", v):
            raise BadRequest(f"'{name}' must be an integer in [{lo}, {hi}], got {show(v)}")
        n = int(v)
        if not lo <= n <= hi:
            raise BadRequest(f"'{name}' must be in [{lo}, {hi}], got {n}")
        return n

    def _grid(images: np.ndarray) -> bytes:
        images = pictures.to_uint8(images)
        if len(images) == 1:
            return pictures.png_bytes(images[0])
        buf = io.BytesIO()
        pictures.grid(images, nrow=min(len(images), 8)).save(buf, format="PNG")
        return buf.getvalue()

    async def generate_png(z: np.ndarray) -> bytes:
        m = life.models
        return await m.off_loop(_grid, await m.generate(z))

    @app.get("/sample")
    async def sample(request: Request):
        nz = life.models.nz
        try:
            n, seed = _int(request, "n", 16, 1, 256), _int(request, "seed", 0, 0, 2**31 - 1)
        except BadRequest as e:
            return error(400, str(e))
        try:
            png = await asyncio.wait_for(generate_png(runtime.noise(n, nz, seed)), s.timeout_s)
        except asyncio.TimeoutError:
            return timed_out(f"the sample of {n}", s.timeout_s)
        return Response(png, media_type="image/png")

    @app.get("/interpolate")
    async def interpolate(request: Request):
        nz = life.models.nz
        try:
            a, b = _int(request, "a", 0, 0, 2**31 - 1), _int(request, "b", 1, 0, 2**31 - 1)
            v = request.query_params.get("t", "0.5")
            t = float(v) if len(v) <= 40 else math.nan
            if not 0 <= t <= 1:     # NaN too
                raise ValueError
        except BadRequest as e:
            return error(400, str(e))
        except ValueError:
            return error(400, f"'t' must be a number in [0, 1], got {show(v)}")
        z = runtime.slerp(runtime.noise(1, nz, a)[0], runtime.noise(1, nz, b)[0], t)
        try:
            png = await asyncio.wait_for(generate_png(z[None]), s.timeout_s)
        except asyncio.TimeoutError:
            return timed_out("the interpolation", s.timeout_s)
        return Response(png, media_type="image/png")

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app
