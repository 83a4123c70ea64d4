"""`python -m dcgan.serve` (`make serve`): serve the generator (and the encoder) over HTTP.

  python -m dcgan.serve                                   # models/published/generator.pt + its encoder
  python -m dcgan.serve --model generator@v0.1.0          # a registry version (git tag), fetched via DVC
  python -m dcgan.serve --model generator --stage prod    # what the registry puts in prod
  python -m dcgan.serve --model models/export/generator.onnx --encoder models/export/encoder.onnx
  DCGAN_API_KEY=... python -m dcgan.serve --host 0.0.0.0  # beyond loopback an API key is required
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from http import HTTPStatus
from pathlib import Path

import orjson
import uvicorn

from .. import cli
from ..cpus import usable_cpus
from ..errors import UserError
from ..shapes import encoder_misfit
from . import registry, runtime
from .app import Models, Settings, create_app

API_KEY_ENV = "DCGAN_API_KEY"
PORT_ENV = ("PORT", "AIP_HTTP_PORT")
# What the serving image bakes in (deploy/Containerfile): the model files and their versions
MODEL_ENV, ENCODER_ENV = "DCGAN_MODEL", "DCGAN_ENCODER"
VERSION_ENV, ENCODER_VERSION_ENV = "DCGAN_MODEL_VERSION", "DCGAN_ENCODER_VERSION"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(path: Path, spec: str, want: str, threads: int | None = None):
    """A model file -> (net, config); .onnx without torch (runtime.load)."""
    try:
        model, kind, config = runtime.load(path, threads=threads)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if kind != want:
        raise UserError(f"'{spec}' holds a {kind}, not a {want}")
    return model, config


def invert_steps(args) -> int:
    """--invert-steps, else params.yaml's invert_steps (as `generate invert`), else 0."""
    if args.invert_steps is not None:
        if args.invert_steps < 0:
            raise UserError(f"--invert-steps must be >= 0, got {args.invert_steps}")
        return args.invert_steps
    from .. import params
    if Path(params.PARAMS_FILE).is_file():
        return params.validate(params.read(params.PARAMS_FILE), ["invert_steps"])["invert_steps"]
    return 0


def settings(args) -> Settings:
    """The server's settings from the command line and the environment; UserError (one line) for a bad one."""
    args.invert_steps = invert_steps(args)
    cores = usable_cpus()     # affinity and cgroup quota; os.sched_getaffinity alone is Linux-only
    model_threads = args.model_threads or min(2, cores)
    parse_threads = args.parse_threads or min(cores, 8)   # each decodes one image at a time: bounded memory
    s = Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes,
                 model_threads=model_threads, torch_threads=max(1, cores // model_threads),
                 parse_threads=parse_threads, max_pixels=args.max_image_pixels,
                 max_request_pixels=args.max_request_pixels, timeout_s=args.timeout_s,
                 body_timeout_s=args.body_timeout_s, invert_steps=args.invert_steps,
                 api_key=os.environ.get(API_KEY_ENV) or None)
    if not is_loopback(args.host) and not s.api_key:
        raise UserError(f"--host {args.host} is reachable from other machines: set {API_KEY_ENV} (a secret, never "
                        "in git) so that requests without it get 401")
    return s


def model_files(args, s: Settings) -> tuple:
    """-> (generator spec, file; encoder spec, file or None), fetched from the registry when named so; sets
    the versions in s. Quick: runs before the port is bound, so a wrong name stops the server at once."""
    g_spec = args.model or registry.default_generator()
    g_path, s.version = registry.resolve(g_spec, args.stage, args.repo)
    if args.model_version:
        s.version = args.model_version
    s.extra["model_file"] = str(g_path)
    enc_spec = registry.encoder_for(g_path, args.encoder)
    e_path = None
    if enc_spec != "none":
        if Path(enc_spec).exists() or registry.is_artifact_spec(enc_spec, None):
            e_path, s.extra["encoder_version"] = registry.resolve(enc_spec, None, args.repo)
            if args.encoder_version:
                s.extra["encoder_version"] = args.encoder_version
        else:
            print(f"{enc_spec} not found: image -> embedding is off (dvc repro encoder)", file=sys.stderr)
    return g_spec, g_path, enc_spec, e_path


def load_models(files: tuple, s: Settings) -> Models:
    """The networks of model_files, loaded (onnxruntime sessions or torch modules), checked to fit."""
    g_spec, g_path, enc_spec, e_path = files
    G, config = load(g_path, g_spec, "generator", s.torch_threads)
    E = None
    if e_path is not None:
        E, e_config = load(e_path, enc_spec, "encoder", s.torch_threads)
        misfit = encoder_misfit(e_config, config)
        if misfit:
            raise UserError(f"encoder '{enc_spec}' {misfit}")
    return Models(G, config, E, s)


def build(args) -> tuple:
    """(Models, Settings) as the server would serve them, loaded at once (tests, benchmarks)."""
    s = settings(args)
    return load_models(model_files(args, s), s), s


