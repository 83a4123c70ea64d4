"""The Open Inference Protocol (KServe V2) routes of dcgan/serve/v2.py: health and metadata bodies as the
protocol writes them (datatypes, shapes with -1 for the batch, versions), 404 for an unknown model or version,
generator inference equal to the eager torch generator (JSON data flat or nested, one output chosen, the
request id echoed, the binary tensor data extension both ways), encoder inference from UINT8 and FP32 images
equal to what the V1 route answers for the same picture, a one-line 400 naming the problem for every kind of
bad body, 413 over max_instances, 504 over the time limit, and the API key on every V2 route but the two health
probes."""
import base64
import io
import json

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from dcgan import pictures
from dcgan.serve import runtime
from dcgan.serve.app import Models, Settings, create_app
from serve.common import NZ, SIZE, Gated, tiny_models

IMAGE = [1, SIZE, SIZE]            # channels, height, width of the tiny models
INFER = "/v2/models/generator/infer"
ENCODE = "/v2/models/encoder/infer"


def within_one_level(a, b) -> bool:
    """uint8 images against eager torch's: a value on a rounding boundary may land one level off elsewhere."""
    return a.shape == b.shape and int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max(initial=0)) <= 1


def make_client(encoder: bool = True, **settings) -> TestClient:
    G, E = tiny_models()
    s = Settings(**settings)
    return TestClient(create_app(Models(G, dict(G.config), E if encoder else None, s), s))


@pytest.fixture(scope="module")
def c() -> TestClient:
    return make_client(version="v1.2")


def latents(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, NZ)).astype(np.float32)


def eager_images(z: np.ndarray) -> np.ndarray:
    G, _ = tiny_models()
    with torch.no_grad():
        return G(torch.from_numpy(z)).numpy()


def pictures_uint8(n: int, seed: int = 0) -> np.ndarray:
    """(n, 1, SIZE, SIZE) uint8: random pixels at exactly the models' size."""
    return np.random.default_rng(seed).integers(0, 256, (n, *IMAGE), dtype=np.uint8)


def png_b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img[0], mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def z_input(z: np.ndarray, **extra) -> dict:
    return {"name": "z", "datatype": "FP32", "shape": list(z.shape), "data": z.ravel().tolist(), **extra}


def outputs_by_name(doc: dict) -> dict:
    return {o["name"]: o for o in doc["outputs"]}


def json_tensor(out: dict) -> np.ndarray:
    dtype = {"FP32": np.float32, "UINT8": np.uint8}[out["datatype"]]
    return np.array(out["data"], dtype=dtype).reshape(out["shape"])


def binary_request(doc: dict, *blobs: bytes) -> tuple[bytes, dict]:
    head = orjson.dumps(doc)
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"}


def split_binary_response(r) -> tuple[dict, bytes]:
    """The binary tensor data extension's answer: (the JSON head, the raw bytes after it)."""
    n = int(r.headers["Inference-Header-Content-Length"])
    return orjson.loads(r.content[:n]), r.content[n:]


# --- health and metadata ---------------------------------------------------------------------------------

def test_health_probes_and_server_metadata(c):
    r = c.get("/v2/health/live")
    assert r.status_code == 200 and r.json() == {"live": True}
    r = c.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    meta = c.get("/v2").json()
    assert meta["name"] == "dcgan" and meta["version"] == "v1.2"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("prefix", ["/v2/models/{}", "/v2/models/{}/versions/v1.2"])
