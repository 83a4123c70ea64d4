"""Prometheus metrics at GET /metrics (dcgan/serve/metrics.py), read back with prometheus_client's own parser:
requests counted by route template, method and status (a 400, a 401, a 404 and a 405 included; an unknown
path is "other", never the raw path, and an unknown model name is the template's {name}), one latency
observation per request, rows and time of each model call per model (the row sums and call counts that
batching made), the rows waiting for a model call (a gauge: 0 when idle, the waiting rows while the model
thread is busy) and the requests in flight."""
import asyncio

import httpx
import numpy as np
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dcgan.serve.app import Models, Settings, create_app
from serve.common import NZ, SIZE, Gated, tiny_models

PREDICT = "/v1/models/generator:predict"
V2_INFER = "/v2/models/{name}/infer"


def samples(text: str) -> list:
    """Every sample of a text exposition, as (name, labels, value)."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list, name: str, **labels) -> float:
    """The one sample of `name` whose labels include `labels`."""
    match = [v for n, lab, v in found if n == name and labels.items() <= lab.items()]
    assert len(match) == 1, (name, labels, match)
    return match[0]


def scrape(c, **headers) -> list:
    r = c.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def latent_rows(n: int) -> list:
    return np.random.default_rng(n).standard_normal((n, NZ)).round(4).tolist()


def test_requests_latency_and_model_calls_are_counted_by_route_template():
    G, E = tiny_models()
    s = Settings(api_key="k", max_batch=2, max_wait_ms=0)
    models = Models(G, dict(G.config), E, s)
    c = TestClient(create_app(models, s))
    key = {"X-API-Key": "k"}
    calls = [   # (method, path, body, headers, status)
        ("POST", PREDICT, {"instances": [{"z": z} for z in latent_rows(3)]}, key, 200),   # 3 rows: calls of 2 + 1
        ("POST", PREDICT, {"instances": []}, key, 400),
        ("GET", PREDICT, None, key, 405),
        ("POST", "/v2/models/generator/infer",
         {"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, NZ], "data": latent_rows(2)}]}, key, 200),
        ("POST", "/v2/models/generator/infer",
         {"inputs": [{"name": "z", "datatype": "INT8", "shape": [1, NZ], "data": [0] * NZ}]}, key, 400),
        ("POST", "/v2/models/encoder/infer",
         {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, SIZE, SIZE],
                      "data": [7] * SIZE * SIZE}]}, key, 200),
        ("POST", "/v2/models/random-name-4711/infer", {"inputs": []}, key, 404),
        ("GET", "/nope/123", None, key, 404),
        ("GET", "/v2/models/generator", None, {}, 401),
        ("POST", "/v2/models/generator/infer", {"inputs": []}, {"X-API-Key": "wrong"}, 401),
        ("GET", "/v2/health/ready", None, {}, 200),
    ]
    for method, path, body, headers, status in calls:
        r = c.request(method, path, json=body, headers=headers)
        assert r.status_code == status, (method, path, r.text)
        if status != 200:   # every error in the protocols' shape, routing's 404 and 405 too
            assert list(r.json()) == ["error"] and "\n" not in r.json()["error"], (method, path, r.text)
    found = scrape(c, **key)
    requests = {(lab["route"], lab["method"], lab["status"]): v for n, lab, v in found if n == "dcgan_requests_total"}
    assert requests == {
        (PREDICT, "POST", "200"): 1, (PREDICT, "POST", "400"): 1, (PREDICT, "GET", "405"): 1,
        (V2_INFER, "POST", "200"): 2, (V2_INFER, "POST", "400"): 1, (V2_INFER, "POST", "404"): 1,
        (V2_INFER, "POST", "401"): 1, ("other", "GET", "404"): 1, ("/v2/models/{name}", "GET", "401"): 1,
        ("/v2/health/ready", "GET", "200"): 1,
    }   # the scrape itself is counted once it is answered
    for route in {route for route, _, _ in requests}:
        count = sum(v for (r, _, _), v in requests.items() if r == route)
        assert value(found, "dcgan_request_seconds_count", route=route) == count, route
        assert value(found, "dcgan_request_seconds_bucket", route=route, le="+Inf") == count, route
        assert value(found, "dcgan_request_seconds_sum", route=route) > 0, route
    # rows per model call: V1's 3 rows in calls of 2 and 1 (max_batch 2), V2's 2 rows in one; the encoder's 1
    assert models.g_batcher.calls == 3
    assert value(found, "dcgan_batch_rows_count", model="generator") == 3
    assert value(found, "dcgan_batch_rows_sum", model="generator") == 5
    assert value(found, "dcgan_batch_rows_bucket", model="generator", le="1.0") == 1
    assert value(found, "dcgan_batch_rows_bucket", model="generator", le="2.0") == 3
    assert value(found, "dcgan_batch_rows_count", model="encoder") == 1
    assert value(found, "dcgan_batch_rows_sum", model="encoder") == 1
    assert value(found, "dcgan_model_seconds_count", model="generator") == 3
    assert value(found, "dcgan_model_seconds_count", model="encoder") == 1
    assert value(found, "dcgan_model_seconds_sum", model="generator") > 0
    assert value(found, "dcgan_queue_rows", model="generator") == 0      # idle
    assert value(found, "dcgan_queue_rows", model="encoder") == 0
    assert value(found, "dcgan_requests_in_flight") == 1                 # the scrape itself
    again = scrape(c, **key)
    assert value(again, "dcgan_requests_total", route="/metrics", method="GET", status="200") == 1
    assert c.get("/metrics").status_code == 401      # the API key guards the metrics too


def test_metrics_without_an_api_key_and_before_any_model_call():
    G, E = tiny_models()
    s = Settings()
    c = TestClient(create_app(Models(G, dict(G.config), E, s), s))
    found = scrape(c)
    assert not [n for n, _, _ in found if n == "dcgan_requests_total"]   # nothing answered yet
    for model in ("generator", "encoder"):
        assert value(found, "dcgan_batch_rows_count", model=model) == 0
        assert value(found, "dcgan_queue_rows", model=model) == 0


def test_queue_rows_count_the_rows_waiting_while_the_model_thread_is_busy():
    G, E = tiny_models()
    gated = Gated(G)
    s = Settings(max_batch=64, max_wait_ms=0, model_threads=1)
    models = Models(gated, dict(G.config), E, s)
    app = create_app(models, s)

    def body(n):
        return {"instances": [{"z": z} for z in latent_rows(n)]}

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            async def metrics():
                return samples((await ac.get("/metrics")).text)
            try:
                first = asyncio.create_task(ac.post(PREDICT, json=body(1)))
                assert await asyncio.to_thread(gated.entered.wait, 10)     # the one model thread is busy
                second = asyncio.create_task(ac.post(PREDICT, json=body(3)))
                for _ in range(1000):     # bounded: the second request's rows reach the queue (parsed in a thread)
                    busy = await metrics()
                    if value(busy, "dcgan_queue_rows", model="generator"):
                        break
                    await asyncio.sleep(0.005)
                assert value(busy, "dcgan_queue_rows", model="generator") == 3
                assert value(busy, "dcgan_requests_in_flight") == 3           # two predictions and the scrape
                assert value(busy, "dcgan_batch_rows_count", model="generator") == 0   # none finished yet
            finally:
                gated.release.set()
            responses = await asyncio.gather(first, second)
            return responses, await metrics()
    responses, idle = asyncio.run(go())
    assert [r.status_code for r in responses] == [200, 200]
    assert value(idle, "dcgan_queue_rows", model="generator") == 0
    assert value(idle, "dcgan_batch_rows_count", model="generator") == 2
    assert value(idle, "dcgan_batch_rows_sum", model="generator") == 4
    assert value(idle, "dcgan_requests_in_flight") == 1
