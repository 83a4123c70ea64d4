"""The serving image (make image): built with podman from tiny models, run as a container, called as a client.

Both request shapes of V1, the V2 routes, bad bodies and the API key, against the container; its images and
latents equal the in-process server's (torch, the same .pt files) within ONNX tolerance; no torch inside; SIGTERM
drains and the container exits 0. Skips with the reason where podman is missing or cannot run a container, or
where the base or the wheels cannot be had (no Debian archive or package index reachable).
"""
import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import ROOT, free_port
from dcgan.archs.dcgan import Encoder, Generator, init_weights
from dcgan.model import load, save
from dcgan.serve import container
from dcgan.serve.app import Models, Settings, create_app
from serve.common import read_response

NZ, SIZE, KEY = 16, 32, "container-test-key"
TAG = "localhost/dcgan-serve:pytest"
pytestmark = pytest.mark.skipif(shutil.which("podman") is None,
                                reason="podman is not installed: apt-get install podman runc mmdebstrap")


def podman(*args, check=True, **kw) -> subprocess.CompletedProcess:
    engine = container.engine_command("podman")
    cmd = [*engine, *args]
    if args[0] == "run":   # the ulimits go to `run`, after the subcommand
        cmd = [*engine, "run", *container.PODMAN_FLAGS, *args[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("image-models")
    torch.manual_seed(3)
    save(Generator(SIZE, 1, NZ, 8).apply(init_weights), d / "g.pt")
    save(Encoder(SIZE, 1, NZ, 8).apply(init_weights), d / "e.pt")
    return d / "g.pt", d / "e.pt"


@pytest.fixture(scope="module")
def base():
    """The default base, made with mmdebstrap when missing; skips where that or running a container cannot be."""
    from dcgan.errors import UserError

    try:
        container.ensure_base(container.LOCAL_BASE, container.engine_command("podman"))
    except UserError as e:   # no mmdebstrap, no Debian archive reachable
        pytest.skip(f"no base image here: {e}")
    r = podman("run", "--rm", "--network", "host", container.LOCAL_BASE, "python3", "-c", "print(1)", check=False)
    if r.returncode != 0:    # rootless without user namespaces, nested without cgroups, ...
        pytest.skip(f"podman cannot run a container here: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return container.LOCAL_BASE


@pytest.fixture(scope="module")
def image(models, base):
    """The image built from the tiny models, as `make image MODEL=... ENCODER=...` builds it."""
    g, e = models
    r = subprocess.run([sys.executable, "-m", "dcgan.serve.container", "--model", str(g), "--encoder", str(e),
                        "--tag", TAG], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    if r.returncode != 0 and ("pip download" in out or "mmdebstrap failed" in out):
        pytest.skip(f"the image's base or wheels could not be had here: {out.strip().splitlines()[-1][:300]}")
    assert r.returncode == 0, out[-3000:]
    assert f"built {TAG}" in r.stdout
    yield TAG
    podman("rmi", "-f", TAG, check=False)


def start(image: str, port: int, name: str, **env) -> None:
    env = {"PORT": str(port), "DCGAN_API_KEY": KEY, **env}
    podman("run", "-d", "--name", name, "--network", "host", *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
           image)


def wait_ready(url: str, name: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
        if state == "false":
            pytest.fail(f"the container exited: {podman('logs', name, check=False).stderr[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"the container was not ready within {seconds} s: {podman('logs', name, check=False).stderr[-2000:]}")


@contextmanager
def running(image: str, what: str):
    """The image as a container on a free port, ready -> (url, port, name); removed when the block ends."""
    port, name = free_port(), f"dcgan-pytest-{what}-{os.getpid()}"
    try:
        start(image, port, name)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, name)
        yield url, port, name
    finally:
        podman("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def served(image):
    """(url of the running container, headers with the key)."""
    with running(image, "client") as (url, _, _):
        yield url, {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def local(models):
    """The in-process server over the same .pt files, run by torch (what `make serve` serves)."""
    g, e = models
    G, E = load(g), load(e, kind="encoder")
    s = Settings()
    return TestClient(create_app(Models(G, dict(G.config), E, s), s))


def png_of(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=int)


def digit_png(seed: int) -> str:
    rng = np.random.default_rng(seed)
    img = (rng.random((SIZE, SIZE)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_the_image_runs_without_torch_and_is_lean(image):
    r = podman("run", "--rm", "--entrypoint", "python3", image, "-c",
               "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)")
    assert r.stdout.split() == ["True", "True"]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size < 450e6, f"{size / 1e6:.0f} MB: what made the image grow? (torch alone is over 700 MB)"


def test_v1_both_request_shapes_equal_the_in_process_server(served, local):
    url, auth = served
    rng = np.random.default_rng(0)
    body = {"instances": [{"embeddings": [round(float(v), 4) for v in rng.standard_normal(NZ)], "key": "a"},
                          {"z": [0.1] * NZ, "key": "b"},
                          {"image_bytes": {"b64": digit_png(1)}, "key": "c"}]}
    got = httpx.post(url + "/v1/models/generator:predict", json=body, headers=auth, timeout=30)
    want = local.post("/v1/models/generator:predict", json=body)
    assert got.status_code == want.status_code == 200, got.text
    g, w = got.json()["predictions"], want.json()["predictions"]
    assert [p["key"] for p in g] == ["a", "b", "c"]
    for i in (0, 1):   # ONNX and torch may round a pixel to the next level, no more
        assert np.abs(png_of(g[i]["image_bytes"]["b64"]) - png_of(w[i]["image_bytes"]["b64"])).max() <= 1
    np.testing.assert_allclose(g[2]["embeddings"], w[2]["embeddings"], atol=1e-4)
    assert g[2]["reconstruction_mse"] == pytest.approx(w[2]["reconstruction_mse"], rel=1e-3, abs=1e-5)
    sample = httpx.get(url + "/sample?n=1&seed=3", headers=auth, timeout=30)
    assert np.abs(np.asarray(Image.open(io.BytesIO(sample.content)), dtype=int)
                  - np.asarray(Image.open(io.BytesIO(local.get("/sample?n=1&seed=3").content)), dtype=int)).max() <= 1


def test_v2_routes_and_tensors_equal_the_in_process_server(served, local):
    url, auth = served
    assert httpx.get(url + "/v2/health/live", timeout=5).json() == {"live": True}      # open: no key
    assert httpx.get(url + "/v2/health/ready", timeout=5).json() == {"ready": True}
    meta = httpx.get(url + "/v2/models/generator", headers=auth, timeout=5).json()
    assert meta["platform"] == "onnxruntime_onnx" and meta["inputs"] == [
        {"name": "z", "datatype": "FP32", "shape": [-1, NZ]}]
    assert httpx.get(url + "/v2/models/encoder/ready", headers=auth, timeout=5).json()["ready"] is True
    z = np.random.default_rng(1).standard_normal((3, NZ)).astype(np.float32)
    req = {"id": "r1", "inputs": [{"name": "z", "datatype": "FP32", "shape": [3, NZ], "data": z.ravel().tolist()}]}
    got = httpx.post(url + "/v2/models/generator/infer", json=req, headers=auth, timeout=30).json()
    want = local.post("/v2/models/generator/infer", json=req).json()
    assert got["id"] == "r1" and [o["name"] for o in got["outputs"]] == ["image", "image_uint8"]
    fp, u8 = got["outputs"]
    assert fp["shape"] == [3, 1, SIZE, SIZE] and u8["datatype"] == "UINT8"
    np.testing.assert_allclose(fp["data"], want["outputs"][0]["data"], atol=1e-4)
    assert np.abs(np.array(u8["data"]) - np.array(want["outputs"][1]["data"])).max() <= 1
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(digit_png(2)))), dtype=np.uint8)
    enc = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, SIZE, SIZE],
                       "data": pixels.ravel().tolist()}], "outputs": [{"name": "z"}]}
    got = httpx.post(url + "/v2/models/encoder/infer", json=enc, headers=auth, timeout=30).json()
    want = local.post("/v2/models/encoder/infer", json=enc).json()
    assert [o["name"] for o in got["outputs"]] == ["z"] and got["outputs"][0]["shape"] == [1, NZ]
    np.testing.assert_allclose(got["outputs"][0]["data"], want["outputs"][0]["data"], atol=1e-4)


@pytest.mark.parametrize("route, body", [
    ("/v1/models/generator:predict", b"not json"),
    ("/v1/models/generator:predict", b'{"instances": [{"z": [1, 2]}]}'),
    ("/v1/models/generator:predict", b'{"instances": [{"image_bytes": {"b64": "@@"}}]}'),
    ("/v2/models/generator/infer", b'{"inputs": [{"name": "z", "datatype": "INT8", "shape": [1, 16], "data": []}]}'),
    ("/v2/models/generator/infer", b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 3], "data": [1,2,3]}]}'),
    ("/v2/models/nope/infer", b'{"inputs": []}'),
])
def test_bad_bodies_get_the_same_one_line_errors_as_in_process(served, local, route, body):
    url, auth = served
    got = httpx.post(url + route, content=body, headers={**auth, "content-type": "application/json"}, timeout=10)
    want = local.post(route, content=body, headers={"content-type": "application/json"})
    assert got.status_code == want.status_code and got.status_code in (400, 404)
    assert got.json() == want.json() and "\n" not in got.json()["error"]