def test_model_metadata_and_readiness(c, prefix):
    image = [-1, *IMAGE]
    gen = c.get(prefix.format("generator"))
    assert gen.status_code == 200, gen.text
    gen = gen.json()
    assert gen["name"] == "generator" and gen["versions"] == ["v1.2"]
    assert gen["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, NZ]}]
    assert gen["outputs"] == [{"name": "image", "datatype": "FP32", "shape": image},
                              {"name": "image_uint8", "datatype": "UINT8", "shape": image}]
    enc = c.get(prefix.format("encoder")).json()
    assert enc["name"] == "encoder" and enc["versions"] == ["v1.2"]
    assert enc["inputs"] == [{"name": "image", "datatype": "FP32", "shape": image}]
    assert enc["outputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, NZ]},
                              {"name": "reconstruction_mse", "datatype": "FP32", "shape": [-1]}]
    for name in ("generator", "encoder"):
        r = c.get(prefix.format(name) + "/ready")
        assert r.status_code == 200 and r.json() == {"name": name, "ready": True}


@pytest.mark.parametrize("method, path, words", [
    ("GET", "/v2/models/nope", ["no model named 'nope'", "['encoder', 'generator']"]),
    ("GET", "/v2/models/nope/ready", ["no model named 'nope'"]),
    ("POST", "/v2/models/nope/infer", ["no model named 'nope'"]),
    ("GET", "/v2/models/generator/versions/nope", ["has no version 'nope'", "'v1.2'"]),
    ("GET", "/v2/models/encoder/versions/nope/ready", ["model 'encoder' has no version 'nope'"]),
    ("POST", "/v2/models/generator/versions/nope/infer", ["model 'generator' has no version 'nope'"]),
])
def test_unknown_model_or_version_is_404_in_the_error_shape(c, method, path, words):
    body = {"inputs": [z_input(latents(1))]} if method == "POST" else None
    r = c.request(method, path, json=body)
    assert r.status_code == 404, r.text
    assert list(r.json()) == ["error"]
    msg = r.json()["error"]
    assert all(w in msg for w in words) and "\n" not in msg, msg


def test_a_server_without_an_encoder_has_no_encoder_model():
    c = make_client(encoder=False)
    assert c.get("/v2/models/generator").status_code == 200
    r = c.post(ENCODE, json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, *IMAGE],
                                         "data": [0] * SIZE * SIZE}]})
    assert r.status_code == 404 and "no model named 'encoder'" in r.json()["error"]
    assert c.get("/v2/models/encoder").status_code == 404


# --- generator inference ------------------------------------------------------------------------------------

def test_generator_infer_with_flat_and_nested_json_data_equals_the_eager_generator(c):
    z = latents(3)
    want = eager_images(z)
    flat = {"inputs": [z_input(z)]}
    nested = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [3, NZ], "data": z.tolist()}]}
    for body in (flat, nested):
        r = c.post(INFER, json=body)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        doc = r.json()
        assert doc["model_name"] == "generator" and doc["model_version"] == "v1.2" and "id" not in doc
        out = outputs_by_name(doc)
        assert list(out) == ["image", "image_uint8"]                  # all outputs when none are named
        assert out["image"]["datatype"] == "FP32" and out["image"]["shape"] == [3, *IMAGE]
        assert out["image_uint8"]["datatype"] == "UINT8" and out["image_uint8"]["shape"] == [3, *IMAGE]
        image = json_tensor(out["image"])
        assert np.abs(image - want).max() <= 1e-5
        assert within_one_level(json_tensor(out["image_uint8"]), pictures.to_uint8(want))
        assert np.array_equal(json_tensor(out["image_uint8"]), pictures.to_uint8(image))


