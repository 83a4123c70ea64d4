"""Decode one image file of any common kind into a uint8 (C, H, W) array of a fixed size.

Every failure is a `BadImage` whose message is the reason shown in the manifest's `skipped` list.
"""
from __future__ import annotations

import hashlib
import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageColor, ImageFile, ImageOps, UnidentifiedImageError

# Lower-case extensions we decode, and the PIL formats each may legitimately contain.
EXTENSION_FORMATS = {
    ".png": {"PNG"},
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".jpe": {"JPEG", "MPO"},
    ".bmp": {"BMP", "DIB"},
    ".gif": {"GIF"},
    ".webp": {"WEBP"},
    ".tif": {"TIFF"},
    ".tiff": {"TIFF"},
}
# Files that are never images and never worth a line in the skipped list.
OS_DEBRIS = {"thumbs.db", "desktop.ini", ".ds_store", "icon\r", "ehthumbs.db"}

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a bad file, not a half-grey image


# PIL warns about odd chunks and about big images; we judge a file by the outcome and bound its pixels ourselves.
# A filter on PIL's own warnings, set once: warnings.catch_warnings() is not thread-safe (the server decodes in threads)
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
_OPEN_LOCK = threading.Lock()


class BadImage(Exception):
    """A file that cannot become a training image; str(e) is the reason."""


def decode(data: bytes, ext: str, channels: int, size: int, resize: str, background: str,
           max_pixels: int, crop_fraction: float | None = None, crop_key: str = "") -> np.ndarray:
    """Bytes of one file -> uint8 array (channels, size, size). resize 'random': see random_square."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    expected = EXTENSION_FORMATS.get(ext.lower())
    if expected is None:
        raise BadImage(f"not an image extension: '{ext or '(none)'}'")
    im = _open_header(data)
    if im.format not in expected:
        raise BadImage(f"wrong extension: content is {im.format} but the name ends in '{ext}'")
    w, h = im.size
    if w * h > max_pixels:  # judged from the header: the pixels are never decoded
        raise BadImage(f"decompression bomb: {w}x{h} = {w * h} pixels is over max_image_pixels={max_pixels}")
    if w < 1 or h < 1:
        raise BadImage(f"empty image ({w}x{h})")
    try:
        im.seek(0)  # GIF/WebP/TIFF: first frame
        im.load()
    except Exception as e:  # noqa: BLE001
        raise BadImage(f"truncated or corrupt data: {e}") from None
    try:
        im = ImageOps.exif_transpose(im)  # camera JPEGs stored sideways come out upright
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth losing the image for
        pass
    try:
        im = to_mode(im, channels, background)   # rebound: a deep image (4 bytes a pixel) is freed here
        return square_array(im, size, resize, background, crop_fraction, crop_key)
    except Exception as e:  # noqa: BLE001 - an exotic mode PIL cannot convert is one bad file, not a crash
        raise BadImage(f"cannot convert {im.mode} {w}x{h} image: {e}") from None


def prepared_array(im: Image.Image, channels: int, size: int, resize: str, background: str,
                   crop_fraction: float | None = None, crop_key: str = "") -> np.ndarray:
    """A decoded image -> the uint8 array (channels, size, size) prepare stores: to_mode, then square_array."""
    return square_array(to_mode(im, channels, background), size, resize, background, crop_fraction, crop_key)


def square_array(im: Image.Image, size: int, resize: str, background: str, crop_fraction: float | None = None,
                 crop_key: str = "") -> np.ndarray:
    """An 'L' or 'RGB' image -> uint8 (channels, size, size): fit, then channels first."""
    arr = np.asarray(fit(im, size, resize, background, crop_fraction, crop_key), dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def _open_header(data: bytes) -> Image.Image:
    """PIL's image object with only the header read; PIL's own pixel limit is lifted (the caller's max_pixels
    replaces it), under a lock because that limit is one setting for the whole process."""
    with _OPEN_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise BadImage(f"decompression bomb: {e}") from None
        except UnidentifiedImageError:
            raise BadImage("not an image (unrecognised content)") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt headers
            raise BadImage(f"corrupt header: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def to_mode(im: Image.Image, channels: int, background: str) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB', compositing transparency over `background`."""
    bg = ImageColor.getrgb(background)[:3]
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = _deep_to_8bit(im)
    elif mode == "1":
        im = im.convert("L")
    elif mode == "CMYK":
        im = im.convert("RGB")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
    elif mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode in ("RGBa", "La"):
        im = im.convert("RGBA")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")

    if im.mode in ("RGBA", "LA"):
        im = _over_background(im, bg)
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if channels == 1 and im.mode != "L":
        im = im.convert("L")
    elif channels == 3 and im.mode != "RGB":
        im = im.convert("RGB")
    return im