def _head_refusal(status: int, msg: str, default_headers) -> bytes:
    """A whole response, written by the protocol itself (no request reached the app)."""
    body = orjson.dumps({"error": msg})
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:   # no httptools: uvicorn's h11 protocol, whose only head limit is its size
    HttpToolsProtocol = None
else:
    class GuardedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol plus the limits it lacks: httptools takes a request head (request
        line and headers) of any size at any pace, and a connection that never sends a byte, or sends its
        body at a byte a minute after the response, is held for good. Here:
        - a head must be complete within head_timeout_s of the connection's opening or of its first byte
          (else 504 and the connection closes; an idle connection just closes), and at most max_head_bytes
          (else 400);
        - a body must be complete within body_timeout_s + 1 s of its head, or the connection closes (the app
          answers 504 at body_timeout_s where it reads the body; this catches the bodies it does not read:
          those of a 401, a 413 or a GET).
        uvicorn's keep-alive timeout covers the idle time between a response and the next request."""
        head_timeout_s, max_head_bytes, body_timeout_s = 10.0, 16 << 10, 30.0

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = self._body_timer = self._refusal = None
            self._head_bytes, self._in_head, self._awaiting_head, self._discard = 0, False, True, False
            self._arm_head()

        def connection_lost(self, exc) -> None:
            self._cancel("_head_timer")
            self._cancel("_body_timer")
            super().connection_lost(exc)

        def _cancel(self, name: str) -> None:
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

        def _arm_head(self) -> None:
            self._cancel("_head_timer")
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

        def _head_late(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm_head()   # a pipelined head while a response is being made: judged after it
            elif self._in_head:
                self._linger(_head_refusal(504, f"the request head did not arrive in full within "
                                           f"{self.head_timeout_s:g} s", self.server_state.default_headers))
            else:
                self.transport.close()

        def _linger(self, response: bytes) -> None:
            """Send the response and half-close; read and drop what the client still sends for a second,
            then close: closing at once would answer its next bytes with a reset, which can destroy the
            response before the client reads it."""
            self._discard = True
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self._discard:
                return
            if self._awaiting_head and self._head_timer is None:
                self._arm_head()   # bytes between requests (blank lines, a pipelined head) start the clock
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:   # uvicorn's answer to a request it cannot parse
            if self._refusal is None:
                return super().send_400_response(msg)
            self._linger(_head_refusal(400, self._refusal, self.server_state.default_headers))

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > self.max_head_bytes:
                self._refusal = f"request line and headers over {self.max_head_bytes} bytes"
                raise OverflowError(self._refusal)   # the parser stops: uvicorn answers 400 and closes

        def on_message_begin(self) -> None:
            self._head_bytes, self._in_head = 0, True
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._cancel("_head_timer")
            self._in_head = self._awaiting_head = False
            self._body_timer = self.loop.call_later(self.body_timeout_s + 1, self._body_late)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._cancel("_body_timer")
            self._awaiting_head = True
            super().on_message_complete()

        def _body_late(self) -> None:
            self._body_timer = None
            if not self.transport.is_closing():
                self.transport.close()


def server_options(args) -> dict:
    """uvicorn.run's options: bounds on connections, idle time and each request's head and body
    (docs/serving.md#limits)."""
    options = dict(host=args.host, log_level="warning", access_log=False,
                   limit_concurrency=args.limit_concurrency, backlog=args.backlog,
                   timeout_keep_alive=args.keep_alive_s, h11_max_incomplete_event_size=args.max_head_bytes)
    if HttpToolsProtocol is None:
        print("httptools is not installed: no time limit on request heads or unread bodies "
              "(pip install httptools)", file=sys.stderr)
        return {**options, "http": "h11"}
    protocol = type("GuardedHttpTools", (GuardedHttpTools,), {
        "head_timeout_s": args.head_timeout_s, "max_head_bytes": args.max_head_bytes,
        "body_timeout_s": args.body_timeout_s})
    return {**options, "http": protocol}


def _positive(kind):
    def parse(text: str):
        v = kind(text)
        if not v > 0:   # NaN too
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    parse.__name__ = kind.__name__   # argparse names the type in its message
    return parse


class HelpFormat(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parser() -> argparse.ArgumentParser:
    pos_int, pos_float = _positive(int), _positive(float)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormat)
    ap.add_argument("--model", default=os.environ.get(MODEL_ENV) or None,
                    help=f"a file (.pt, .ts, .onnx), name@version, or a name with --stage (${MODEL_ENV} in the image)")
    ap.add_argument("--stage", default=None, help="registry stage, e.g. prod")
    ap.add_argument("--encoder", default=os.environ.get(ENCODER_ENV) or None,
                    help="a file or name@version; 'none' = no encoder; by default the encoder registered with a "
                         "registry generator (its commit's), else models/encoder.pt")
    ap.add_argument("--repo", default=".", help="DVC repository (path or git URL) of the registry")
    ap.add_argument("--host", default="127.0.0.1", help="the address to listen on; beyond loopback "
                    f"{API_KEY_ENV} must be set")
    ap.add_argument("--port", type=int, default=None,
                    help="the port to listen on; default $PORT (Cloud Run), else $AIP_HTTP_PORT (Vertex AI), else 8000")
    ap.add_argument("--model-version", default=os.environ.get(VERSION_ENV) or None,
                    help=f"the version to report (V1 and V2 metadata; ${VERSION_ENV} in the image); default the "
                         "registry's, or the file's hash")
    ap.add_argument("--encoder-version", default=os.environ.get(ENCODER_VERSION_ENV) or None,
                    help=f"the encoder's version to report (${ENCODER_VERSION_ENV} in the image); default the "
                         "registry's, or the file's hash")
    ap.add_argument("--check", action="store_true", help="load the models, say what runs them, and exit")
    ap.add_argument("--max-batch", type=pos_int, default=64, help="rows per model call")
    ap.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="how long a lone request on an idle server waits for others to share its model call")
    ap.add_argument("--model-threads", type=pos_int, default=None,
                    help="model calls side by side, each on cores/N intra-op threads (default: 2, or 1 on one "
                         "core; cores: the CPUs this process may use, affinity and cgroup quota)")
    ap.add_argument("--parse-threads", type=pos_int, default=None,
                    help="threads that parse bodies, decode images and encode PNGs (default: cores, at most 8)")
    ap.add_argument("--max-body-bytes", type=pos_int, default=8 << 20, help="larger bodies get 413")
    ap.add_argument("--max-image-pixels", type=pos_int, default=4096 * 4096,
                    help="larger images (judged from their header) get 400")
    ap.add_argument("--max-request-pixels", type=pos_int, default=4096 * 4096,
                    help="all images of one request together, judged from their headers before any is decoded; "
                         "more gets 413")
    ap.add_argument("--timeout-s", type=pos_float, default=30.0,
                    help="parsing, decoding and the model, per request; over it: 504")
    ap.add_argument("--body-timeout-s", type=pos_float, default=30.0,
                    help="a request body must arrive in full within this; else 504 and the connection closes")
    ap.add_argument("--head-timeout-s", type=pos_float, default=10.0,
                    help="a request's line and headers must arrive within this; else 504 and the connection closes")
    ap.add_argument("--max-head-bytes", type=pos_int, default=16 << 10,
                    help="request line and headers together; more gets 400")
    ap.add_argument("--limit-concurrency", type=pos_int, default=100,
                    help="open connections (and requests in progress); beyond it uvicorn answers 503")
    ap.add_argument("--keep-alive-s", type=pos_float, default=5.0, help="an idle connection closes after this")
    ap.add_argument("--backlog", type=pos_int, default=512,
                    help="connections the kernel queues before the server accepts them")
    ap.add_argument("--invert-steps", type=int, default=None,
                    help="refinement steps after the encoder (0 = encoder alone); default: params.yaml's invert_steps")
    return ap