def test_one_output_chosen_and_the_request_id_echoed(c):
    z = latents(2, seed=1)
    r = c.post(INFER, json={"id": "req-7", "inputs": [z_input(z)], "outputs": [{"name": "image_uint8"}]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-7" and [o["name"] for o in doc["outputs"]] == ["image_uint8"]
    assert within_one_level(json_tensor(doc["outputs"][0]), pictures.to_uint8(eager_images(z)))
    # the outputs come in the order the request names them
    r = c.post(INFER, json={"inputs": [z_input(z)], "outputs": [{"name": "image_uint8"}, {"name": "image"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["image_uint8", "image"]


def test_binary_tensor_data_in_and_out(c):
    z = latents(2, seed=2)
    want = eager_images(z)
    doc = {"id": "bin", "inputs": [{"name": "z", "datatype": "FP32", "shape": [2, NZ],
                                    "parameters": {"binary_data_size": z.nbytes}}],
           "outputs": [{"name": "image", "parameters": {"binary_data": True}}, {"name": "image_uint8"}]}
    body, headers = binary_request(doc, z.astype("<f4").tobytes())
    r = c.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    head, raw = split_binary_response(r)
    assert head["id"] == "bin" and head["model_name"] == "generator"
    image, uint8 = head["outputs"]
    assert image["name"] == "image" and image["datatype"] == "FP32" and image["shape"] == [2, *IMAGE]
    assert "data" not in image and image["parameters"]["binary_data_size"] == 2 * SIZE * SIZE * 4 == len(raw)
    got = np.frombuffer(raw, dtype="<f4").reshape(image["shape"])
    assert np.abs(got - want).max() <= 1e-5
    assert uint8["name"] == "image_uint8" and within_one_level(json_tensor(uint8), pictures.to_uint8(want))
    # binary_data_output: every output binary, one after the other in the order of the outputs
    doc = {"inputs": [z_input(z)], "parameters": {"binary_data_output": True}}
    r = c.post(INFER, json=doc)
    head, raw = split_binary_response(r)
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [2 * SIZE * SIZE * 4, 2 * SIZE * SIZE] and len(raw) == sum(sizes)
    assert np.abs(np.frombuffer(raw[:sizes[0]], "<f4").reshape(2, *IMAGE) - want).max() <= 1e-5
    assert within_one_level(np.frombuffer(raw[sizes[0]:], np.uint8).reshape(2, *IMAGE), pictures.to_uint8(want))


# --- encoder inference ----------------------------------------------------------------------------------------

def test_encoder_infer_from_uint8_and_fp32_images_equals_the_v1_route(c):
    imgs = pictures_uint8(2, seed=3)
    v1 = c.post("/v1/models/generator:predict",
                json={"instances": [{"image_bytes": {"b64": png_b64(img)}} for img in imgs]})
    assert v1.status_code == 200, v1.text
    v1_z = np.array([p["embeddings"] for p in v1.json()["predictions"]])
    v1_err = np.array([p["reconstruction_mse"] for p in v1.json()["predictions"]])
    _, E = tiny_models()
    with torch.no_grad():      # what the PNG decodes to: the same pixels (no resize at the models' size)
        eager_z = E(torch.from_numpy(runtime.to_float(imgs))).numpy()
    assert np.abs(v1_z - eager_z).max() <= 1e-5
    x = runtime.to_float(imgs)
    bodies = {
        "UINT8 JSON": ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, *IMAGE],
                                    "data": imgs.ravel().tolist()}]}, {}),
        "UINT8 nested JSON": ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, *IMAGE],
                                           "data": imgs.tolist()}]}, {}),
        "FP32 JSON": ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, *IMAGE],
                                   "data": x.ravel().tolist()}]}, {}),
        "UINT8 binary": binary_request({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, *IMAGE],
                                                    "parameters": {"binary_data_size": imgs.nbytes}}]},
                                       imgs.tobytes()),
        "FP32 binary": binary_request({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, *IMAGE],
                                                   "parameters": {"binary_data_size": x.nbytes}}]},
                                      x.astype("<f4").tobytes()),
    }
    for what, (body, headers) in bodies.items():
        if isinstance(body, dict):
            r = c.post(ENCODE, json=body)
        else:
            r = c.post(ENCODE, content=body, headers=headers)
        assert r.status_code == 200, (what, r.text)
        out = outputs_by_name(r.json())
        assert list(out) == ["z", "reconstruction_mse"], what
        assert out["z"]["shape"] == [2, NZ] and out["reconstruction_mse"]["shape"] == [2], what
        z, err = json_tensor(out["z"]), json_tensor(out["reconstruction_mse"])
        assert np.abs(z - v1_z).max() <= 1e-5, what            # V1 rounds to 6 decimals
        assert np.allclose(err, v1_err, rtol=1e-5, atol=1e-7), (what, err, v1_err)


# --- bad requests ------------------------------------------------------------------------------------------

Z1 = [0.0] * NZ


def gen_body(**inp) -> dict:
    return {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, NZ], "data": Z1, **inp}]}


def enc_body(**inp) -> dict:
    return {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, *IMAGE],
                        "data": [0] * (SIZE * SIZE), **inp}]}


