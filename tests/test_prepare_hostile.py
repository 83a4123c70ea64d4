"""prepare on whatever a user's folder or zip holds (issue 19): link loops and links out of the source, names
that are not UTF-8, broken and malicious archives, FIFOs and unreadable folders, 16-bit images within a memory
bound, a failure or a kill at any step (the previous outputs stay exactly as they were), the pool's size.

Every input is built under tmp_path; each test takes a few seconds at most."""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from dcgan import data, images
from dcgan.data import PrepareError
from dcgan.images import decode
from test_data import MAX_PIXELS, SETTINGS, make_good, noise_image, png_bytes, run, snapshot


def link(path: Path, target: str | Path) -> None:
    try:
        os.symlink(target, path)
    except (OSError, NotImplementedError) as e:  # Windows without the privilege
        pytest.skip(f"cannot make symlinks here: {e}")


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


# --- links ------------------------------------------------------------------------------------------

@pytest.mark.timeout(30)  # a walk that follows the loop never ends
def test_a_folder_link_back_up_is_walked_once(tmp_path):
    src = tmp_path / "src"
    good = make_good(src, 3) + [f"sub/{n}" for n in make_good(src / "sub", 2, start=10)]
    link(src / "loop", ".")         # today: every file ~40 times, until the path is too long
    link(src / "sub" / "up", "..")
    assert data.list_source(src) == sorted(good)
    m = run(src, tmp_path / "out", max_skipped=0.0)
    assert sorted(m["files"]) == sorted(good) and m["duplicates"] == [] and m["skipped"] == []


@pytest.mark.timeout(30)
def test_two_link_loops_end(tmp_path):
    src = tmp_path / "src"
    good = make_good(src, 3)
    link(src / "loop1", ".")  # two loops: 2^40 paths, today the walk never ends
    link(src / "loop2", ".")
    link(src / "loop3", src)  # an absolute link to the source itself
    t0 = time.monotonic()
    assert data.list_source(src) == sorted(good)
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(30)  # a walk that follows the loop never ends
def test_links_to_a_folder_above_the_source_are_not_followed(tmp_path):
    src = tmp_path / "a" / "src"
    good = make_good(src, 2)
    make_good(tmp_path / "a", 1, start=50, prefix="beside")  # next to the source, not in it
    link(src / "parent", "..")
    link(src / "grandparent", "../..")
    link(src / "root", "/")
    assert data.list_source(src) == sorted(good)


@pytest.mark.timeout(30)  # a walk that follows the loop never ends
def test_links_out_of_the_source_are_followed_once(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    good = make_good(src, 2)
    make_good(outside, 2, start=20, prefix="out")
    link(src / "ext", "../outside")                  # a folder elsewhere: followed
    link(src / "ext2", outside)                      # the same folder by another link: walked once
    link(src / "one.png", "../outside/out0020.png")  # a file elsewhere: read
    link(outside / "back", "../src")                 # from there back into the source: already walked
    assert data.list_source(src) == sorted(good + ["ext/out0020.png", "ext/out0021.png", "one.png"])
    m = run(src, tmp_path / "out", max_skipped=0.0)
    assert m["duplicates"] == [{"path": "one.png", "duplicate_of": "ext/out0020.png"}]
    assert len(m["files"]) == 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_fifos_devices_and_broken_links_are_skipped_unopened(tmp_path, workers):
    src = tmp_path / "src"
    make_good(src, 6)
    link(src / "dangling.png", "nowhere.png")
    link(src / "self.png", "self.png")
    link(src / "zero.png", "/dev/zero")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(src / "pipe.png")  # opening it to read would wait for a writer forever
    m = run(src, tmp_path / "out", max_skipped=0.5, workers=workers)
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"dangling.png", "self.png", "zero.png", "pipe.png"}
    assert all(r.startswith("unreadable: ") and "Errno" not in r and str(src) not in r for r in reasons.values())
    assert "FIFO" in reasons["pipe.png"] and "device" in reasons["zero.png"]
    assert len(m["files"]) == 6


