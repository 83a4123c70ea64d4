"""The Open Inference Protocol (KServe V2, as Triton and KServe clients speak it) beside the V1 routes.

GET  /v2/health/live, /v2/health/ready          200, or 503 while the models load or the server drains
GET  /v2                                        server metadata
GET  /v2/models/{name}[/versions/{v}]           model metadata: inputs and outputs with datatypes and shapes
GET  /v2/models/{name}[/versions/{v}]/ready
POST /v2/models/{name}[/versions/{v}]/infer     tensors in, tensors out

Two models: `generator` (input `z` FP32 [-1, nz]; outputs `image` FP32 [-1, C, H, W] in [-1, 1] and
`image_uint8` UINT8 [-1, C, H, W]) and `encoder` (input `image`, FP32 in [-1, 1] or UINT8 in [0, 255],
[-1, C, H, W]; outputs `z` FP32 [-1, nz] and `reconstruction_mse` FP32 [-1]). A request names the outputs
it wants (all when it names none). Tensor data as JSON (flat in row-major order, or nested) or as binary
(the binary tensor data extension: `Inference-Header-Content-Length`, `binary_data_size`, `binary_data`).
Errors: {"error": "..."} with 400 (naming the input and what is wrong), 404 (unknown model or version),
413, 503, 504.
"""
from __future__ import annotations

import asyncio
import math

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .. import pictures
from . import runtime
from .bodies import F32_MAX, NUMBER, BadRequest, JSONResponse, TooLarge, error, load_json, read_body, show, timed_out

ENCODER = "encoder"
DTYPES = {"FP32": np.float32, "UINT8": np.uint8}
BINARY_HEADER = "inference-header-content-length"


class NotFound(BadRequest):
    status = 404


def _signatures(m, s) -> dict:
    """{model name: (net, inputs, outputs)}, inputs and outputs {tensor name: (datatypes, shape)}: the datatypes
    an input accepts (metadata shows the first) or the one an output has."""
    image = [-1, m.channels, m.size, m.size]
    out = {s.name: (m.G, {"z": (("FP32",), [-1, m.nz])},
                    {"image": (("FP32",), image), "image_uint8": (("UINT8",), image)})}
    if m.E is not None:
        out[ENCODER] = (m.E, {"image": (("FP32", "UINT8"), image)},
                        {"z": (("FP32",), [-1, m.nz]), "reconstruction_mse": (("FP32",), [-1])})
    return out


def _tensor_meta(tensors: dict) -> list:
    return [{"name": k, "datatype": types[0], "shape": shape} for k, (types, shape) in tensors.items()]


def _flatten(data, depth: int) -> list:
    """Nested lists (Triton's other JSON form) -> one flat list; `depth`: at most the tensor's rank."""
    while depth > 1 and data and isinstance(data[0], list):
        if not all(isinstance(row, list) for row in data):
            raise ValueError
        data = [v for row in data for v in row]
        depth -= 1
    return data


