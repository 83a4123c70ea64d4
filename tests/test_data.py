"""prepare(): bad files, ignored files, failure thresholds, zip sources, split stability, output format."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcgan import data
from dcgan.data import PrepareError
from dcgan.images import BadImage, decode

MAX_PIXELS = 89478485
SETTINGS = data.Settings(32, 3, "crop", "white", MAX_PIXELS)


def noise_image(seed: int, size=(40, 40), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def make_good(folder: Path, n: int, start: int = 0, prefix: str = "img") -> list[str]:
    """n distinct PNGs; returns their relative names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + n):
        name = f"{prefix}{i:04d}.png"
        noise_image(i).save(folder / name)
        names.append(name)
    return names


def png_bytes(im: Image.Image, fmt="PNG", **kw) -> bytes:
    import io

    f = io.BytesIO()
    im.save(f, fmt, **kw)
    return f.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + _chunk(b"IEND", b""))


def run(src: Path, out: Path, max_skipped=0.5, val=0.1, test=0.1, settings=SETTINGS, workers=1, params=None):
    return data.prepare(src, out, settings, val, test, max_skipped, params if params is not None else {"p": 1},
                        workers=workers, progress=False)


# --- bad files ------------------------------------------------------------------------------------

def write_bad_files(src: Path) -> dict[str, tuple[str, ...]]:
    """Bad files and the words their skip reason must contain."""
    good = png_bytes(noise_image(999, (64, 64)))
    jpg = png_bytes(noise_image(998, (64, 64)), "JPEG", quality=90)
    header_end = good.index(b"IDAT") + 4
    bad = {
        "zero.png": (b"", ("empty", "0 bytes")),
        "truncated.png": (good[: len(good) // 2], ("truncated",)),
        "truncated.jpg": (jpg[: len(jpg) // 2], ("truncated",)),
        "notes.png": (b"This is a text file, not a picture.\n" * 20, ("not an image",)),
        "corrupt.png": (good[:header_end] + bytes(range(256)) * ((len(good) - header_end) // 256), ("corrupt",)),
        "bomb.png": (bomb_png(100_000, 100_000), ("decompression bomb",)),
        "png-named.jpg": (good, ("wrong extension", "PNG", ".jpg")),
        "readme.txt": (b"hello", ("not an image extension", ".txt")),
    }
    for name, (content, _) in bad.items():
        (src / name).write_bytes(content)
    return {name: words for name, (_, words) in bad.items()}


def test_bad_files_are_skipped_with_a_reason(tmp_path):
    src = tmp_path / "src"
    good = make_good(src, 20)
    bad = write_bad_files(src)
    m = run(src, tmp_path / "out", max_skipped=0.5)
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == set(bad)
    for name, words in bad.items():
        for w in words:
            assert w.lower() in skipped[name].lower(), (name, skipped[name])
    assert sorted(m["files"]) == sorted(good)
    c = m["counts"]
    assert c["skipped"] == len(bad) and c["train"] + c["val"] + c["test"] == len(good)
    # the manifest on disk says the same
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["skipped"] == m["skipped"]


@pytest.mark.parametrize("w, h", [(100_000, 100_000), (12_000, 12_000), (9_500, 9_500)])
def test_decompression_bomb_rejected_from_header_quickly(w, h):
    # 9500^2 and 12000^2 are below PIL's own hard limit: our max_image_pixels must catch them
    blob = bomb_png(w, h)
    assert len(blob) < 200
    t0 = time.perf_counter()
    with pytest.raises(BadImage, match="decompression bomb"):
        decode(blob, ".png", 3, 32, "crop", "white", MAX_PIXELS)
    assert time.perf_counter() - t0 < 0.5  # judged from the header, nothing decoded


def test_max_image_pixels_both_sides(tmp_path):
    path = tmp_path / "a.png"
    noise_image(1, (64, 48)).save(path)
    blob = path.read_bytes()
    assert decode(blob, ".png", 3, 32, "crop", "white", 64 * 48).shape == (3, 32, 32)
    with pytest.raises(BadImage, match=r"64x48 = 3072 pixels is over max_image_pixels=3071"):
        decode(blob, ".png", 3, 32, "crop", "white", 64 * 48 - 1)


def test_max_image_pixels_setting_is_used_by_prepare(tmp_path):
    src = tmp_path / "src"
    make_good(src, 4)
    noise_image(7, (100, 100)).save(src / "big.png")
    settings = data.Settings(32, 3, "crop", "white", 40 * 40)
    m = run(src, tmp_path / "out", settings=settings, max_skipped=0.5)
    assert [s["path"] for s in m["skipped"]] == ["big.png"]
    assert "decompression bomb" in m["skipped"][0]["reason"]


def test_os_debris_and_hidden_files_are_ignored(tmp_path):
    src = tmp_path / "src"
    good = make_good(src, 5)
    good += [f"sub/{n}" for n in make_good(src / "sub", 2, start=100)]
    junk = [".hidden.png", "Thumbs.db", ".DS_Store", "desktop.ini", "sub/.DS_Store", "sub/thumbs.db",
            "__MACOSX/._img0000.png", "__MACOSX/sub/img0100.png", ".git/objects/x.png", "sub/.cache/y.png"]
    for j in junk:
        (src / j).parent.mkdir(parents=True, exist_ok=True)
        (src / j).write_bytes(b"\0\1junk")
    shutil.copy(src / "img0001.png", src / "__MACOSX" / "copy.png")  # even a valid image there is ignored
    assert data.list_source(src) == sorted(good)
    m = run(src, tmp_path / "out", max_skipped=0.0)
    assert m["skipped"] == [] and m["duplicates"] == []
    assert sorted(m["files"]) == sorted(good)

    # the same junk inside a zip (as macOS Finder writes it) is ignored too
    z = tmp_path / "src.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    assert data.list_source(z) == sorted(good)
    assert run(z, tmp_path / "zout", max_skipped=0.0)["skipped"] == []


# --- when the stage fails -------------------------------------------------------------------------

def nine_good_one_bad(src: Path):
    make_good(src, 9)
    (src / "broken.png").write_bytes(b"not a png at all")


def test_skipped_share_at_the_threshold_passes(tmp_path):
    src = tmp_path / "src"
    nine_good_one_bad(src)
    m = run(src, tmp_path / "out", max_skipped=0.1)  # 1 of 10 = 0.1, not more than 0.1
    assert m["counts"]["skipped"] == 1
    assert (tmp_path / "out" / "train.npy").exists()


def test_skipped_share_over_the_threshold_fails(tmp_path):
    src = tmp_path / "src"
    nine_good_one_bad(src)
    out = tmp_path / "out"
    with pytest.raises(PrepareError) as e:
        run(src, out, max_skipped=0.09)
    msg = str(e.value)
    assert "max_skipped_fraction" in msg and "broken.png" in msg and "1 of 10" in msg
    assert not (out / "manifest.json").exists()  # nothing half-written


def test_zero_skipped_allowed_only_when_all_good(tmp_path):
    src = tmp_path / "src"
    make_good(src, 3)
    assert run(src, tmp_path / "o1", max_skipped=0.0)["counts"]["skipped"] == 0
    (src / "z.png").write_bytes(b"")
    with pytest.raises(PrepareError, match="max_skipped_fraction"):
        run(src, tmp_path / "o2", max_skipped=0.0)


def test_no_usable_image_fails_even_when_skipping_is_allowed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.png").write_bytes(b"garbage")
    with pytest.raises(PrepareError, match="no usable image") as e:
        run(src, tmp_path / "out", max_skipped=1.0)
    assert str(src) in str(e.value) and "a.png" in str(e.value)


def test_missing_source_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such folder"
    with pytest.raises(PrepareError, match="does not exist") as e:
        run(missing, tmp_path / "out")
    assert str(missing) in str(e.value)


@pytest.mark.parametrize("junk", [[], [".DS_Store", "Thumbs.db", "__MACOSX/._x.png"]])
def test_empty_folder_names_the_path(tmp_path, junk):
    src = tmp_path / "empty dir"
    src.mkdir()
    for j in junk:
        (src / j).parent.mkdir(parents=True, exist_ok=True)
        (src / j).write_bytes(b"x")
    with pytest.raises(PrepareError, match="contains no files") as e:
        run(src, tmp_path / "out")
    assert str(src) in str(e.value)


def test_source_that_is_neither_folder_nor_zip(tmp_path):
    f = tmp_path / "images.tar"
    f.write_bytes(b"not an archive")
    with pytest.raises(PrepareError, match="neither a folder nor a .zip") as e:
        run(f, tmp_path / "out")
    assert str(f) in str(e.value)


# --- zip sources ----------------------------------------------------------------------------------

def test_zip_gives_the_same_arrays_as_the_folder(tmp_path):
    src = tmp_path / "src"
    make_good(src, 12)
    make_good(src / "nested dir", 6, start=50)
    rgba = Image.new("RGBA", (50, 30), (0, 0, 0, 0))
    rgba.paste((200, 10, 10, 255), (10, 5, 40, 25))
    rgba.save(src / "sprite ü.png")
    noise_image(70, (45, 60)).save(src / "photo.JPG", quality=90)
    noise_image(71, (30, 30), "L").save(src / "nested dir" / "grey.gif")
    (src / "bad.png").write_bytes(b"")
    z = tmp_path / "images.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__MACOSX/._photo.JPG", b"junk")
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    settings = data.Settings(32, 3, "pad", "#336699", MAX_PIXELS)
    mf = run(src, tmp_path / "from_dir", settings=settings, val=0.2, test=0.2, workers=1)
    mz = run(z, tmp_path / "from_zip", settings=settings, val=0.2, test=0.2, workers=2)
    assert mf["files"] == mz["files"] and mf["counts"] == mz["counts"] and mf["skipped"] == mz["skipped"]
    assert len(mf["files"]) == 21
    for split in data.SPLITS:
        a = np.load(tmp_path / "from_dir" / f"{split}.npy", allow_pickle=False)
        b = np.load(tmp_path / "from_zip" / f"{split}.npy", allow_pickle=False)
        assert a.shape == b.shape and np.array_equal(a, b), split


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_zip_member_is_skipped_not_a_crash(tmp_path, compression, workers):
    z = tmp_path / "images.zip"
    with zipfile.ZipFile(z, "w", compression) as zf:
        for i in range(9):
            zf.writestr(f"{i}.png", png_bytes(noise_image(i)))
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("4.png")
    blob = bytearray(z.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + 40  # inside 4.png's stored bytes
    blob[start:start + 16] = bytes(16)
    z.write_bytes(bytes(blob))
    m = run(z, tmp_path / "out", max_skipped=0.2, workers=workers)
    assert [s["path"] for s in m["skipped"]] == ["4.png"]
    reason = m["skipped"][0]["reason"]
    assert "unreadable" in reason and ("CRC" in reason or "decompress" in reason), reason
    assert len(m["files"]) == 8


# --- splits, duplicates, output format ------------------------------------------------------------

def test_split_of_is_deterministic_and_follows_fractions():
    assert data.split_of("0" * 64, 0.1, 0.1) == "test"
    assert data.split_of("f" * 64, 0.1, 0.1) == "train"
    assert data.split_of("0" * 64, 0.1, 0.0) == "val"
    assert data.split_of("1" + "0" * 63, 0.1, 0.0) == "val"  # 1/16 = 0.0625 < 0.1
    assert data.split_of("2" + "0" * 63, 0.1, 0.0) == "train"  # 2/16 = 0.125
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)]
    splits = [data.split_of(d, 0.15, 0.05) for d in digests]
    assert splits == [data.split_of(d, 0.15, 0.05) for d in digests]
    assert abs(splits.count("val") / len(splits) - 0.15) < 0.015
    assert abs(splits.count("test") / len(splits) - 0.05) < 0.01


def test_adding_files_keeps_earlier_splits_and_duplicates_are_kept_once(tmp_path):
    src = tmp_path / "src"
    first = make_good(src, 40)
    m1 = run(src, tmp_path / "out1", val=0.2, test=0.2)
    assert set(m1["files"]) == set(first)
    assert {f["split"] for f in m1["files"].values()} == {"train", "val", "test"}
    arrays1 = {s: np.load(tmp_path / "out1" / f"{s}.npy", allow_pickle=False) for s in data.SPLITS}

    # more files, some sorting before the old ones, plus exact duplicates of old files
    make_good(src, 40, start=1000, prefix="aaa")
    make_good(src, 20, start=2000, prefix="zzz")
    shutil.copy(src / "img0003.png", src / "img0003_copy.png")
    shutil.copy(src / "img0007.png", src / "zzz-dupe.png")
    m2 = run(src, tmp_path / "out2", val=0.2, test=0.2)
    arrays2 = {s: np.load(tmp_path / "out2" / f"{s}.npy", allow_pickle=False) for s in data.SPLITS}

    for name in first:
        old, new = m1["files"][name], m2["files"][name]
        assert new["split"] == old["split"] and new["sha256"] == old["sha256"], name
        assert old["sha256"] == hashlib.sha256((src / name).read_bytes()).hexdigest()
        assert np.array_equal(arrays1[old["split"]][old["row"]], arrays2[new["split"]][new["row"]])
    assert m2["counts"]["duplicates"] == 2
    assert sorted(m2["duplicates"], key=lambda d: d["path"]) == [
        {"path": "img0003_copy.png", "duplicate_of": "img0003.png"},
        {"path": "zzz-dupe.png", "duplicate_of": "img0007.png"},
    ]
    assert "img0003_copy.png" not in m2["files"] and "zzz-dupe.png" not in m2["files"]
    assert len(m2["files"]) == 100
    assert sum(len(a) for a in arrays2.values()) == 100


def test_duplicate_sorting_first_keeps_the_content_in_its_split(tmp_path):
    # the kept copy of duplicated content is the first by name; its split follows the content
    src = tmp_path / "src"
    make_good(src, 10)
    m1 = run(src, tmp_path / "out1", val=0.3, test=0.3)
    shutil.copy(src / "img0004.png", src / "a-copy.png")
    m2 = run(src, tmp_path / "out2", val=0.3, test=0.3)
    assert m2["duplicates"] == [{"path": "img0004.png", "duplicate_of": "a-copy.png"}]
    assert m2["files"]["a-copy.png"]["split"] == m1["files"]["img0004.png"]["split"]
    assert m2["files"]["a-copy.png"]["sha256"] == m1["files"]["img0004.png"]["sha256"]


def test_outputs_and_manifest(tmp_path):
    src = tmp_path / "src"
    names = make_good(src, 30)
    shutil.copy(src / names[0], src / "zz-duplicate.png")
    (src / "empty.png").write_bytes(b"")
    out = tmp_path / "out" / "prepared"
    params = {"source": str(src), "image_size": 64, "channels": 1}
    settings = data.Settings(64, 1, "crop", "white", MAX_PIXELS)
    m = run(src, out, settings=settings, val=0.2, test=0.2, params=params)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.npy", "train.npy", "val.npy"]
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["params"] == params
    c = m["counts"]
    assert set(c) == {"train", "val", "test", "duplicates", "skipped"}
    assert c["duplicates"] == 1 and c["skipped"] == 1
    assert c["train"] + c["val"] + c["test"] + c["duplicates"] + c["skipped"] == 32
    assert m["shape"] == [1, 64, 64]
    for split in data.SPLITS:
        arr = data.load_split(out, split)
        arr2 = np.load(out / f"{split}.npy", allow_pickle=False)
        assert np.array_equal(arr, arr2)
        assert arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape == (c[split], 1, 64, 64)
    # each file's row holds that file's pixels
    for name, info in m["files"].items():
        expect = decode((src / name).read_bytes(), ".png", 1, 64, "crop", "white", MAX_PIXELS)
        assert np.array_equal(data.load_split(out, info["split"])[info["row"]], expect), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.mark.parametrize("size, channels, resize", [(120, 3, "crop"), (17, 1, "pad"), (512, 1, "crop")])
def test_any_image_size_gives_arrays_of_that_size(tmp_path, size, channels, resize):
    src = tmp_path / "src"
    folder = src / "sprites"
    folder.mkdir(parents=True)
    for i, wh in enumerate([(150, 150), (200, 90), (13, 40)]):   # larger, wider, smaller than the size
        noise_image(i, wh).save(folder / f"s{i}.png")
    settings = data.Settings(size, channels, resize, "white", MAX_PIXELS)
    m = run(src, tmp_path / "out", val=0.0, test=0.0, settings=settings)
    assert m["shape"] == [channels, size, size]
    assert data.load_split(tmp_path / "out", "train").shape == (3, channels, size, size)


def test_empty_split_still_written_with_the_right_shape(tmp_path):
    src = tmp_path / "src"
    make_good(src, 3)
    m = run(src, tmp_path / "out", val=0.0, test=0.0)
    assert m["counts"]["train"] == 3
    for split in ("val", "test"):
        arr = np.load(tmp_path / "out" / f"{split}.npy", allow_pickle=False)
        assert arr.shape == (0, 3, 32, 32) and arr.dtype == np.uint8


def test_rerun_overwrites_outputs(tmp_path):
    src = tmp_path / "src"
    make_good(src, 5)
    out = tmp_path / "out"
    run(src, out, val=0.0, test=0.0)
    make_good(src, 2, start=10)
    run(src, out, val=0.0, test=0.0)
    assert np.load(out / "train.npy", allow_pickle=False).shape[0] == 7


def test_max_image_pixels_above_pils_own_limit_is_ours_to_set():
    # 15000^2 is over PIL's hard limit (2 x 89.5M); a user who raised max_image_pixels gets a decode
    # attempt (here: the tiny fake IDAT is truncated), not PIL's bomb error
    blob = bomb_png(15_000, 15_000)
    with pytest.raises(BadImage) as e:
        decode(blob, ".png", 1, 32, "crop", "white", 300_000_000)
    assert "decompression bomb" not in str(e.value) and "truncated" in str(e.value)
    with pytest.raises(BadImage, match="over max_image_pixels"):
        decode(blob, ".png", 1, 32, "crop", "white", MAX_PIXELS)


# --- file size limit (max_file_bytes) -------------------------------------------------------------

def big_bmp() -> bytes:
    """A 200x200 BMP: 120 KB uncompressed, a few hundred bytes deflated."""
    return png_bytes(Image.new("RGB", (200, 200), (10, 200, 30)), "BMP")


def test_file_over_max_file_bytes_is_skipped_unread(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good = make_good(src, 6)  # 40x40 noise PNGs, about 5 KB each
    (src / "big.bmp").write_bytes(big_bmp())
    size = (src / "big.bmp").stat().st_size
    opened = []
    real_open = open

    def spy_open(path, *a, **kw):
        opened.append(Path(path).name)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(data, "open", spy_open, raising=False)  # data._read's `open`
    settings = data.Settings(32, 3, "crop", "white", MAX_PIXELS, max_file_bytes=20_000)
    m = run(src, tmp_path / "out", settings=settings, max_skipped=0.5, workers=1)
    assert m["skipped"] == [{"path": "big.bmp",
                             "reason": f"file too large: {size} bytes is over max_file_bytes=20000"}]
    assert sorted(m["files"]) == good
    assert "big.bmp" not in opened and len(opened) == len(good)  # judged from stat, never opened
    # at the limit is allowed; the setting reaches the worker processes too
    settings = data.Settings(32, 3, "crop", "white", MAX_PIXELS, max_file_bytes=size)
    assert run(src, tmp_path / "out2", settings=settings, workers=2)["skipped"] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_zip_member_over_max_file_bytes_is_skipped_from_its_header(tmp_path, monkeypatch, workers):
    z = tmp_path / "images.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"{i}.png", png_bytes(noise_image(i)))
        zf.writestr("sub/big.bmp", big_bmp())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("sub/big.bmp")
    assert info.compress_size < 20_000 < info.file_size  # the uncompressed size is what counts
    read = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *a, **kw):
        read.append(getattr(name, "filename", name))
        return real_open(self, name, *a, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)  # seen in this process only (workers=1)
    settings = data.Settings(32, 3, "crop", "white", MAX_PIXELS, max_file_bytes=20_000)
    m = run(z, tmp_path / "out", settings=settings, max_skipped=0.5, workers=workers)
    assert m["skipped"] == [{"path": "sub/big.bmp",
                             "reason": f"file too large: {info.file_size} bytes is over max_file_bytes=20000"}]
    assert len(m["files"]) == 6
    if workers == 1:
        assert "sub/big.bmp" not in read and len(read) == 6


# --- the arrays: exactly np.save(np.stack(...)), written atomically ------------------------------

def test_arrays_are_byte_identical_to_np_save_of_the_stacked_images(tmp_path):
    import io

    src = tmp_path / "src"
    make_good(src, 30)
    noise_image(5, (70, 50), "L").save(src / "grey.gif")
    shutil.copy(src / "img0002.png", src / "zz-copy.png")
    (src / "bad.png").write_bytes(b"garbage")
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        m = run(src, out, val=0.2, test=0.0, max_skipped=0.5, workers=workers)
        assert m["counts"]["test"] == 0
        for split in data.SPLITS:
            names = sorted((n for n, f in m["files"].items() if f["split"] == split),
                           key=lambda n: m["files"][n]["row"])
            assert names == sorted(names)  # rows follow name order
            decoded = [decode((src / n).read_bytes(), Path(n).suffix, 3, 32, "crop", "white", MAX_PIXELS)
                       for n in names]
            expect = io.BytesIO()
            np.save(expect, np.stack(decoded) if decoded else np.zeros((0, 3, 32, 32), np.uint8),
                    allow_pickle=False)
            assert (out / f"{split}.npy").read_bytes() == expect.getvalue(), (workers, split)


def test_npy_appender_rewrites_when_the_header_grows(tmp_path, monkeypatch):
    # numpy pads the header so the row count can grow in place; if a version did not, the rows are
    # copied behind a longer header and the file is still a valid .npy
    real = data._npy_header

    def header(shape):
        h = real(shape)
        if shape[0] == 0:
            return h
        body = h[10:].rstrip(b" \n") + b" " * 64
        total = -(-(10 + len(body) + 1) // 64) * 64
        return h[:8] + (total - 10).to_bytes(2, "little") + body.ljust(total - 11) + b"\n"

    monkeypatch.setattr(data, "_npy_header", header)
    rows = np.random.default_rng(0).integers(0, 256, (5, 2, 3, 3), dtype=np.uint8)
    a = data.NpyAppender(tmp_path / "x.npy", (2, 3, 3))
    for r in rows:
        a.append(r)
    a.finish()
    a.commit()
    assert len(header((5, 2, 3, 3))) != len(real((0, 2, 3, 3)))
    assert np.array_equal(np.load(tmp_path / "x.npy", allow_pickle=False), rows)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_prepare_keeps_the_old_outputs_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_good(src, 12)
    out = tmp_path / "out"
    run(src, out, val=0.2, test=0.2)
    before = snapshot(out)
    make_good(src, 4, start=100)
    calls = []

    def failing_decode(*a, **kw):
        calls.append(1)
        if len(calls) == 9:
            raise RuntimeError("disk on fire")
        return decode(*a, **kw)

    monkeypatch.setattr(data, "decode", failing_decode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(src, out, val=0.2, test=0.2, workers=1)
    assert snapshot(out) == before  # old arrays and manifest untouched, no .tmp left
    # a failure before any output existed leaves no output folder behind
    monkeypatch.setattr(data, "decode", decode)
    (src / "broken.png").write_bytes(b"")
    with pytest.raises(PrepareError):
        run(src, tmp_path / "new" / "out", max_skipped=0.0)
    assert not (tmp_path / "new" / "out").exists()


KILL_CHILD = r"""
import sys, time
from pathlib import Path
from dcgan import data, images
real, calls = data.decode, []
def slow(*a, **kw):  # 300 images take 6 s; after 100 say so, and wait to be killed
    calls.append(1)
    if len(calls) == 100:
        Path(sys.argv[3]).touch()
    time.sleep(0.02)
    return real(*a, **kw)
data.decode = slow
data.prepare(Path(sys.argv[1]), Path(sys.argv[2]), data.Settings(32, 3, "crop", "white", 89478485),
             0.2, 0.2, 0.5, {}, workers=1, progress=False)
"""


def test_killed_prepare_leaves_no_half_array(tmp_path):
    import signal
    import subprocess
    import sys

    src = tmp_path / "src"
    make_good(src, 300)
    out = tmp_path / "out"
    root = Path(data.__file__).resolve().parents[1]
    halfway = tmp_path / "halfway"
    proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(src), str(out), str(halfway)], cwd=root)
    try:
        deadline = time.monotonic() + 60
        while not halfway.exists():  # 100 of 300 images decoded and written
            assert proc.poll() is None, "prepare ended before it could be killed"
            assert time.monotonic() < deadline, "prepare never got a third of the way"
            time.sleep(0.02)
        assert len(list(out.glob(".*.npy.*.tmp"))) == 3  # the arrays under construction
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []  # no final file at all
    # the next run completes and clears what the killed one left
    m = run(src, out, val=0.2, test=0.2)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.npy", "train.npy", "val.npy"]
    assert sum(m["counts"][s] for s in data.SPLITS) == 300


# --- load_split -----------------------------------------------------------------------------------

def test_load_split_is_a_read_only_memory_map(tmp_path):
    src = tmp_path / "src"
    make_good(src, 8)
    m = run(src, tmp_path / "out", val=0.0, test=0.0)
    arr = data.load_split(tmp_path / "out", "train")
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert arr.shape == (m["counts"]["train"], 3, 32, 32)
    assert np.array_equal(arr, np.load(tmp_path / "out" / "train.npy", allow_pickle=False))
    with pytest.raises(ValueError):
        arr[0, 0, 0, 0] = 1
    empty = data.load_split(tmp_path / "out", "val")
    assert empty.shape == (0, 3, 32, 32) and empty.dtype == np.uint8


def _save(path: Path, arr) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=True)


@pytest.mark.parametrize("kind, words", [
    ("missing", ["not found"]),
    ("empty", ["not a valid .npy"]),
    ("text", ["not a valid .npy"]),
    ("truncated", ["not a valid .npy"]),
    ("pickled", ["not a valid .npy"]),
    ("npz", ["not a .npy array"]),
    ("float", ["float32", "not uint8 images"]),
    ("3d", ["(4, 32, 32)", "not uint8 images"]),
])
def test_load_split_errors_are_one_line_naming_the_file(tmp_path, kind, words):
    path = tmp_path / "train.npy"
    good = np.zeros((4, 3, 32, 32), np.uint8)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an array\n" * 10)
    elif kind == "truncated":
        _save(path, good)
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "pickled":
        _save(path, np.array([{"a": 1}], dtype=object))
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, train=good)
    elif kind == "float":
        _save(path, good.astype(np.float32))
    elif kind == "3d":
        _save(path, good[:, 0])
    with pytest.raises(PrepareError) as e:
        data.load_split(tmp_path, "train")
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_random_crops_follow_seed_and_content_so_adding_files_moves_no_other_crop(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        noise_image(i, (80, 50)).save(src / f"a{i}.png")
    settings = data.Settings(32, 3, "random", "white", MAX_PIXELS, crop_fraction=0.6, seed=7)

    def rows(out):
        m = json.loads((out / "manifest.json").read_text())
        return {name: data.load_split(out, info["split"])[info["row"]].copy() for name, info in m["files"].items()}
    run(src, tmp_path / "one", val=0.0, test=0.0, settings=settings)
    before = rows(tmp_path / "one")
    for i in range(4, 7):                                     # more images: the first four keep their crops
        noise_image(i, (80, 50)).save(src / f"a{i}.png")
    run(src, tmp_path / "two", val=0.0, test=0.0, settings=settings)
    after = rows(tmp_path / "two")
    assert len(after) == 7 and all(np.array_equal(before[k], after[k]) for k in before)
    other = data.Settings(32, 3, "random", "white", MAX_PIXELS, crop_fraction=0.6, seed=8)
    run(src, tmp_path / "three", val=0.0, test=0.0, settings=other)
    moved = rows(tmp_path / "three")
    assert sum(not np.array_equal(after[k], moved[k]) for k in after) >= 5   # another seed, other crops