def port(args) -> int:
    """--port, else $PORT (Cloud Run, Knative), else $AIP_HTTP_PORT (Vertex AI), else 8000."""
    if args.port is not None:
        if not 0 <= args.port < 65536:   # uvicorn hangs on a port beyond 65535 (its OverflowError is lost)
            raise UserError(f"--port must be a port number (1-65535, or 0: any free one), got {args.port}")
        return args.port
    for name in PORT_ENV:
        value = os.environ.get(name)
        if value:
            # the length first: int() refuses a string of over 4,300 digits with its own ValueError
            if not (value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536):
                raise UserError(f"${name} must be a port number (1-65535), got {value[:40]!r}")
            return int(value)
    return 8000


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the container engines' stop: the first SIGTERM drains (requests in flight finish,
    new ones get 503, readiness goes 503), and the process exits 0 once none is in flight; a second SIGTERM or
    a SIGINT starts uvicorn's own shutdown (no new connections; those in flight still get up to their time
    limits). A failed model load stops it too."""

    def __init__(self, config: uvicorn.Config, life):
        super().__init__(config)
        self.life = life
        life.on_failure = lambda message: setattr(self, "should_exit", True)

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and not self.life.draining:
            self.life.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.life.draining and self.life.in_flight == 0:
            return True
        return await super().on_tick(counter)


def main():
    args = parser().parse_args()
    if args.check:
        models, s = build(args)
        kinds = ", ".join(f"{what} {type(net).__name__}" for what, net in (("generator", models.G), ("encoder", models.E))
                          if net is not None)
        print(f"loaded {kinds} ({s.version}), " + ("with torch" if "torch" in sys.modules else "without torch"))
        return
    s = settings(args)
    listen = port(args)
    files = model_files(args, s)
    app = create_app(lambda: load_models(files, s), s)
    print(f"serving {s.name} {s.version} on http://{args.host}:{listen}/ (ready once loaded: /v2/health/ready)",
          flush=True)
    server = GracefulServer(uvicorn.Config(app, **server_options(args), port=listen), app.state.life)
    server.run()
    if app.state.life.error:
        raise UserError(app.state.life.error)


if __name__ == "__main__":
    cli.run(main)
