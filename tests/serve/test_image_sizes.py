"""The server at image sizes that are not powers of two: images come back at the model's size, uploads of any
size are cropped to it, and the encoder round trip works."""
import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from dcgan import pictures
from dcgan.archs.dcgan import Encoder, Generator, init_weights
from dcgan.serve.app import Models, Settings, create_app

NZ = 16


def png_b64(w: int, h: int) -> str:
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def picture(raw: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(raw)))


@pytest.mark.parametrize("size, channels", [(120, 3), (17, 1)])
def test_server_answers_at_the_models_size(size, channels):
    torch.manual_seed(0)
    G = Generator(size, channels, NZ, 4).apply(init_weights).eval()
    E = Encoder(size, channels, NZ, 4).apply(init_weights).eval()
    s = Settings(invert_steps=2)
    c = TestClient(create_app(Models(G, dict(G.config), E, s), s))
    assert c.get("/v1/models/generator").json()["image_size"] == size
    shape = (size, size, 3) if channels == 3 else (size, size)
    assert picture(c.get("/sample?n=1&seed=3").content).shape == shape
    assert picture(c.get("/interpolate?a=1&b=2&t=0.5").content).shape == shape
    assert c.get("/sample?n=4&seed=3").status_code == 200             # a grid of them
    z = [0.1] * NZ
    uploads = [png_b64(300, 200), png_b64(9, 9)]        # larger and smaller than the model's images
    body = {"instances": [{"z": z}] + [{"image_bytes": {"b64": b64}} for b64 in uploads]}
    r = c.post("/v1/models/generator:predict", json=body)
    assert r.status_code == 200, r.text
    image, *encoded = r.json()["predictions"]
    got = picture(base64.b64decode(image["image_bytes"]["b64"]))
    want = pictures.to_uint8(G(torch.tensor([z])))[0]
    assert np.array_equal(got, want.transpose(1, 2, 0) if channels == 3 else want[0])
    assert all(len(p["embeddings"]) == NZ and p["reconstruction_mse"] >= 0 for p in encoded)
