"""What the serving tests share: tiny models of one shape, a generator a test holds mid-call, and one HTTP
response read off a raw socket."""
import socket
import threading

import torch

from dcgan.archs.dcgan import Encoder, Generator, init_weights

NZ, SIZE = 16, 32


def tiny_models():
    torch.manual_seed(0)
    G = Generator(SIZE, 1, NZ, 8).apply(init_weights).eval()
    E = Encoder(SIZE, 1, NZ, 8).apply(init_weights).eval()
    return G, E


class Gated(torch.nn.Module):
    """The generator, but each call first says it started and waits until the test lets it go on."""

    def __init__(self, G):
        super().__init__()
        self.G, self.config = G, G.config
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, z):
        self.entered.set()
        assert self.release.wait(10), "the test never released the model"
        return self.G(z)


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket -> (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response's head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the response's body"
        body += chunk
    return int(status_line.split()[1]), headers, body