def test_the_key_is_required_and_metrics_count_by_route(served):
    url, auth = served
    assert httpx.post(url + "/v2/models/generator/infer", json={"inputs": []}, timeout=5).status_code == 401
    assert httpx.get(url + "/metrics", timeout=5).status_code == 401
    text = httpx.get(url + "/metrics", headers=auth, timeout=5).text
    assert 'dcgan_requests_total{method="POST",route="/v2/models/{name}/infer",status="401"}' in text
    assert "dcgan_batch_rows_count" in text and "dcgan_queue_rows" in text


def test_sigterm_finishes_what_is_in_flight_and_the_container_exits_0(image):
    """`podman stop` sends SIGTERM: a request whose body is half sent still gets 200, then the exit code is 0."""
    with running(image, "stop") as (url, port, name):
        body = ('{"instances": [{"z": [%s], "key": "held"}]}' % ", ".join(["0.5"] * NZ)).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"POST /v1/models/generator:predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body[:10])
        deadline = time.monotonic() + 30
        while "dcgan_requests_in_flight 2.0" not in httpx.get(url + "/metrics", headers={"X-API-Key": KEY}).text:
            assert time.monotonic() < deadline, "the held request never reached the app"
            time.sleep(0.05)
        stop = subprocess.Popen([*container.engine_command("podman"), "stop", "-t", "30", name],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while httpx.get(url + "/v2/health/ready", timeout=5).status_code != 503:   # draining
            assert time.monotonic() < deadline and stop.poll() is None
            time.sleep(0.05)
        refused = httpx.get(url + "/v1/models/generator", headers={"X-API-Key": KEY}, timeout=5)
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        sock.sendall(body[10:])
        status, _, answer = read_response(sock)
        assert status == 200 and b'"held"' in answer, answer[:300]
        assert stop.wait(60) == 0
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"


def test_an_image_without_an_encoder_serves_the_generator_and_says_so(models, base):
    g, _ = models
    tag = TAG + "-no-encoder"
    r = subprocess.run([sys.executable, "-m", "dcgan.serve.container", "--model", str(g), "--encoder", "none",
                        "--tag", tag], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    try:
        with running(tag, "noenc") as (url, _, name):
            auth = {"X-API-Key": KEY}
            assert httpx.get(url + "/v1/models/generator", headers=auth).json()["encoder"] is False
            r = httpx.get(url + "/v2/models/encoder", headers=auth)
            assert r.status_code == 404 and "this server has ['generator']" in r.json()["error"]
            logs = podman("logs", name).stderr
            assert "not found" not in logs, logs          # no misleading "encoder not found" line
    finally:
        podman("rmi", "-f", tag, check=False)