@pytest.mark.timeout(30)
def test_a_fifo_as_the_source_is_one_line(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / "images.zip")
    with pytest.raises(PrepareError, match="neither a folder nor a .zip"):
        run(tmp_path / "images.zip", tmp_path / "out")


def test_an_unreadable_folder_is_a_skipped_entry(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good = make_good(src, 6)
    make_good(src / "locked", 2, start=10)
    real = os.scandir

    def scandir(path="."):  # chmod 000 does not stop root: refuse the folder here instead
        if os.path.basename(os.path.normpath(path)) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    m = run(src, tmp_path / "out", max_skipped=0.5)
    assert m["skipped"] == [{"path": "locked/", "reason": "unreadable folder: Permission denied"}]
    assert sorted(m["files"]) == sorted(good)
    with pytest.raises(PrepareError, match="locked/: unreadable folder"):  # it counts as skipped
        run(src, tmp_path / "out2", max_skipped=0.0)
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(PrepareError, match="cannot be read: Permission denied"):
        run(src, tmp_path / "out3")


# --- names in any encoding --------------------------------------------------------------------------

def write_bytes_name(folder: Path, name: bytes, content: bytes) -> None:
    path = os.fsencode(folder) + b"/" + name
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL)
    except (OSError, ValueError) as e:  # macOS and Windows file systems refuse names that are not UTF-8
        pytest.skip(f"this file system refuses the name {name!r}: {e}")
    with os.fdopen(fd, "wb") as f:
        f.write(content)


@pytest.mark.parametrize("workers", [1, 2])
def test_names_that_are_not_utf8(tmp_path, workers):
    src, out = tmp_path / "src", tmp_path / "out"
    make_good(src, 6)
    run(src, out)  # a previous run's outputs: today the crash came after they were replaced
    latin1 = png_bytes(noise_image(50))
    write_bytes_name(src, b"caf\xe9.png", latin1)
    write_bytes_name(src, b"sub\xff/x\xfe.png", png_bytes(noise_image(51)))
    write_bytes_name(src, b"bad\xff.png", b"not a picture")
    m = run(src, out, max_skipped=0.5, workers=workers)
    on_disk = json.loads((out / "manifest.json").read_bytes().decode("utf-8"))  # strict UTF-8
    assert on_disk == m
    assert {"caf\\xe9.png", "sub\\xff/x\\xfe.png"} <= set(m["files"]) and len(m["files"]) == 8
    assert [s["path"] for s in m["skipped"]] == ["bad\\xff.png"]
    info = m["files"]["caf\\xe9.png"]
    assert np.array_equal(data.load_split(out, info["split"])[info["row"]],
                          decode(latin1, ".png", 3, 32, "crop", "white", MAX_PIXELS))
    assert no_temporaries(out)