def with_value(v) -> bytes:
    """A generator request whose data's fourth number is `v` (json.dumps writes NaN as NaN)."""
    return json.dumps(gen_body(data=Z1[:3] + [v] + Z1[4:])).encode()


def past_the_end():
    head = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, NZ],
                        "parameters": {"binary_data_size": NZ * 4}}]}
    return binary_request(head, b"\0" * (NZ * 4 - 1))     # one byte short


@pytest.mark.parametrize("path, body, headers, words", [
    (INFER, gen_body(datatype="INT64"), {}, ["input 'z'", "datatype must be FP32", '"INT64"']),
    (INFER, gen_body(datatype="UINT8"), {}, ["input 'z'", "datatype must be FP32", '"UINT8"']),
    (ENCODE, enc_body(datatype="FP16"), {}, ["input 'image'", "datatype must be FP32 or UINT8"]),
    (INFER, gen_body(shape=[1, NZ + 1], data=Z1 + [0]), {}, ["input 'z'", f"shape [1, {NZ + 1}] does not fit",
                                                              f"[-1, {NZ}]"]),
    (INFER, gen_body(shape=[NZ]), {}, ["input 'z'", f"shape must be [-1, {NZ}]"]),
    (INFER, gen_body(shape=[0, NZ], data=[]), {}, ["input 'z'", f"shape [0, {NZ}] does not fit"]),
    (ENCODE, enc_body(shape=[1, 3, SIZE, SIZE]), {}, ["input 'image'", f"shape [1, 3, {SIZE}, {SIZE}] does not fit"]),
    (INFER, gen_body(shape=[2, NZ]), {}, ["input 'z'", f"'data' has {NZ} numbers; shape [2, {NZ}] needs {2 * NZ}"]),
    (INFER, gen_body(data=[Z1, Z1[:-1]]), {}, ["input 'z'", f"'data' has {2 * NZ - 1} numbers"]),
    (INFER, gen_body(data=[Z1, 0.5]), {}, ["input 'z'", "mixes lists and numbers"]),
    (INFER, gen_body(data="zeros"), {}, ["input 'z'", "'data' must be a list"]),
    (INFER, with_value("0.5"), {}, ["input 'z'", "holds the string \"0.5\", not a number"]),
    (INFER, with_value(True), {}, ["input 'z'", "holds true, not a number"]),
    (INFER, with_value(None), {}, ["input 'z'", "holds null, not a number"]),
    (INFER, with_value(float("nan")), {}, ["input 'z'", "not a finite float32"]),
    (INFER, with_value(float("inf")), {}, ["input 'z'", "not a finite float32"]),
    (INFER, with_value(1e39), {}, ["input 'z'", "not a finite float32"]),
    (ENCODE, enc_body(data=[300] + [0] * (SIZE * SIZE - 1)), {}, ["input 'image'", "outside UINT8's [0, 255]"]),
    (ENCODE, enc_body(data=[-1] + [0] * (SIZE * SIZE - 1)), {}, ["input 'image'", "outside UINT8's [0, 255]"]),
    (ENCODE, enc_body(data=[0.5] + [0] * (SIZE * SIZE - 1)), {}, ["input 'image'", "holds 0.5, not an integer"]),
    (INFER, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, NZ], "data": Z1}]}, {},
     ["inputs[0]", 'no input named the string "x"', "['z']"]),
    (INFER, {"inputs": [gen_body()["inputs"][0]] * 2}, {}, ["inputs[1]", "input 'z' given twice"]),
    (INFER, {"inputs": []}, {}, ["missing input 'z'"]),
    (ENCODE, {"inputs": []}, {}, ["missing input 'image'"]),
    (INFER, {**gen_body(), "outputs": [{"name": "picture"}]}, {},
     ["outputs[0]", 'no output named the string "picture"', "['image', 'image_uint8']"]),
    (INFER, {**gen_body(), "outputs": []}, {}, ["'outputs' must be a list"]),
    (INFER, {**gen_body(), "id": 7}, {}, ["'id' must be a string"]),
    (INFER, {"instances": [{"z": Z1}]}, {}, ["body must be an inference request"]),
    (INFER, b"{not json", {}, ["body is not JSON"]),
    (INFER, b"\xff\xfe", {}, ["body is not JSON"]),
    (INFER, *past_the_end(), ["input 'z'", f"binary_data_size {NZ * 4} runs past the end of the body"]),
    (INFER, *binary_request(gen_body(parameters={"binary_data_size": 4})), ["binary_data_size 4 runs past"]),
    (INFER, gen_body(parameters={"binary_data_size": NZ * 4}), {},
     ["binary_data_size without the Inference-Header-Content-Length header"]),
    (INFER, b'{"inputs": []}', {"Inference-Header-Content-Length": "99"},
     ["Inference-Header-Content-Length is 99, but the body has 14 bytes"]),
    (INFER, b'{"inputs": []}', {"Inference-Header-Content-Length": "-1"},
     ["Inference-Header-Content-Length must be a byte count"]),
    (INFER, b'{"inputs": []}', {"Inference-Header-Content-Length": "9" * 5000},     # int() refuses 4,300+ digits
     ["Inference-Header-Content-Length must be a byte count"]),
    (INFER, {"inputs": [{"name": [1], "datatype": "FP32", "shape": [1, NZ], "data": Z1}]}, {},   # unhashable names
     ["inputs[0]", "no input named a list"]),
    (INFER, {**gen_body(), "outputs": [{"name": {}}]}, {}, ["outputs[0]", "no output named an object"]),
    (INFER, {"inputs": [{**gen_body()["inputs"][0], "datatype": ["FP32"]}]}, {}, ["datatype must be FP32", "a list"]),
])
def test_bad_bodies_get_a_one_line_400_naming_the_problem(c, path, body, headers, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = c.post(path, content=content, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"]
    msg = r.json()["error"]
    assert all(w in msg for w in words), msg
    assert "\n" not in msg and len(msg) < 300, msg
    assert c.post(INFER, json=gen_body()).status_code == 200           # and the server answers the next one


def test_more_rows_than_max_instances_get_413():
    c = make_client(max_instances=4)
    z = latents(5)
    r = c.post(INFER, json={"inputs": [z_input(z)]})
    assert r.status_code == 413, r.text
    assert "input 'z': 5 rows; at most 4 per request" in r.json()["error"]
    imgs = pictures_uint8(5)
    r = c.post(ENCODE, json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": [5, *IMAGE],
                                         "data": imgs.ravel().tolist()}]})
    assert r.status_code == 413 and "5 rows; at most 4" in r.json()["error"]
    assert c.post(INFER, json={"inputs": [z_input(z[:4])]}).status_code == 200


