"""The HTTP server: both request shapes of the cloud-prediction format, order, errors that never take it
down, limits, the API key, batching, exported models, and the registry."""
import asyncio
import os
import subprocess
import sys
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import ROOT
from dcgan import export, pictures
from dcgan.archs.dcgan import Encoder, Generator, init_weights
from dcgan.model import save
from dcgan.serve import runtime
from dcgan.serve.app import Models, Settings, create_app

NZ = 100  # the request shape of the issue: 100 numbers


def tiny_models():
    torch.manual_seed(0)
    G = Generator(32, 1, NZ, 8).apply(init_weights).eval()
    E = Encoder(32, 1, NZ, 8).apply(init_weights).eval()
    return G, E


def client(settings=None, G=None, E="default", **kw):
    g, e = tiny_models()
    G = G or g
    E = e if E == "default" else E
    s = settings or Settings(**kw)
    return TestClient(create_app(Models(G, dict(G.config) if hasattr(G, "config") else kw.get("config"), E, s), s))


def jpeg_b64(seed=0, size=48, mode="RGB") -> str:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def decode_png(b64: str) -> np.ndarray:
    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG")
    return np.array(Image.open(io.BytesIO(raw)))


def test_both_request_shapes_exactly_as_written():
    c = client()
    z = [round(float(v), 4) for v in np.random.default_rng(0).standard_normal(NZ)]
    r = c.post("/v1/models/generator:predict", json={"instances": [{"embeddings": z, "key": "0"}]})
    assert r.status_code == 200
    [p] = r.json()["predictions"]
    assert p["key"] == "0" and decode_png(p["image_bytes"]["b64"]).shape == (32, 32)
    G, _ = tiny_models()     # the image is G(z), as PNG
    want = pictures.to_uint8(G(torch.tensor([z])))[0, 0]
    assert np.array_equal(decode_png(p["image_bytes"]["b64"]), want)
    r = c.post("/v1/models/generator:predict", json={"instances": [{"image_bytes": {"b64": jpeg_b64()}, "key": "0"}]})
    assert r.status_code == 200
    [p] = r.json()["predictions"]
    assert p["key"] == "0" and len(p["embeddings"]) == NZ and all(isinstance(v, float) for v in p["embeddings"])
    assert p["reconstruction_mse"] >= 0


def test_predictions_come_in_request_order_with_keys_echoed():
    c = client()
    keys = ["a", "ünïcode ✓", "", "3", "x" * 500]
    inst = [{"z": [0.1] * NZ, "key": keys[0]}, {"image_bytes": {"b64": jpeg_b64(1)}, "key": keys[1]},
            {"embeddings": [0.0] * NZ, "key": keys[2]}, {"image_bytes": {"b64": jpeg_b64(2, mode="L")}, "key": keys[3]},
            {"embeddings": [1] * NZ, "key": keys[4]}]
    preds = c.post("/v1/models/generator:predict", json={"instances": inst}).json()["predictions"]
    assert [p["key"] for p in preds] == keys
    assert ["image_bytes" in p for p in preds] == [True, False, True, False, True]
    # no key: the instance's index
    preds = c.post("/v1/models/generator:predict", json={"instances": [{"z": [0] * NZ}] * 2}).json()["predictions"]
    assert [p["key"] for p in preds] == ["0", "1"]