# Whole-image conversions run a band of rows at a time: their temporaries are a few MB, not several times the
# image (a 16-bit image at max_image_pixels took gigabytes in float64 copies).
BAND_PIXELS = 1 << 18


def _bands(im: Image.Image):
    """(top row, the rows from there as a new image) covering `im`, about BAND_PIXELS pixels each."""
    w, h = im.size
    rows = max(1, BAND_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        yield y, im.crop((0, y, w, min(h, y + rows)))


def _deep_to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale (I;16*, I, F) -> 'L', scaled rather than clipped (clipping would make a
    16-bit image all white): integers 0..65535 -> 0..255 as round(v / 257); floats as round(v * 255) when
    none is over 1.0, else round(v); NaN -> 0. Only the output (1 byte a pixel) is full-size."""
    w, h = im.size
    out = np.empty((h, w), np.uint8)
    scale = 1.0
    if im.mode == "F":  # a first pass for the maximum, ignoring NaN (fmax)
        top = max(float(np.fmax.reduce(np.asarray(band), axis=None, initial=0.0)) for _, band in _bands(im))
        scale = 255.0 if top <= 1.0 else 1.0
    for y, band in _bands(im):
        a = np.asarray(band)
        if im.mode == "F":
            a = np.nan_to_num(a.astype(np.float64) * scale, nan=0.0, posinf=255.0, neginf=0.0)
            np.rint(a, out=a)
            np.clip(a, 0, 255, out=a)
        else:  # (v + 128) // 257 is round(v / 257) for integers: v / 257 is never a half
            a = (np.clip(a.astype(np.int32), 0, 65535) + 128) // 257
        out[y:y + a.shape[0]] = a
    return Image.fromarray(out)


def _over_background(im: Image.Image, bg: tuple) -> Image.Image:
    """RGBA or LA composited over an opaque `bg` -> RGB, band by band (the same pixels as compositing the
    whole image at once, without three full-size RGBA copies)."""
    out = Image.new("RGB", im.size)
    for y, band in _bands(im):
        rgba = band.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, bg + (255,))
        out.paste(Image.alpha_composite(canvas, rgba).convert("RGB"), (0, y))
    return out


def random_square(w: int, h: int, fraction: float, key: str) -> tuple[int, int, int]:
    """(left, top, side) of a square of `fraction` of the short side, placed at random by `key` alone (the
    seed and the file's content hash: the same file always gets the same crop, whatever else is in the source)."""
    side = max(1, round(fraction * min(w, h)))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    return int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), side


def fit(im: Image.Image, size: int, resize: str, background: str, crop_fraction: float | None = None,
        crop_key: str = "") -> Image.Image:
    """Center-crop (`crop`), letterbox (`pad`) or crop a random square (`random`, random_square) to a size x
    size square, antialiased."""
    w, h = im.size
    if resize in ("crop", "random"):
        if resize == "crop":
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
        elif crop_fraction is None:
            raise ValueError("resize 'random' needs a crop_fraction (the param's)")
        else:
            left, top, side = random_square(w, h, crop_fraction, crop_key)
        im = im.crop((left, top, left + side, top + side))
        if side != size:
            im = im.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return im
    if resize == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
        fill = ImageColor.getrgb(background)[:3]
        canvas = Image.new(im.mode, (size, size), fill if im.mode == "RGB" else ImageColor.getcolor(background, "L"))
        canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"resize must be 'crop', 'pad' or 'random', not {resize!r}")