def test_api_key_guards_every_v2_route_but_the_health_probes():
    c = make_client(api_key="k")
    body = {"inputs": [z_input(latents(1))]}
    for method, path in (("POST", INFER), ("POST", "/v2/models/generator/versions/local/infer"),
                         ("GET", "/v2/models/generator"), ("GET", "/v2/models/encoder/ready"), ("GET", "/v2")):
        r = c.request(method, path, json=body if method == "POST" else None)
        assert r.status_code == 401 and "API key" in r.json()["error"], (path, r.text)
        r = c.request(method, path, json=body if method == "POST" else None, headers={"X-API-Key": "nope"})
        assert r.status_code == 401, path
        r = c.request(method, path, json=body if method == "POST" else None, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200, (path, r.text)
    assert c.get("/v2/health/live").json() == {"live": True}
    r = c.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_an_inference_over_the_time_limit_gets_504():
    G, E = tiny_models()
    held = Gated(G)
    s = Settings(timeout_s=0.2)
    c = TestClient(create_app(Models(held, dict(G.config), E, s), s))
    try:
        r = c.post(INFER, json={"inputs": [z_input(latents(1))]})
        assert r.status_code == 504, r.text
        assert r.json() == {"error": "the inference (parsing and the model) took longer than 0.2 s"}
    finally:
        held.release.set()
    assert c.post(INFER, json={"inputs": [z_input(latents(1))]}).status_code == 200
