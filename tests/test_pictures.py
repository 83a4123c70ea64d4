"""Pictures: the small PNG writer the server uses gives exactly the pixels back in any decoder."""
import io

import numpy as np
import pytest
from PIL import Image

from dcgan import pictures


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 64, 64), (3, 5, 7), (1, 1, 1)])
def test_png_bytes_decode_to_the_same_pixels(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    png = pictures.png_bytes(img)
    decoded = Image.open(io.BytesIO(png))
    decoded.load()                                        # checks the CRCs and the zlib stream
    assert decoded.mode == ("L" if shape[0] == 1 else "RGB") and decoded.size == (shape[2], shape[1])
    assert np.array_equal(np.array(decoded), img[0] if shape[0] == 1 else img.transpose(1, 2, 0))


def test_png_bytes_refuses_other_channel_counts():
    with pytest.raises(ValueError, match="1 or 3 channels, got 4"):
        pictures.png_bytes(np.zeros((4, 8, 8), np.uint8))