def png_b64_of(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("body,words", [
    ({"instances": [{"z": [0] * NZ}, {"embeddings": [0] * 50, "key": "k"}]}, ["instance 1", "50 numbers", "takes 100"]),
    ({"instances": [{"embeddings": ["a"] + [0] * (NZ - 1)}]}, ["instance 0", "'embeddings'[0]", "not a finite number"]),
    ({"instances": [{"embeddings": [True] * NZ}]}, ["instance 0", "not a finite number"]),
    ({"instances": [{"embeddings": "zeros"}]}, ["instance 0", "must be a list of 100 numbers"]),
    ({"instances": [{"z": [0] * NZ}, {"z": [0] * NZ}, {"image_bytes": {"b64": "!!!"}}]}, ["instance 2", "not valid base64"]),
    ({"instances": [{"image_bytes": {"b64": base64.b64encode(b"hello world").decode()}}]}, ["instance 0", "not a JPEG, PNG"]),
    ({"instances": [{"image_bytes": {"b64": base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()}}]},
     ["instance 0", "could not be used"]),
    ({"instances": [{"image_bytes": {"b64": png_b64_of(300, 300)}}]}, ["instance 0", "pixels"]),
    ({"instances": [{"image_bytes": "abc"}]}, ["instance 0", "image_bytes"]),
    ({"instances": [{"key": 5, "z": [0] * NZ}]}, ["instance 0", "'key' must be a string"]),
    ({"instances": [{"hello": 1}]}, ["instance 0", "needs 'embeddings'"]),
    ({"instances": [3]}, ["instance 0", "must be an object"]),
    ({"instances": []}, ["empty"]),
    ({"inputs": []}, ['{"instances": [...]}']),
])
def test_bad_instances_get_400_naming_the_instance_and_the_server_stays_up(body, words):
    c = client(max_pixels=256 * 256)
    r = c.post("/v1/models/generator:predict", json=body)
    assert r.status_code == 400
    msg = r.json()["error"]
    for w in words:
        assert w in msg, msg
    assert c.post("/v1/models/generator:predict", json={"instances": [{"z": [0] * NZ}]}).status_code == 200


def test_not_json_and_too_large_bodies():
    c = client(max_body_bytes=10_000)
    r = c.post("/v1/models/generator:predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    # NaN is not JSON, but Python's json.dumps writes it: the answer names the instance and the number
    nan = json.dumps({"instances": [{"z": [0] * NZ}, {"z": [0] * 7 + [float("nan")] + [0] * (NZ - 8)}]}).encode()
    r = c.post("/v1/models/generator:predict", content=nan)
    assert r.status_code == 400 and "instance 1: 'z'[7] is NaN" in r.json()["error"], r.json()
    big = json.dumps({"instances": [{"z": [0.123456] * NZ}] * 20}).encode()
    assert len(big) > 10_000
    r = c.post("/v1/models/generator:predict", content=big)
    assert r.status_code == 413 and "10000 bytes" in r.json()["error"]

    def chunks():                                  # no Content-Length: counted while streaming
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]
    r = c.post("/v1/models/generator:predict", content=chunks())
    assert r.status_code == 413


Z_REST = ", ".join(["0"] * (NZ - 1))      # a latent's last NZ - 1 numbers, after a hostile first one


def latent_body(first: str, key: str = '"k"') -> bytes:
    return f'{{"instances": [{{"z": [0, {Z_REST}]}}, {{"embeddings": [{first}, {Z_REST}], "key": {key}}}]}}'.encode()


@pytest.mark.parametrize("body,status,words", [
    # orjson stops at 1024 levels; after a NaN, Python's parser takes over and stops at its recursion limit
    (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, ["nested deeper than 1024 levels"]),
    (b'{"instances": [NaN, ' + b"[" * 5000 + b"]" * 5000 + b"]}", 400, ["nested too deeply"]),
    (latent_body("1" + "0" * 5000), 400, ["instance 1: 'embeddings'[0] is infinite", "not a finite number"]),
    (latent_body("1" + "0" * 400), 400, ["instance 1: 'embeddings'[0] is infinite", "not a finite number"]),
    (latent_body("-1e400"), 400, ["'embeddings'[0] is -infinite"]),
    (latent_body("1e39"), 400, ["'embeddings'[0] is 1e+39, beyond float32's range"]),
    (latent_body("1" + "0" * 39), 400, ["'embeddings'[0] is 1e+39, beyond float32's range"]),
    (latent_body("Infinity"), 400, ["'embeddings'[0] is infinite"]),
    (latent_body("null"), 400, ["'embeddings'[0] is null, not a finite number"]),
    (latent_body("[0.5]"), 400, ["'embeddings'[0] is a list, not a finite number"]),
    # numeric strings are refused on every path: the fast one (all strings) and the slow one (one string)
    (json.dumps({"instances": [{"z": ["0.5"] * NZ}]}).encode(), 400, ["'z'[0] is the string \"0.5\", not a"]),
    (json.dumps({"instances": [{"z": [0.5] * (NZ - 1) + ["1"]}]}).encode(), 400, [f"'z'[{NZ - 1}] is the string"]),
    (json.dumps({"instances": [{"z": [0.5] * (NZ - 1) + ["x" * 10_000]}]}).encode(), 400, ["xxxxx...\", not"]),
    (latent_body("0", key='"\\ud800"'), 400, ["instance 1: 'key' is not valid Unicode"]),   # 500 once: unwritable
    (latent_body("0", key="1" + "0" * 5000), 400, ["instance 1: 'key' must be a string, got infinite"]),
    (b"\xff\xfe{}", 400, ["body is not JSON"]),
    (json.dumps({"instances": [{"z": [0] * NZ}] * 257}).encode(), 413, ["257 instances; at most 256"]),
])
def test_malformed_bodies_get_400_naming_what_is_wrong_never_500(body, status, words):
    c = client()
    t0 = time.monotonic()
    r = c.post("/v1/models/generator:predict", content=body)
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    for w in words:
        assert w in msg, msg
    assert len(msg) < 300 and time.monotonic() - t0 < 10       # never the whole value; no slow parse
    assert c.post("/v1/models/generator:predict", json={"instances": [{"z": [0] * NZ}]}).status_code == 200


@pytest.mark.parametrize("query,words", [
    ("/sample?n=" + "1" * 5000, ["'n' must be an integer", "..."]),   # int() refuses over 4300 digits
    ("/sample?n=%C2%B2", ["'n' must be an integer"]),                  # '²' is a digit to str.isdigit, not int()
    ("/sample?seed=%201%20", ["'seed' must be an integer"]),
    ("/interpolate?t=nan", ["'t' must be a number in [0, 1]"]),
    ("/interpolate?t=" + "9" * 5000, ["'t' must be a number in [0, 1]", "..."]),
])
def test_malformed_queries_get_400(query, words):
    r = client().get(query)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert all(w in msg for w in words) and len(msg) < 200, msg


class Slow(torch.nn.Module):
    def __init__(self, G, seconds):
        super().__init__()
        self.G, self.seconds, self.config = G, seconds, G.config

    def forward(self, z):
        time.sleep(self.seconds)
        return self.G(z)


def test_slow_request_gets_504_and_the_next_one_is_answered():
    G, _ = tiny_models()
    c = client(G=Slow(G, 0.5), timeout_s=0.1)
    r = c.post("/v1/models/generator:predict", json={"instances": [{"z": [0] * NZ}]})
    assert r.status_code == 504 and "longer than 0.1 s" in r.json()["error"]
    c2 = client(G=Slow(G, 0.01), timeout_s=5)
    assert c2.post("/v1/models/generator:predict", json={"instances": [{"z": [0] * NZ}]}).status_code == 200


def test_every_time_limit_is_a_504():
    """/sample and /interpolate over the time limit answered 500 (their TimeoutError was not caught)."""
    G, _ = tiny_models()
    c = client(G=Slow(G, 0.5), timeout_s=0.1)
    for route in ("/sample?n=2", "/sample?n=1", "/interpolate?a=1&b=2&t=0.3"):
        r = c.get(route)
        assert r.status_code == 504 and "longer than 0.1 s" in r.json()["error"], (route, r.text)


def test_api_key_is_required_when_set():
    c = client(api_key="s3cret")
    body = {"instances": [{"z": [0] * NZ}]}
    assert c.post("/v1/models/generator:predict", json=body).status_code == 401
    assert c.post("/v1/models/generator:predict", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/v1/models/generator").status_code == 401
    for route in ("/sample?n=1", "/interpolate"):
        assert c.get(route).status_code == 401, route
    assert c.post("/v1/models/generator:predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/v1/models/generator", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200   # for load balancers
    page = c.get("/")                              # the page opens without the key, and asks for it
    assert page.status_code == 200 and 'id="key"' in page.text and "DCGAN_API_KEY" in page.text


def test_metadata_health_sample_interpolate_page():
    c = client()
    meta = c.get("/v1/models/generator").json()
    assert meta["name"] == "generator" and meta["ready"] is True and meta["nz"] == NZ and meta["encoder"] is True
    assert c.get("/healthz").json()["status"] == "ok"
    r = c.get("/sample?n=4&seed=3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert c.get("/sample?n=4&seed=3").content == r.content          # seeded
    assert c.get("/sample?n=4&seed=4").content != r.content
    one = np.array(Image.open(io.BytesIO(c.get("/sample?n=1&seed=3").content)))
    G, _ = tiny_models()
    assert np.array_equal(one, pictures.to_uint8(G(torch.from_numpy(runtime.noise(1, NZ, 3))))[0, 0])   # numpy seeds
    ends = [c.get(f"/interpolate?a=3&b=9&t={t}").content for t in (0, 0.5, 1)]
    assert ends[0] == c.get("/sample?n=1&seed=3").content and ends[2] == c.get("/sample?n=1&seed=9").content
    assert ends[1] not in (ends[0], ends[2])
    for bad in ("/sample?n=0", "/sample?n=abc", "/sample?seed=-1", "/interpolate?t=2", "/interpolate?a=x"):
        assert c.get(bad).status_code == 400, bad
    assert "<title>DCGAN generator</title>" in c.get("/").text


def test_concurrent_requests_are_batched_into_fewer_model_calls():
    G, E = tiny_models()
    s = Settings(max_batch=64, max_wait_ms=50)
    models = Models(G, dict(G.config), E, s)
    app = create_app(models, s)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            reqs = [ac.post("/v1/models/generator:predict", json={"instances": [{"z": [i / 10] * NZ, "key": str(i)}]})
                    for i in range(16)]
            return await asyncio.gather(*reqs)
    responses = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["predictions"][0]["key"] for r in responses] == [str(i) for i in range(16)]
    assert models.g_batcher.rows == 16 and models.g_batcher.calls <= 4
    # each got its own image: G(z_i), not a neighbour's
    imgs = [decode_png(r.json()["predictions"][0]["image_bytes"]["b64"]) for r in responses]
    want = pictures.to_uint8(G(torch.tensor([[i / 10] * NZ for i in range(16)])))[:, 0]
    assert all(np.array_equal(a, b) for a, b in zip(imgs, want))


def test_refinement_after_the_encoder_lowers_the_error():
    c0, c1 = client(invert_steps=0), client(invert_steps=30)
    body = {"instances": [{"image_bytes": {"b64": jpeg_b64(i)}} for i in range(3)]}
    e0 = [p["reconstruction_mse"] for p in c0.post("/v1/models/generator:predict", json=body).json()["predictions"]]
    e1 = [p["reconstruction_mse"] for p in c1.post("/v1/models/generator:predict", json=body).json()["predictions"]]
    assert all(b < a for a, b in zip(e0, e1))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_server_serves_exported_files(tmp_path, fmt):
    G, E = tiny_models()
    suffix = export.FORMATS[fmt]
    write = export.export_onnx if fmt == "onnx" else export.export_torchscript
    write(G, tmp_path / f"g{suffix}")
    write(E, tmp_path / f"e{suffix}")
    g_run, _, g_cfg = export.load_runnable(tmp_path / f"g{suffix}")
    e_run, _, _ = export.load_runnable(tmp_path / f"e{suffix}")
    s = Settings()
    c = TestClient(create_app(Models(g_run, g_cfg, e_run, s), s))
    z = [0.05 * (i % 7) for i in range(NZ)]
    r = c.post("/v1/models/generator:predict", json={"instances": [{"z": z}, {"image_bytes": {"b64": jpeg_b64()}}]})
    assert r.status_code == 200
    img, enc = r.json()["predictions"]
    eager = pictures.to_uint8(G(torch.tensor([z])))[0, 0]
    got = decode_png(img["image_bytes"]["b64"]).astype(int)
    assert np.abs(got - eager).max() <= 1       # float rounding may move a pixel by one level
    assert len(enc["embeddings"]) == NZ


def test_public_host_needs_an_api_key(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dcgan.serve", "--host", "0.0.0.0", "--model", "models/none.pt"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "DCGAN_API_KEY": ""})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "DCGAN_API_KEY" in r.stderr


def test_an_encoder_that_does_not_fit_the_generator_stops_the_server_with_one_line(tmp_path):
    G, _ = tiny_models()
    save(G, tmp_path / "g.pt")
    save(Encoder(32, 1, NZ + 1, 8), tmp_path / "e.pt")               # one latent too many
    r = subprocess.run([sys.executable, "-m", "dcgan.serve", "--model", str(tmp_path / "g.pt"),
                        "--encoder", str(tmp_path / "e.pt"), "--port", "0"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "e.pt" in r.stderr and f"nz {NZ + 1}" in r.stderr and f"generator (nz {NZ}," in r.stderr


def test_registry_version_and_stage_resolve_through_dvc(tmp_path):
    """A version tag and a stage tag name commits; the file comes from the DVC remote (the cache is emptied)."""
    from conftest import sh
    from dcgan.errors import UserError
    from dcgan.serve import registry

    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    sh("git init -q && dvc init -q && dvc remote add -d store " + str(remote), repo)
    (repo / "dvc.yaml").write_text("artifacts:\n  generator:\n    path: models/generator.pt\n    type: model\n")
    (repo / "models").mkdir()
    versions = {}
    for i, tag in enumerate(["v0.1.0", "v0.2.0"]):
        torch.manual_seed(i)
        save(Generator(32, 1, 16, 8).apply(init_weights), repo / "models/generator.pt")
        versions[tag] = (repo / "models/generator.pt").read_bytes()
        sh(f"dvc add -q models/generator.pt && dvc push -q && git add -A && git commit -qm {tag} "
           f"&& git tag -a generator@{tag} -m {tag}", repo)
    sh("git tag -a 'generator#prod#1' -m prod generator@v0.1.0^{}", repo)
    sh("rm -rf .dvc/cache models/generator.pt", repo)
    cache = tmp_path / "serve-cache"
    for spec, stage, want, label in (("generator@v0.2.0", None, "v0.2.0", "v0.2.0"),
                                     ("generator@v0.1.0", None, "v0.1.0", "v0.1.0"),
                                     ("generator", "prod", "v0.1.0", "prod:")):
        path, version = registry.resolve(spec, stage, repo, cache)
        assert path.read_bytes() == versions[want] and version.startswith(label)
    with pytest.raises(UserError, match="generator@v9.9.9 not found"):
        registry.resolve("generator@v9.9.9", None, repo, cache)
    with pytest.raises(UserError, match="needs an artifact name"):
        registry.resolve(str(tmp_path / "x.pt"), "prod", repo, cache)
    with pytest.raises(UserError, match="not found: give a file"):
        registry.resolve("models/missing.pt", None, repo, cache)
