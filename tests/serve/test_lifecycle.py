"""A server's life (dcgan/serve/lifecycle.py, GracefulServer and port() in dcgan/serve/__main__.py): live at once
but ready only once the loader (called in a thread at startup) has returned the models, model routes 503 naming
the loading until then; a loader that fails leaves its one-line reason in app.state.life.error and tells
on_failure; draining answers new requests 503 while the ones in flight finish; a real `python -m dcgan.serve`
given SIGTERM with a request half-sent answers new requests 503, finishes the held one with 200 and exits 0;
and the port comes from --port, else $PORT, else $AIP_HTTP_PORT, else 8000, with a bad value stopping the
server with exit code 2 and one line naming where it came from."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import ROOT, free_port
from dcgan.errors import UserError
from dcgan.model import save
from dcgan.serve import __main__ as serve_main
from dcgan.serve.app import Models, Settings, create_app
from serve.common import NZ, Gated, read_response, tiny_models

PREDICT = "/v1/models/generator:predict"
BODY = {"instances": [{"z": [0.1] * NZ, "key": "k"}]}
V2_BODY = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, NZ], "data": [0.1] * NZ}]}
SHUTTING_DOWN = "the server is shutting down: send the request to another replica"


def until(check, seconds: float = 10.0):
    """Poll `check()` until it returns something true (bounded); -> that value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.01)
    pytest.fail(f"not true within {seconds} s: {check}")


# --- loading ---------------------------------------------------------------------------------------------

def test_live_at_once_ready_and_serving_only_once_the_loader_returns():
    G, E = tiny_models()
    s = Settings()
    started, gate = threading.Event(), threading.Event()

    def loader():
        started.set()
        assert gate.wait(10), "the test never let the loader finish"
        return Models(G, dict(G.config), E, s)

    app = create_app(loader, s)
    assert not started.is_set()                # nothing loads before the app starts
    try:
        with TestClient(app) as c:             # runs the lifespan: the loader starts in its thread
            assert started.wait(10)
            r = c.get("/v2/health/live")
            assert r.status_code == 200 and r.json() == {"live": True}
            r = c.get("/v2/health/ready")
            assert r.status_code == 503 and r.json() == {"ready": False}
            assert c.get("/healthz").status_code == 503
            for method, path, body in (("POST", PREDICT, BODY), ("POST", "/v2/models/generator/infer", V2_BODY),
                                       ("GET", "/v2/models/generator/ready", None),
                                       ("GET", "/v1/models/generator", None), ("GET", "/sample?n=1", None)):
                r = c.request(method, path, json=body)
                assert r.status_code == 503, (path, r.text)
                assert r.json() == {"error": "the model is still loading"}, path
            assert not app.state.life.ready and app.state.life.error is None
            gate.set()
            until(lambda: c.get("/v2/health/ready").status_code == 200)
            assert c.get("/v2/health/ready").json() == {"ready": True}
            r = c.post(PREDICT, json=BODY)
            assert r.status_code == 200 and r.json()["predictions"][0]["key"] == "k"
            assert c.post("/v2/models/generator/infer", json=V2_BODY).status_code == 200
            assert c.get("/v2/models/encoder/ready").json() == {"name": "encoder", "ready": True}
            # the loaded models' batchers are watched by the metrics
            assert 'dcgan_batch_rows_count{model="generator"} 2.0' in c.get("/metrics").text
    finally:
        gate.set()


@pytest.mark.parametrize("exc, message", [
    (UserError("model file 'missing.pt' not found"), "model file 'missing.pt' not found"),
    (RuntimeError(), "RuntimeError"),          # no message: the exception's name
])
def test_a_loader_that_fails_leaves_its_reason_and_tells_on_failure(exc, message):
    def loader():
        raise exc
    app = create_app(loader, Settings())
    failed, told = threading.Event(), []
    app.state.life.on_failure = lambda why: (told.append(why), failed.set())   # GracefulServer exits on it
    with TestClient(app) as c:
        assert failed.wait(10)
        assert app.state.life.error == message and told == [message]
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        r = c.post(PREDICT, json=BODY)
        assert r.status_code == 503 and r.json() == {"error": "the model failed to load"}


# --- draining, in process ---------------------------------------------------------------------------------


def test_draining_refuses_new_requests_and_lets_those_in_flight_finish():
    G, E = tiny_models()
    gated = Gated(G)
    s = Settings(max_wait_ms=0)
    app = create_app(Models(gated, dict(G.config), E, s), s)
    life = app.state.life

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            try:
                held = asyncio.create_task(ac.post(PREDICT, json=BODY))
                assert await asyncio.to_thread(gated.entered.wait, 10)
                assert life.in_flight == 1
                life.draining = True                          # what GracefulServer does on SIGTERM
                refused = [await ac.request(m, p, json=b) for m, p, b in (
                    ("POST", PREDICT, BODY), ("POST", "/v2/models/generator/infer", V2_BODY),
                    ("GET", "/v1/models/generator", None))]
                assert life.in_flight == 1                    # the refused ones were never counted
                # the probes pass: liveness stays 200 (the process is fine), readiness says 503 itself
                probes = {p: await ac.get(p) for p in ("/v2/health/live", "/v2/health/ready", "/healthz")}
            finally:
                gated.release.set()
            return await held, refused, probes
    held, refused, probes = asyncio.run(go())
    assert probes["/v2/health/live"].status_code == 200 and probes["/v2/health/live"].json() == {"live": True}
    assert probes["/v2/health/ready"].status_code == 503 and probes["/v2/health/ready"].json() == {"ready": False}
    assert probes["/healthz"].status_code == 503
    assert held.status_code == 200 and held.json()["predictions"][0]["key"] == "k"
    for r in refused:
        assert r.status_code == 503 and r.json() == {"error": SHUTTING_DOWN}, r.request.url
        assert r.headers["connection"] == "close"
    assert life.in_flight == 0 and not life.ready


