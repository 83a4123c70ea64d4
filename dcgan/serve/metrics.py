"""Prometheus metrics at GET /metrics, through prometheus-client (the Prometheus project's own library).

    dcgan_requests_total{route, method, status}   requests answered (route: the route's template, never the
                                                   raw path, so a scan of random paths adds no series)
    dcgan_request_seconds{route}                  latency, from the request's arrival to its last byte
    dcgan_requests_in_flight                      requests being answered now
    dcgan_batch_rows{model}                       rows per model call (what batching achieved)
    dcgan_model_seconds{model}                    time of each model call
    dcgan_queue_rows{model}                       rows waiting for a model call now

Each app has a registry of its own (tests build many apps in one process). What uvicorn refuses itself never
reaches the app and is not counted: its 503s over --limit-concurrency, and the 400/504 of a request head
that is too large or too slow (docs/serving.md#limits).
"""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

METHODS = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"}   # any other: 'other' (bounded labels)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, in_flight):
        """in_flight: a function giving the requests in flight (the drain's count: one count, not two)."""
        r = self.registry = CollectorRegistry()
        self.requests = Counter("dcgan_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.latency = Histogram("dcgan_request_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("dcgan_requests_in_flight", "HTTP requests being answered", registry=r)
        self.in_flight.set_function(in_flight)
        self.batch_rows = Histogram("dcgan_batch_rows", "rows per model call", ["model"], buckets=ROWS_BUCKETS,
                                    registry=r)
        self.model_seconds = Histogram("dcgan_model_seconds", "time of each model call", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_rows = Gauge("dcgan_queue_rows", "rows waiting for a model call", ["model"], registry=r)

    def watch(self, model: str, batcher) -> None:
        """Observe a Batcher's calls and queue."""
        rows, seconds = self.batch_rows.labels(model), self.model_seconds.labels(model)

        def on_call(n: int, s: float) -> None:
            rows.observe(n)
            seconds.observe(s)
        batcher.on_call = on_call
        self.queue_rows.labels(model).set_function(lambda: batcher.queued)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Observe:
    """ASGI middleware: each HTTP request's route, status and latency. The route is found by matching the
    app's route templates (401s and 503s that never reach a route are labelled by it too); no match: 'other'."""

    def __init__(self, app, metrics: ServerMetrics, routes):
        self.app, self.m, self.routes = app, metrics, routes

    def route(self, path: str) -> str:
        for r in self.routes():
            regex = getattr(r, "path_regex", None)
            if regex is not None and regex.match(path):
                return r.path
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self.route(scope["path"])
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.m.requests.labels(route, method, str(status[0])).inc()
            self.m.latency.labels(route).observe(time.perf_counter() - t0)