def _array(inp: dict, where: str, datatype: str, shape: list, binary: bytes | None) -> np.ndarray:
    """One request input's tensor, checked: numbers only, finite, in the datatype's range."""
    count = math.prod(shape)
    if binary is not None:
        want = count * np.dtype(DTYPES[datatype]).itemsize
        if len(binary) != want:
            raise BadRequest(f"{where}: binary_data_size is {len(binary)} bytes; shape {shape} of {datatype} "
                             f"needs {want}")
        arr = np.frombuffer(binary, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).astype(DTYPES[datatype])
    else:
        data = inp.get("data")
        if not isinstance(data, list):
            raise BadRequest(f"{where}: 'data' must be a list of {count} numbers (row-major), got {show(data)}")
        try:
            data = _flatten(data, len(shape))
        except ValueError:
            raise BadRequest(f"{where}: 'data' mixes lists and numbers") from None
        if len(data) != count:
            raise BadRequest(f"{where}: 'data' has {len(data)} numbers; shape {shape} needs {count}")
        kinds = {int} if datatype == "UINT8" else NUMBER
        if not set(map(type, data)) <= kinds:
            bad = next(v for v in data if type(v) not in kinds)
            raise BadRequest(f"{where}: 'data' holds {show(bad)}, not {'an integer' if kinds == {int} else 'a number'}")
        try:
            arr = np.array(data, dtype=np.float64 if datatype == "FP32" else np.int64)
        except OverflowError:
            raise BadRequest(f"{where}: 'data' holds an integer beyond {datatype}'s range") from None
    if datatype == "FP32" and not (np.abs(arr) <= F32_MAX).all():    # False for NaN and inf too
        raise BadRequest(f"{where}: 'data' holds a value that is not a finite float32 (NaN, inf or beyond +-3.4e38)")
    if datatype == "UINT8" and arr.size and (arr.min() < 0 or arr.max() > 255):
        raise BadRequest(f"{where}: 'data' holds a value outside UINT8's [0, 255]")
    # the declared datatype, also for JSON data (parsed as int64/float64): the encoder route tells UINT8
    # images (0-255, scaled to [-1, 1]) from FP32 ones by the array's dtype
    return arr.astype(DTYPES[datatype], copy=False).reshape(shape)


