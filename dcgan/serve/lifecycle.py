"""A server's life: loading (live, not ready), serving (ready), draining (after SIGTERM), as the engines that
run containers expect.

- The models load in a thread after the port is bound, so that liveness answers at once and readiness
  only once they are loaded (`/v2/health/ready` is 503 until then, and model routes answer 503).
- On SIGTERM (Kubernetes, Cloud Run and Vertex AI stop a container so) the server drains: requests
  already in flight finish, new ones get 503 (readiness too, so a load balancer stops sending), and the
  process exits once none is left. `Drain` is the ASGI middleware that counts requests and refuses them.
"""
from __future__ import annotations

import threading
from typing import Callable

import orjson


class NotReady(Exception):
    """A model route asked for the models before they were loaded."""


class Lifecycle:
    def __init__(self, models=None):
        self._models = models
        self.error: str | None = None         # why loading failed (the server then exits with it)
        self.draining = False
        self.in_flight = 0
        self.on_failure: Callable[[str], None] | None = None

    @property
    def ready(self) -> bool:
        return self._models is not None and not self.draining

    @property
    def models(self):
        if self._models is None:
            raise NotReady("the model is still loading" if self.error is None else "the model failed to load")
        return self._models

    def load_in_background(self, load: Callable[[], object]) -> threading.Thread:
        """Run `load` in a thread; its result becomes the models, its exception (one line) `error`."""
        def run():
            try:
                self._models = load()
            except Exception as e:  # noqa: BLE001 - a UserError's line, or the exception's name
                self.error = str(e) or type(e).__name__
                if self.on_failure is not None:
                    self.on_failure(self.error)
        thread = threading.Thread(target=run, name="load-models", daemon=True)
        thread.start()
        return thread


async def _refuse(send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Drain:
    """Counts the requests in flight; while draining answers new ones 503 (the connection then closes), but
    for the health probes: liveness stays 200 and readiness answers 503 itself."""

    def __init__(self, app, life: Lifecycle, probes: frozenset = frozenset()):
        self.app, self.life, self.probes = app, life, probes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.life.draining and scope["path"] not in self.probes:
            return await _refuse(send, 503, "the server is shutting down: send the request to another replica")
        self.life.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.life.in_flight -= 1
