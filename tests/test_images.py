"""decode(): every common image kind becomes the right uint8 (C, size, size) pixels.

Every input is built here with PIL/numpy and written to tmp_path; every test checks pixel values.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcgan import data
from dcgan.images import BadImage, decode

MAX_PIXELS = 89478485


def write(tmp_path: Path, name: str, im: Image.Image, fmt: str | None = None, **kw) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def dec(path: Path, channels=3, size=32, resize="crop", background="white", max_pixels=MAX_PIXELS) -> np.ndarray:
    arr = decode(path.read_bytes(), path.suffix, channels, size, resize, background, max_pixels)
    assert arr.dtype == np.uint8 and arr.shape == (channels, size, size)
    return arr


def halves(mode: str, left, right, size=(32, 32)) -> Image.Image:
    """An image whose left half is `left` and right half is `right`."""
    im = Image.new(mode, size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def px(arr: np.ndarray, y: int, x: int) -> tuple:
    return tuple(int(v) for v in arr[:, y, x])


# --- transparency ---------------------------------------------------------------------------------

@pytest.mark.parametrize("background, rgb", [("#ff0000", (255, 0, 0)), ("white", (255, 255, 255)),
                                             ("#00ff00", (0, 255, 0))])
def test_rgba_transparent_pixels_become_background(tmp_path, background, rgb):
    # transparent pixels carry a colour (magenta) that must not leak, nor become black
    im = halves("RGBA", (255, 0, 255, 0), (0, 0, 255, 255))
    arr = dec(write(tmp_path, "a.png", im), background=background)
    assert px(arr, 10, 4) == rgb
    assert px(arr, 10, 28) == (0, 0, 255)


def test_rgba_transparent_black_pixels_over_white_are_white(tmp_path):
    im = halves("RGBA", (0, 0, 0, 0), (10, 20, 30, 255))
    arr = dec(write(tmp_path, "a.png", im), background="white")
    assert px(arr, 0, 0) == (255, 255, 255)
    assert px(arr, 31, 31) == (10, 20, 30)


def test_rgba_half_transparent_is_blended(tmp_path):
    im = Image.new("RGBA", (32, 32), (0, 0, 0, 128))
    arr = dec(write(tmp_path, "a.png", im), background="white")
    assert np.all(np.abs(arr.astype(int) - 127) <= 1)


def test_rgba_to_one_channel_uses_background(tmp_path):
    im = halves("RGBA", (0, 0, 0, 0), (0, 0, 0, 255))
    arr = dec(write(tmp_path, "a.png", im), channels=1, background="#ff0000")
    assert abs(int(arr[0, 5, 5]) - 76) <= 1  # luma of pure red
    assert arr[0, 5, 28] == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_la_is_composited(tmp_path, channels):
    im = halves("LA", (0, 0), (100, 255))
    assert im.mode == "LA"
    arr = dec(write(tmp_path, "a.png", im), channels=channels, background="white")
    assert px(arr, 8, 3) == (255,) * channels
    assert px(arr, 8, 28) == (100,) * channels


def test_palette_png_with_transparent_index(tmp_path):
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.paste(1, (16, 0, 32, 32))
    path = write(tmp_path, "p.png", im, transparency=0)
    reopened = Image.open(path)
    assert reopened.mode == "P" and reopened.info.get("transparency") == 0  # the file really has tRNS
    arr = dec(path, background="#ff0000")
    assert px(arr, 4, 4) == (255, 0, 0)  # index 0 is black in the palette but transparent
    assert px(arr, 4, 28) == (0, 0, 255)


def test_grayscale_with_transparency_key(tmp_path):
    im = halves("L", 0, 200)
    path = write(tmp_path, "l.png", im, transparency=0)
    arr = dec(path, channels=1, background="white")
    assert arr[0, 3, 3] == 255 and arr[0, 3, 28] == 200


# --- channels and bit depth -----------------------------------------------------------------------

def test_grayscale_to_three_channels(tmp_path):
    arr = dec(write(tmp_path, "g.png", halves("L", 77, 200)), channels=3)
    assert px(arr, 5, 5) == (77, 77, 77)
    assert px(arr, 5, 28) == (200, 200, 200)


@pytest.mark.parametrize("rgb, luma", [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29),
                                       ((255, 255, 255), 255)])
def test_rgb_to_one_channel_is_luma(tmp_path, rgb, luma):
    arr = dec(write(tmp_path, "c.png", Image.new("RGB", (32, 32), rgb)), channels=1)
    assert np.all(np.abs(arr.astype(int) - luma) <= 1)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, ext):
    a = np.zeros((32, 32), np.uint16)
    a[0:8] = 65535
    a[8:16] = 32896
    a[16:24] = 257 * 100
    a[24:32] = 0
    path = tmp_path / f"deep{ext}"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode in ("I;16", "I;16B", "I;16L", "I")  # a real 16-bit file
    for channels in (1, 3):
        arr = dec(path, channels=channels)
        assert np.all(arr[:, 0:3] == 255)
        assert np.all(np.abs(arr[:, 10:14].astype(int) - 128) <= 1)
        assert np.all(np.abs(arr[:, 19:21].astype(int) - 100) <= 1)
        assert np.all(arr[:, 28:32] == 0)


@pytest.mark.parametrize("fmt, ext, tol", [("JPEG", ".jpg", 8), ("TIFF", ".tif", 0)])
def test_cmyk(tmp_path, fmt, ext, tol):
    im = halves("CMYK", (255, 0, 0, 0), (0, 255, 0, 0))  # cyan | magenta
    im.paste((0, 0, 0, 255), (0, 24, 32, 32))  # black band at the bottom
    path = write(tmp_path, f"cmyk{ext}", im, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    assert Image.open(path).mode == "CMYK"
    arr = dec(path).astype(int)
    assert np.all(np.abs(arr[:, 8, 6] - (0, 255, 255)) <= tol)
    assert np.all(np.abs(arr[:, 8, 26] - (255, 0, 255)) <= tol)
    assert np.all(np.abs(arr[:, 29, 16] - (0, 0, 0)) <= tol)


# --- orientation and frames -----------------------------------------------------------------------

@pytest.mark.parametrize("orientation, bright", [(6, "top"), (8, "bottom")])
def test_exif_rotated_jpeg_comes_out_upright(tmp_path, orientation, bright):
    # stored 80x40 with the left half bright; orientation 6 = rotate 90 clockwise to display
    # (left -> top), 8 = rotate 90 counter-clockwise (left -> bottom)
    im = halves("L", 255, 0, size=(80, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write(tmp_path, "cam.jpg", im, "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(path).getexif().get(0x0112) == orientation
    arr = dec(path, channels=1, resize="pad", background="black")[0].astype(int)
    # upright it is 40 wide x 80 tall: padded it fills rows 0..31, columns 8..23
    top, bottom = arr[1:13, 10:22].mean(), arr[19:31, 10:22].mean()
    if bright == "top":
        assert top > 200 and bottom < 50, (top, bottom)
    else:
        assert bottom > 200 and top < 50, (top, bottom)
    assert arr[:, 0:6].max() < 30 and arr[:, 26:].max() < 30  # side padding: it is tall now


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    path = write(tmp_path, "anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 3
    arr = dec(path)
    assert np.all(arr.reshape(3, -1).T == (255, 0, 0))


def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in [(0, 0, 255), (255, 0, 0)]]
    path = write(tmp_path, "anim.webp", frames[0], save_all=True, append_images=frames[1:], lossless=True,
                 duration=100)
    assert Image.open(path).n_frames == 2
    arr = dec(path)
    assert px(arr, 16, 16) == (0, 0, 255)


# --- container formats ----------------------------------------------------------------------------

def pattern() -> Image.Image:
    im = Image.new("RGB", (32, 32), (10, 200, 30))
    im.paste((250, 120, 5), (0, 0, 16, 16))
    return im


@pytest.mark.parametrize("name, kw", [
    ("x.webp", {"lossless": True}),
    ("x.tif", {}),
    ("x.tiff", {"compression": "tiff_lzw"}),
    ("x.bmp", {}),
    ("x.png", {}),
    ("x.gif", {}),
])
def test_lossless_formats_exact(tmp_path, name, kw):
    path = write(tmp_path, name, pattern(), **kw)
    arr = dec(path)
    assert px(arr, 4, 4) == (250, 120, 5)
    assert px(arr, 28, 28) == (10, 200, 30)


def test_rgba_webp_and_tiff_composited(tmp_path):
    im = halves("RGBA", (0, 0, 0, 0), (0, 0, 255, 255))
    for name, kw in [("a.webp", {"lossless": True}), ("a.tif", {})]:
        arr = dec(write(tmp_path, name, im, **kw), background="#ff0000")
        assert px(arr, 5, 5) == (255, 0, 0), name
        assert px(arr, 5, 28) == (0, 0, 255), name


def test_jpeg_close(tmp_path):
    arr = dec(write(tmp_path, "x.jpg", pattern(), quality=95)).astype(int)
    assert np.all(np.abs(arr[:, 4, 4] - (250, 120, 5)) <= 8)
    assert np.all(np.abs(arr[:, 28, 28] - (10, 200, 30)) <= 8)


# --- geometry -------------------------------------------------------------------------------------

@pytest.mark.parametrize("wide", [True, False])
def test_crop_is_centered_then_resized(tmp_path, wide):
    # a 96x64 (or 64x96) image: 16-pixel red and blue margins around a green 64x64 center
    size = (96, 64) if wide else (64, 96)
    im = Image.new("RGB", size, (0, 255, 0))
    if wide:
        im.paste((255, 0, 0), (0, 0, 16, 64))
        im.paste((0, 0, 255), (80, 0, 96, 64))
    else:
        im.paste((255, 0, 0), (0, 0, 64, 16))
        im.paste((0, 0, 255), (0, 80, 64, 96))
    arr = dec(write(tmp_path, "c.png", im), size=32, resize="crop")
    assert np.all(arr.reshape(3, -1).T == (0, 255, 0))  # no red or blue margin survived, nothing stretched


def test_crop_keeps_the_center_region_in_place(tmp_path):
    # 128x64: center crop is x 32..95; its left half (x 32..63) is white, right half black
    im = Image.new("L", (128, 64), 0)
    im.paste(255, (32, 0, 64, 64))
    arr = dec(write(tmp_path, "c.png", im), channels=1, size=32, resize="crop")[0].astype(int)
    assert arr[:, :14].min() > 240 and arr[:, 18:].max() < 15


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("channels, background, fill", [(3, "#ff0000", (255, 0, 0)), (1, "white", (255,)),
                                                        (3, "black", (0, 0, 0))])
def test_pad_fills_with_background(tmp_path, wide, channels, background, fill):
    im = Image.new("RGB", (64, 32) if wide else (32, 64), (0, 255, 0))
    arr = dec(write(tmp_path, "p.png", im), channels=channels, size=32, resize="pad", background=background)
    content = (0, 255, 0) if channels == 3 else (150,)
    if not wide:
        arr = arr.transpose(0, 2, 1)  # tall image: padding left and right instead of top and bottom
    for y in list(range(0, 8)) + list(range(24, 32)):
        for x in (0, 15, 31):
            assert px(arr, y, x) == fill, (y, x)
    for y in (9, 16, 22):
        for x in (0, 15, 31):
            got = px(arr, y, x)
            assert all(abs(g - c) <= 1 for g, c in zip(got, content)), (y, x, got)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resize", ["crop", "pad"])
@pytest.mark.parametrize("src", [(100, 70), (20, 30), (64, 64)])
def test_output_shape_and_dtype(tmp_path, size, channels, resize, src):
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8))
    arr = decode(write(tmp_path, "s.png", im).read_bytes(), ".png", channels, size, resize, "white", MAX_PIXELS)
    assert arr.shape == (channels, size, size)
    assert arr.dtype == np.uint8
    assert arr.flags["C_CONTIGUOUS"]


def test_upscaling_small_image_keeps_colour(tmp_path):
    arr = dec(write(tmp_path, "tiny.png", Image.new("RGB", (8, 8), (12, 34, 56))), size=64)
    assert np.all(arr.reshape(3, -1).T == (12, 34, 56))


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_downsampling_is_antialiased(tmp_path, resize):
    # a one-pixel checkerboard: aliasing (nearest/no filter) gives pure black/white, a proper filter mid-grey
    yy, xx = np.mgrid[:256, :256]
    board = (((yy + xx) % 2) * 255).astype(np.uint8)
    arr = dec(write(tmp_path, "board.png", Image.fromarray(board)), channels=1, size=32, resize=resize)
    assert np.all(np.abs(arr.astype(int) - 127.5) < 20), (arr.min(), arr.max())


# --- names and extensions through prepare ---------------------------------------------------------

def test_upper_case_extensions_and_odd_names(tmp_path):
    src = tmp_path / "src"
    names = {
        "UPPER.PNG": ((255, 0, 0), "PNG"),
        "Mixed.JpG": ((0, 0, 255), "JPEG"),
        "with spaces in name.png": ((0, 255, 0), "PNG"),
        "sub dir/Pokémon ü 日本語.png": ((255, 255, 0), "PNG"),
        "ÆØÅ/ñandú.GIF": ((0, 255, 255), "GIF"),
    }
    for name, (colour, fmt) in names.items():
        write(src, name, Image.new("RGB", (32, 32), colour), fmt)
    settings = data.Settings(32, 3, "crop", "white", MAX_PIXELS)
    out = tmp_path / "out"
    m = data.prepare(src, out, settings, 0.0, 0.0, 0.0, {}, workers=1, progress=False)
    assert m["skipped"] == []
    assert sorted(m["files"]) == sorted(names)
    train = np.load(out / "train.npy", allow_pickle=False)
    for name, (colour, _) in names.items():
        row = train[m["files"][name]["row"]].astype(int)
        assert np.all(np.abs(row[:, 16, 16] - colour) <= 8), (name, row[:, 16, 16])


def test_random_crop_is_a_square_of_the_fraction_placed_by_the_key_alone(tmp_path):
    """resize: random: a square of crop_fraction of the short side; where it falls depends on the key (seed and
    content hash) only, so the same file gets the same crop on every run, and another seed another crop."""
    from dcgan.images import random_square

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8))   # 100 wide, 60 high
    path = write(tmp_path, "r.png", im)
    raw = path.read_bytes()

    def crop(key, fraction=0.75):
        return decode(raw, ".png", 3, 45, "random", "white", MAX_PIXELS, fraction, key)
    assert np.array_equal(crop("0:abc"), crop("0:abc"))
    left, top, side = random_square(100, 60, 0.75, "0:abc")
    assert side == 45 and 0 <= left <= 55 and 0 <= top <= 15
    # at the crop's own size no resampling happens: the array is exactly the pixels of that square
    assert np.array_equal(crop("0:abc"), np.asarray(im)[top:top + 45, left:left + 45].transpose(2, 0, 1))
    places = {random_square(100, 60, 0.75, f"{seed}:abc")[:2] for seed in range(20)}
    assert len(places) > 10                                   # the seed moves it
    left, top, side = random_square(100, 60, 1.0, "k")      # the whole short side: only along the long one
    assert side == 60 and top == 0 and 0 <= left <= 40
    with pytest.raises(BadImage):                              # no fraction given: one line, not a crash
        decode(raw, ".png", 3, 45, "random", "white", MAX_PIXELS)