def parse_request(body: bytes, head_length: int | None, inputs: dict, outputs: dict, max_rows: int):
    """-> (request id, {input name: array}, [(output name, binary?)]). BadRequest names what is wrong."""
    if head_length is not None:
        if head_length > len(body):
            raise BadRequest(f"Inference-Header-Content-Length is {head_length}, but the body has {len(body)} bytes")
        doc, rest = load_json(body[:head_length]), memoryview(body)[head_length:]
    else:
        doc, rest = load_json(body), None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest('body must be an inference request: {"inputs": [{"name", "shape", "datatype", "data"}]}')
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {show(request_id)}")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"'parameters' must be an object, got {show(params)}")
    got, offset = {}, 0
    for i, inp in enumerate(doc["inputs"]):
        if not isinstance(inp, dict):
            raise BadRequest(f"inputs[{i}]: must be an object, got {show(inp)}")
        name = inp.get("name")
        if not isinstance(name, str) or name not in inputs:
            raise BadRequest(f"inputs[{i}]: no input named {show(name)}; this model takes {sorted(inputs)}")
        if name in got:
            raise BadRequest(f"inputs[{i}]: input '{name}' given twice")
        where = f"input '{name}'"
        accepted, want = inputs[name]
        given = inp.get("datatype")
        if not isinstance(given, str) or given not in accepted:
            raise BadRequest(f"{where}: datatype must be {' or '.join(accepted)}, got {show(given)}")
        shape = inp.get("shape")
        if (not isinstance(shape, list) or len(shape) != len(want)
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise BadRequest(f"{where}: shape must be {want} (-1: any batch size), got {show(shape)}")
        if any(w != -1 and d != w for d, w in zip(shape, want)) or shape[0] < 1:
            raise BadRequest(f"{where}: shape {shape} does not fit this model's {want}")
        if shape[0] > max_rows:
            raise TooLarge(f"{where}: {shape[0]} rows; at most {max_rows} per request")
        size = (inp.get("parameters") or {}).get("binary_data_size") if isinstance(inp.get("parameters"), dict) else None
        binary = None
        if size is not None:
            if rest is None:
                raise BadRequest(f"{where}: binary_data_size without the Inference-Header-Content-Length header")
            if type(size) is not int or size < 0 or offset + size > len(rest):
                raise BadRequest(f"{where}: binary_data_size {show(size)} runs past the end of the body")
            binary, offset = bytes(rest[offset:offset + size]), offset + size
        got[name] = _array(inp, where, given, shape, binary)
    missing = sorted(set(inputs) - set(got))
    if missing:
        raise BadRequest(f"missing input {missing[0]!r}")
    wanted = doc.get("outputs")
    all_binary = params.get("binary_data_output") is True
    if wanted is None:
        return request_id, got, [(name, all_binary) for name in outputs]
    if not isinstance(wanted, list) or not wanted:
        raise BadRequest(f"'outputs' must be a list of {{\"name\": ...}} objects, got {show(wanted)}")
    chosen = []
    for i, out in enumerate(wanted):
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(name, str) or name not in outputs:
            raise BadRequest(f"outputs[{i}]: no output named {show(name)}; this model gives {sorted(outputs)}")
        p = out.get("parameters") or {}
        chosen.append((name, bool(p.get("binary_data", all_binary)) if isinstance(p, dict) else all_binary))
    return request_id, got, chosen


def render(model: str, version: str, request_id: str, tensors: dict, chosen: list, outputs: dict):
    """-> (body, Inference-Header-Content-Length or None). Binary outputs follow the JSON in request order."""
    metas, blobs = [], []
    for name, binary in chosen:
        datatype = outputs[name][0][0]
        arr = np.ascontiguousarray(tensors[name], dtype=DTYPES[datatype])
        meta = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            meta["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            meta["data"] = arr.ravel()
        metas.append(meta)
    doc = {"model_name": model, "model_version": version, "outputs": metas}
    if request_id:
        doc["id"] = request_id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)


def add_routes(app: FastAPI, life, s) -> None:
    def model(name: str, version: str | None = None):
        m = life.models
        sig = _signatures(m, s)
        if name not in sig:
            raise NotFound(f"no model named '{name}' here; this server has {sorted(sig)}")
        if version is not None and version != s.version:
            raise NotFound(f"model '{name}' has no version '{version}'; this server has '{s.version}'")
        net, inputs, outputs = sig[name]
        return m, net, inputs, outputs

    def wrap(route):
        """The V2 routes answer BadRequest and NotFound in the protocol's error shape."""
        async def handler(request: Request, name: str, version: str | None = None):
            try:
                return await route(request, name, version)
            except BadRequest as e:
                return error(e.status, str(e))
        return handler

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": life.ready}, status_code=200 if life.ready else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "dcgan", "version": s.version, "extensions": ["binary_tensor_data"]}

    async def metadata(request: Request, name: str, version: str | None):
        _, net, inputs, outputs = model(name, version)
        platform = "onnxruntime_onnx" if isinstance(net, runtime.OnnxNet) else "pytorch"
        return {"name": name, "versions": [s.version], "platform": platform,
                "inputs": _tensor_meta(inputs), "outputs": _tensor_meta(outputs)}

    async def model_ready(request: Request, name: str, version: str | None):
        model(name, version)
        return JSONResponse({"name": name, "ready": life.ready}, status_code=200 if life.ready else 503)

    async def infer(request: Request, name: str, version: str | None):
        m, _, inputs, outputs = model(name, version)
        body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
        header = request.headers.get(BINARY_HEADER)
        if header is not None and not (header.isascii() and header.isdigit() and len(header) <= 18):
            raise BadRequest(f"Inference-Header-Content-Length must be a byte count, got {show(header)}")
        head_length = int(header) if header is not None else None

        async def answer():
            request_id, tensors, chosen = await m.off_loop(parse_request, body, head_length, inputs, outputs,
                                                           s.max_instances)
            if name == ENCODER:
                x = tensors["image"]
                x = runtime.to_float(x) if x.dtype == np.uint8 else x
                z, err = await m.encode(x)
                result = {"z": z, "reconstruction_mse": err}
            else:
                images = await m.generate(tensors["z"])
                result = {"image": images}
                if any(n == "image_uint8" for n, _ in chosen):
                    result["image_uint8"] = pictures.to_uint8(images)
            return await m.off_loop(render, name, s.version, request_id, result, chosen, outputs)
        try:
            content, answer_head = await asyncio.wait_for(answer(), s.timeout_s)
        except asyncio.TimeoutError:
            return timed_out("the inference (parsing and the model)", s.timeout_s)
        if answer_head is None:
            return JSONResponse(content)
        return Response(content, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(answer_head)})

    for path, route, method in (("", metadata, "GET"), ("/ready", model_ready, "GET"), ("/infer", infer, "POST")):
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            app.add_api_route(prefix + path, wrap(route), methods=[method])
