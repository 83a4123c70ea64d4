"""What the serving tests share: tiny models of one shape, and a generator a test holds mid-call."""
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