def test_shown_names_are_utf8_and_plain_names_unchanged():
    assert data.shown("ü/ok.png") == "ü/ok.png"
    assert data.shown(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert data.shown("lone \ud800 surrogate").encode("utf-8")  # not from surrogateescape: still writable


def params_for(tmp_path: Path, **changes) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p.update(image_size=32, channels=3, **changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def run_stage(params: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(out),
                           "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_stage_prints_odd_names_and_says_what_is_wrong_with_a_zip_in_one_line(tmp_path):
    src = tmp_path / "src"
    make_good(src, 6)
    write_bytes_name(src, b"bad\xff.png", b"not a picture")
    r = run_stage(params_for(tmp_path, source=str(src), max_skipped_fraction=0.5), tmp_path / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped bad\\xff.png: not an image" in r.stdout

    z = tmp_path / "images.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(3):
            zf.writestr(f"{i}.png", png_bytes(noise_image(i)))
    blob = bytearray(z.read_bytes())
    i = blob.find(b"PK\x01\x02")
    blob[i:i + 4] = b"XXXX"
    z.write_bytes(bytes(blob))
    before = snapshot(tmp_path / "out")
    r = run_stage(params_for(tmp_path, source=str(z)), tmp_path / "out")
    err = r.stderr.strip()
    assert r.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith("error: ") and str(z) in err and "damaged .zip archive" in err
    assert snapshot(tmp_path / "out") == before


# --- archives ---------------------------------------------------------------------------------------

def good_members(n: int = 4) -> dict[str, bytes]:
    return {f"img{i}.png": png_bytes(noise_image(i)) for i in range(n)}


def make_zip(path: Path, members, compression=zipfile.ZIP_DEFLATED) -> Path:
    """members: {name or ZipInfo: bytes} or a list of such pairs (a list may repeat a name)."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, blob in (members.items() if isinstance(members, dict) else members):
            if isinstance(name, zipfile.ZipInfo):
                name.compress_type = compression
            zf.writestr(name, blob)
    return path


def test_odd_member_names_are_only_labels(tmp_path):
    odd = ["/abs.png", "../up.png", "dir/../../x.png", "a\\b.png", "C:/drive.png", "./dot.png"]
    members = {**good_members(), **{n: png_bytes(noise_image(100 + i)) for i, n in enumerate(odd)}}
    empty = zipfile.ZipInfo("x")
    empty.filename = empty.orig_filename = ""  # today: IndexError in zipfile's is_dir()
    members[empty] = png_bytes(noise_image(200))
    members["nulXb.png"] = png_bytes(noise_image(201))
    z = make_zip(tmp_path / "odd.zip", members)
    z.write_bytes(z.read_bytes().replace(b"nulXb.png", b"nul\0b.png"))  # zipfile cuts the name at the NUL
    m = run(z, tmp_path / "out", max_skipped=0.5)
    assert set(m["files"]) == set(good_members()) | set(odd)
    assert sorted((s["path"], s["reason"]) for s in m["skipped"]) == [
        ("", "unusable name in the archive (empty, or holds a NUL byte)"),
        ("nul\\x00b.png", "unusable name in the archive (empty, or holds a NUL byte)")]


def test_a_repeated_member_name_reads_the_first(tmp_path):
    first, second = png_bytes(noise_image(300)), png_bytes(noise_image(301))
    z = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        make_zip(z, [*good_members().items(), ("same.png", first), ("same.png", second)])
    m = run(z, tmp_path / "out", max_skipped=0.5)
    assert m["skipped"] == [{"path": "same.png",
                             "reason": "a second member of the same name in the archive (only the first is read)"}]
    info = m["files"]["same.png"]
    assert info["sha256"] == hashlib.sha256(first).hexdigest()
    assert np.array_equal(data.load_split(tmp_path / "out", info["split"])[info["row"]],
                          decode(first, ".png", 3, 32, "crop", "white", MAX_PIXELS))


def central_record(blob: bytes, name: bytes) -> int:
    """Offset of the central directory record of `name`."""
    i = 0
    while (i := blob.find(b"PK\x01\x02", i)) >= 0:
        n = struct.unpack("<H", blob[i + 28:i + 30])[0]
        if blob[i + 46:i + 46 + n] == name:
            return i
        i += 4
    raise AssertionError(name)


def damage(kind: str, path: Path) -> Path:
    """A .zip at `path` that cannot be read as a whole, `kind` of damage."""
    if kind == "not a zip":
        path.write_bytes(b"GIF89a this is not an archive at all" * 10)
        return path
    if kind == "empty file":
        path.write_bytes(b"")
        return path
    make_zip(path, {**good_members(), "caf\u00e9.png": png_bytes(noise_image(9))})
    blob = bytearray(path.read_bytes())
    if kind == "central directory":
        i = blob.find(b"PK\x01\x02")
        blob[i:i + 4] = b"XXXX"
    elif kind == "truncated":
        blob = blob[:len(blob) * 2 // 3]
    elif kind == "utf-8 flag, bytes not UTF-8":
        blob = bytearray(bytes(blob).replace("caf\u00e9.png".encode(), b"caf\xff\xfe.png"))
    elif kind == "central directory offset":
        blob[-6:-2] = struct.pack("<I", len(blob) * 4)
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize("kind, words", [
    ("central directory", ["damaged .zip archive"]),
    ("central directory offset", ["damaged .zip archive"]),
    ("utf-8 flag, bytes not UTF-8", ["damaged .zip archive", "not UTF-8"]),
    ("truncated", ["neither a folder nor a .zip", "cut short"]),
    ("not a zip", ["neither a folder nor a .zip"]),
    ("empty file", ["neither a folder nor a .zip"]),
])
def test_an_unreadable_archive_is_one_line_and_keeps_the_outputs(tmp_path, kind, words):
    out = tmp_path / "out"
    good = make_zip(tmp_path / "good.zip", good_members())
    run(good, out)
    before = snapshot(out)
    z = damage(kind, tmp_path / "images.zip")
    with pytest.raises(PrepareError) as e:
        run(z, out)
    msg = str(e.value)
    assert str(z) in msg and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    assert snapshot(out) == before


def test_an_empty_archive_names_it(tmp_path):
    z = make_zip(tmp_path / "empty.zip", {})
    with pytest.raises(PrepareError, match="contains no files"):
        run(z, tmp_path / "out")


def set_flag(blob: bytearray, info: zipfile.ZipInfo, bit: int) -> None:
    blob[info.header_offset + 6] |= bit
    blob[central_record(bytes(blob), info.filename.encode()) + 8] |= bit


def test_an_encrypted_member_is_skipped(tmp_path):
    z = make_zip(tmp_path / "enc.zip", good_members(), zipfile.ZIP_STORED)
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("img1.png")
    blob = bytearray(z.read_bytes())
    set_flag(blob, info, 0x1)
    z.write_bytes(bytes(blob))
    m = run(z, tmp_path / "out", max_skipped=0.5)
    assert m["skipped"] == [{"path": "img1.png", "reason": "unreadable: encrypted (needs a password)"}]


def set_sizes(blob: bytearray, info: zipfile.ZipInfo, size: int) -> None:
    """Make both headers of `info` claim `size` uncompressed bytes."""
    blob[info.header_offset + 22:info.header_offset + 26] = struct.pack("<I", size)
    c = central_record(bytes(blob), info.filename.encode())
    blob[c + 24:c + 28] = struct.pack("<I", size)


def test_a_member_that_declares_a_huge_size_is_skipped_unread(tmp_path):
    z = make_zip(tmp_path / "big.zip", good_members())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("img2.png")
    blob = bytearray(z.read_bytes())
    set_sizes(blob, info, 0xFFFF_FFFE)  # 4 GiB
    z.write_bytes(bytes(blob))
    m = run(z, tmp_path / "out", max_skipped=0.5)
    assert m["skipped"] == [{"path": "img2.png",
                             "reason": f"file too large: {0xFFFF_FFFE} bytes is over max_file_bytes=268435456"}]


BOMB_BYTES = 48 << 20


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[int, Path]:
    """Per compression: a zip whose member bomb.png says 1000 bytes and decompresses to 48 MiB."""
    folder = tmp_path_factory.mktemp("bombs")
    made = {}
    for compression in (zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
        z = make_zip(folder / f"bomb{compression}.zip", {**good_members(), "bomb.png": bytes(BOMB_BYTES)},
                     compression)
        with zipfile.ZipFile(z) as zf:
            info = zf.getinfo("bomb.png")
        blob = bytearray(z.read_bytes())
        set_sizes(blob, info, 1000)
        z.write_bytes(bytes(blob))
        made[compression] = z
    return made


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_a_member_larger_than_its_header_says_is_never_decompressed_past_it(tmp_path, bombs, compression):
    tracemalloc.start()
    try:
        m = run(bombs[compression], tmp_path / "out", max_skipped=0.5, workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [s["path"] for s in m["skipped"]] == ["bomb.png"]
    assert "CRC" in m["skipped"][0]["reason"], m["skipped"]
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB held decompressing a member that says 1000 bytes"


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_members_are_read(tmp_path, compression):
    deflated = make_zip(tmp_path / "d.zip", good_members(6))
    other = make_zip(tmp_path / "o.zip", good_members(6), compression)
    a, b = run(deflated, tmp_path / "a", max_skipped=0.0), run(other, tmp_path / "b", max_skipped=0.0, workers=2)
    assert a == b
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


# --- 16-bit and float images: memory per worker -----------------------------------------------------

def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png16(a: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (color type 0, 2, 4 or 6) of uint16 `a` (H, W) or (H, W, C): PIL cannot write 16-bit colour."""
    h, w = a.shape[:2]
    rows = np.ascontiguousarray(a.astype(">u2")).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 on every row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def deep_image(kind: str, side: int) -> tuple[bytes, str]:
    """A `side` x `side` image of `kind` (smooth ramps: quick to write and to read), its bytes and extension."""
    ramp = (np.add.outer(np.arange(side), np.arange(side)) * (65535 / (2 * side))).astype(np.uint16)
    f = io.BytesIO()
    if kind == "I;16":
        Image.fromarray(ramp).save(f, "PNG", compress_level=1)
        return f.getvalue(), ".png"
    if kind == "I":
        Image.fromarray(ramp.astype(np.int32)).save(f, "TIFF")
        return f.getvalue(), ".tif"
    if kind == "F":
        Image.fromarray(ramp.astype(np.float32) / 65535).save(f, "TIFF")
        return f.getvalue(), ".tif"
    if kind == "RGBA;16":
        return png16(np.stack([ramp, ramp[::-1], ramp.T, ramp // 2 + 20000], axis=-1), 6), ".png"
    raise ValueError(kind)


PEAK_CHILD = r"""
import io, sys
from pathlib import Path
from PIL import Image
from dcgan.images import decode
def vm(key):  # virtual memory: what the process allocated, whatever the kernel keeps resident
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
w = io.BytesIO()
Image.new("I;16", (8, 8)).save(w, "PNG")
decode(w.getvalue(), ".png", 3, 32, "crop", "white", 10**9)  # imports and first-use allocations, before measuring
path = Path(sys.argv[1])
blob = path.read_bytes()
base = vm("VmSize")  # (VmPeak is about the same here; if not, the growth below is overstated, never understated)
decode(blob, path.suffix, 3, 64, "crop", "white", 10**9)
print(vm("VmPeak") - base)
"""
# Measured (Linux, Pillow 13): 9.3 (RGBA;16) to 11.3 (I, F) bytes a pixel; before issue 19: 20 (RGBA;16) to 30 (I, F).
BYTES_PER_PIXEL = 14


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmPeak from /proc (Linux)")
@pytest.mark.parametrize("kind", ["I;16", "I", "F", "RGBA;16"])
def test_a_deep_image_decodes_within_the_stated_memory_per_pixel(tmp_path, kind):
    """docs/data.md states the bound: the peak memory of decoding one image, beside the file's bytes."""
    side = 2048
    blob, ext = deep_image(kind, side)
    path = tmp_path / f"deep{ext}"
    path.write_bytes(blob)
    with Image.open(path) as im:
        assert im.mode == {"RGBA;16": "RGBA"}.get(kind, kind)
    r = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(path)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    per_pixel = int(r.stdout) / side**2
    assert per_pixel < BYTES_PER_PIXEL, f"{kind}: {per_pixel:.1f} bytes a pixel at its peak"


def old_deep_to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """The conversion as it was (float64, whole image at once): the reference for the values."""
    a = a.astype(np.float64)
    if mode == "F":
        return np.clip(np.rint(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F<=1", "F"])
def test_deep_values_are_converted_as_before(mode):
    rng = np.random.default_rng(0)
    h, w = 1100, 700  # several bands of images.BAND_PIXELS
    assert h * w > 2 * images.BAND_PIXELS
    if mode in ("I;16", "I;16B"):
        a = rng.integers(0, 65536, (h, w)).astype(np.uint16)
        im = Image.fromarray(a)
        if mode == "I;16B":
            im = Image.frombytes("I;16B", (w, h), a.astype(">u2").tobytes())
    elif mode == "I":
        a = rng.integers(-70000, 140000, (h, w)).astype(np.int32)  # below 0 and over 65535 too
        im = Image.fromarray(a)
    else:
        a = rng.random((h, w), dtype=np.float32) * (1.0 if mode == "F<=1" else 400.0) - 0.1
        im = Image.fromarray(a)
    assert im.mode == mode.split("<")[0]
    got = np.asarray(images._deep_to_8bit(im))
    assert got.dtype == np.uint8 and np.array_equal(got, old_deep_to_8bit(a, im.mode))


def test_float_nan_is_black_and_does_not_pick_the_scale():
    a = np.full((10, 10), 0.5, np.float32)
    a[0, 0] = np.nan
    got = np.asarray(images._deep_to_8bit(Image.fromarray(a)))
    assert got[0, 0] == 0 and (got.ravel()[1:] == 128).all()


def test_compositing_in_bands_gives_the_same_pixels():
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (900, 700, 4), dtype=np.uint8))
    bg = (10, 200, 30)
    whole = Image.alpha_composite(Image.new("RGBA", rgba.size, bg + (255,)), rgba).convert("RGB")
    assert np.array_equal(np.asarray(images._over_background(rgba, bg)), np.asarray(whole))
    la = rgba.convert("LA")
    whole = Image.alpha_composite(Image.new("RGBA", la.size, bg + (255,)), la.convert("RGBA")).convert("RGB")
    assert np.array_equal(np.asarray(images._over_background(la, bg)), np.asarray(whole))


# --- a failure at any step leaves the previous outputs as they were -------------------------------------

@pytest.fixture
def previous(tmp_path):
    """(source, output folder, the bytes of every file in it): a previous run's outputs, the source grown since."""
    src, out = tmp_path / "src", tmp_path / "out"
    make_good(src, 8)
    run(src, out, val=0.3, test=0.3)
    before = snapshot(out)
    make_good(src, 3, start=100)
    return src, out, before


def failing_on(real, n: int, exc: BaseException):
    calls = []

    def f(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*a, **kw)
    return f


def partial_manifest(f, obj):
    f.write(b'{"counts": ')
    raise OSError(28, "No space left on device")


STEPS = {
    "decoding the 5th image": lambda mp: mp.setattr(data, "decode", failing_on(data.decode, 5, RuntimeError("x"))),
    "appending the 3rd row": lambda mp: mp.setattr(data.NpyAppender, "append",
                                                   failing_on(data.NpyAppender.append, 3, OSError(28, "full"))),
    "finishing the first array": lambda mp: mp.setattr(data.NpyAppender, "finish",
                                                        failing_on(data.NpyAppender.finish, 1, OSError(5, "I/O"))),
    "finishing the second array": lambda mp: mp.setattr(data.NpyAppender, "finish",
                                                         failing_on(data.NpyAppender.finish, 2, OSError(5, "I/O"))),
    "writing the manifest": lambda mp: mp.setattr(data, "_write_json", partial_manifest),
    "Ctrl-C writing the manifest": lambda mp: mp.setattr(data, "_write_json",
                                                         failing_on(data._write_json, 1, KeyboardInterrupt())),
    "writing the swap journal": lambda mp: mp.setattr(data, "atomic_write",
                                                      failing_on(data.atomic_write, 1, OSError(28, "full"))),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failure_at_each_step_keeps_the_previous_outputs(previous, monkeypatch, step):
    src, out, before = previous
    STEPS[step](monkeypatch)
    with pytest.raises((OSError, RuntimeError, KeyboardInterrupt)):
        run(src, out, val=0.3, test=0.3)
    assert snapshot(out) == before  # every byte, the manifest too, and no temporary file left


def test_a_failed_rename_at_any_point_of_the_swap_keeps_the_previous_outputs(previous, monkeypatch):
    src, out, before = previous
    real, k = os.replace, 0
    while True:  # fail the 1st rename, then the 2nd, ... until a run has no k-th rename left to fail
        k += 1
        monkeypatch.setattr(os, "replace", failing_on(real, k, OSError(28, "No space left on device")))
        try:
            run(src, out, val=0.3, test=0.3)
        except OSError:
            assert snapshot(out) == before, f"rename {k} failed"
            continue
        break
    # the journal, the old manifest, 3 x (an old array, a new one), the new manifest
    assert k == 10
    assert snapshot(out) != before and no_temporaries(out)
    assert len(json.loads((out / "manifest.json").read_text())["files"]) == 11


def test_a_failed_roll_back_is_finished_by_the_next_run(previous, monkeypatch):
    src, out, before = previous
    for k in range(2, 10):  # each rename after the journal; the roll-back fails too (the disk went away)
        with monkeypatch.context() as mp:
            mp.setattr(os, "replace", failing_on(os.replace, k, OSError(5, "I/O error")))
            mp.setattr(data, "_roll_back", failing_on(data._roll_back, 1, OSError(5, "I/O error")))
            with pytest.raises(OSError):
                run(src, out, val=0.3, test=0.3)
        assert (out / data.JOURNAL).exists()
        with pytest.raises(PrepareError, match="does not exist"):  # even a run that fails at once puts them back
            run(src.parent / "nowhere", out)
        assert snapshot(out) == before, k


KILL_CHILD = r"""
import os, signal, sys
from pathlib import Path
from dcgan import data
where, n = sys.argv[3], int(sys.argv[4])
owner, attr = (os, "replace") if where == "replace" else (data, "_clean_up")
real, calls = getattr(owner, attr), []
def killed(*a, **kw):
    calls.append(1)
    if len(calls) == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **kw)
setattr(owner, attr, killed)
data.prepare(Path(sys.argv[1]), Path(sys.argv[2]), data.Settings(32, 3, "crop", "white", 89478485),
             0.3, 0.3, 0.5, {"p": 1}, workers=1, progress=False)
"""


@pytest.mark.parametrize("where, n, outcome", [
    ("replace", 2, "old"),   # journal written, nothing moved yet
    ("replace", 5, "old"),   # the old manifest and train.npy moved away, the new train.npy in place
    ("replace", 9, "old"),   # every array swapped, the new manifest not yet
    ("_clean_up", 1, "new"),  # committed, the backups not yet deleted
])
def test_a_kill_during_the_swap_is_undone_or_finished_by_the_next_run(previous, tmp_path, where, n, outcome):
    src, out, before = previous
    run(src, tmp_path / "new", val=0.3, test=0.3)
    after = snapshot(tmp_path / "new")
    r = subprocess.run([sys.executable, "-c", KILL_CHILD, str(src), str(out), where, str(n)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (out / data.JOURNAL).exists()
    with pytest.raises(PrepareError, match="does not exist"):
        run(src.parent / "nowhere", out)
    assert snapshot(out) == (before if outcome == "old" else after)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the patched decode reaches workers by fork")
def test_a_worker_that_dies_is_one_line_and_keeps_the_outputs(previous, monkeypatch):
    src, out, before = previous
    real, victim = data.decode, (src / "img0003.png").read_bytes()

    def dying(blob, *a, **kw):
        if blob == victim:
            os._exit(1)  # as the kernel's OOM killer would
        return real(blob, *a, **kw)

    monkeypatch.setattr(data, "decode", dying)
    with pytest.raises(PrepareError, match="decoding process of prepare died") as e:
        run(src, out, workers=2)
    assert "img0003.png" in str(e.value) and "\n" not in str(e.value)
    assert snapshot(out) == before


# --- worker count -----------------------------------------------------------------------------------

class _PoolStarted(Exception):
    pass


@pytest.mark.parametrize("usable", [1, 3, 7])
def test_the_pool_has_as_many_workers_as_usable_cpus(tmp_path, monkeypatch, usable):
    src = tmp_path / "src"
    make_good(src, 20)
    sizes = []

    class Pool:
        def __init__(self, n, *a, **kw):
            sizes.append(n)
            raise _PoolStarted

    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # what the machine has: not what this process may use
    monkeypatch.setattr(data, "usable_cpus", lambda: usable, raising=False)
    monkeypatch.setattr(data, "ProcessPoolExecutor", Pool)
    if usable == 1:  # decoded in this process: no pool at all
        assert len(list(data.load_images(src, SETTINGS, progress=False))) == 20
        assert sizes == []
    else:
        with pytest.raises(_PoolStarted):
            list(data.load_images(src, SETTINGS, progress=False))
        assert sizes == [usable]