# --- a real server and SIGTERM ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    G, E = tiny_models()
    d = tmp_path_factory.mktemp("models")
    save(G, d / "G.pt")
    save(E, d / "E.pt")
    return d / "G.pt", d / "E.pt"


def server_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "AIP_HTTP_PORT", "DCGAN_API_KEY")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def metric(url: str, name: str) -> float | None:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_sigterm_drains_a_real_server_then_it_exits_0(model_files):
    G_pt, E_pt = model_files
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "dcgan.serve", "--model", str(G_pt), "--encoder", str(E_pt),
                             "--port", str(port), "--max-wait-ms", "0"],
                            cwd=ROOT, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sock = None
    try:
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"the server exited {proc.returncode}: {proc.stdout.read()}")
            try:
                return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False
        until(ready, 60)
        # a request whose body is half sent: the app has it (counted in flight) and waits for the rest
        body = json.dumps({"instances": [{"z": [0.1] * NZ, "key": "held"}]}).encode()
        head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head + body[:len(body) // 2])
        until(lambda: metric(url, "dcgan_requests_in_flight") == 2)    # the held one and the scrape
        proc.send_signal(signal.SIGTERM)
        # readiness goes 503 (a load balancer stops sending), and so does every new request
        r = until(lambda: (r := httpx.get(url + "/v2/health/ready", timeout=5)).status_code == 503 and r)
        assert r.json() == {"ready": False}
        assert httpx.get(url + "/v2/health/live", timeout=5).status_code == 200
        r = httpx.post(url + PREDICT, json=BODY, timeout=5)
        assert r.status_code == 503 and r.json() == {"error": SHUTTING_DOWN}
        assert proc.poll() is None                                     # still draining: one is in flight
        sock.sendall(body[len(body) // 2:])
        status, headers, answer = read_response(sock)
        assert status == 200, answer
        [prediction] = json.loads(answer)["predictions"]
        assert prediction["key"] == "held" and prediction["image_bytes"]["b64"]
        assert proc.wait(10) == 0
        output = proc.stdout.read()
        assert "Traceback" not in output, output
    finally:
        if sock is not None:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --- the port ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_port_env(monkeypatch):
    for name in ("PORT", "AIP_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def port_of(*argv: str) -> int:
    return serve_main.port(serve_main.parser().parse_args(list(argv)))


def test_port_from_the_flag_else_port_else_aip_http_port_else_8000(no_port_env):
    assert port_of() == 8000
    no_port_env.setenv("AIP_HTTP_PORT", "9001")
    assert port_of() == 9001                          # Vertex AI's
    no_port_env.setenv("PORT", "9002")
    assert port_of() == 9002                          # Cloud Run's first
    assert port_of("--port", "9003") == 9003          # the flag over both
    assert port_of("--port", "0") == 0                # any free port
    no_port_env.setenv("PORT", "")
    assert port_of() == 9001                          # empty: as if unset


@pytest.mark.parametrize("name, value", [("PORT", "abc"), ("PORT", "0"), ("PORT", "65536"), ("PORT", "-1"),
                                         ("PORT", " 80"), ("PORT", "٨٠"), ("AIP_HTTP_PORT", "http"),
                                         ("PORT", "9" * 5000), ("PORT", "000080")])
def test_a_bad_port_variable_is_a_user_error_naming_it(no_port_env, name, value):
    no_port_env.setenv(name, value)
    with pytest.raises(UserError, match=rf"^\${name} must be a port number \(1-65535\), got "):
        port_of()
    assert port_of("--port", "8080") == 8080          # the flag needs no variable


@pytest.mark.parametrize("argv", [["--port", "65536"], ["--port", "-1"]])
def test_a_port_flag_out_of_range_is_a_user_error(no_port_env, argv):
    with pytest.raises(UserError, match=r"^--port must be a port number"):
        port_of(*argv)


@pytest.mark.parametrize("env, argv, named", [({"PORT": "abc"}, [], "$PORT"),
                                             ({"AIP_HTTP_PORT": "8o8o"}, [], "$AIP_HTTP_PORT"),
                                             ({}, ["--port", "70000"], "--port")])
def test_a_bad_port_stops_the_server_with_exit_2_and_one_line(model_files, env, argv, named):
    G_pt, E_pt = model_files
    r = subprocess.run([sys.executable, "-m", "dcgan.serve", "--model", str(G_pt), "--encoder", str(E_pt), *argv],
                       cwd=ROOT, env=server_env(**env), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: " + named), r.stderr
    assert r.stdout == ""                            # stopped before the port was bound
