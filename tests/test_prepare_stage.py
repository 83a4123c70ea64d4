"""prepare on the real Pokémon sprites (809 PNG/JPG, RGBA and palette PNGs with transparency)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import POKEMON
from dcgan import data

IMAGES = POKEMON / "images"
EXPECTED_FILES = 809


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not IMAGES.is_dir():
        pytest.skip(f"Pokémon dataset not found at {IMAGES}")
    out = tmp_path_factory.mktemp("pokemon") / "prepared"
    settings = data.Settings(image_size=32, channels=3, resize="crop", background="white",
                             max_image_pixels=89478485)
    params = {"source": str(IMAGES), "image_size": 32, "channels": 3, "background": "white"}
    m = data.prepare(IMAGES, out, settings, 0.1, 0.1, 0.0, params, workers=None, progress=False)
    arrays = {s: np.load(out / f"{s}.npy", allow_pickle=False) for s in data.SPLITS}
    return m, arrays


def transparent_corner_sprite(mode: str) -> str:
    """The first sprite of `mode` whose top-left 16x16 corner is fully transparent."""
    for path in sorted(IMAGES.iterdir()):
        if path.suffix.lower() != ".png":
            continue
        with Image.open(path) as im:
            if im.mode != mode or (mode == "P" and "transparency" not in im.info):
                continue
            alpha = np.asarray(im.convert("RGBA"))[:16, :16, 3]
            if alpha.max() == 0:
                return path.name
    pytest.skip(f"no {mode} sprite with a transparent corner in {IMAGES}")


def test_counts_add_up(prepared):
    m, arrays = prepared
    names = data.list_source(IMAGES)
    assert len(names) == EXPECTED_FILES
    c = m["counts"]
    assert c["train"] + c["val"] + c["test"] + c["duplicates"] + c["skipped"] == len(names)
    assert c["skipped"] == 0 and m["skipped"] == []
    assert len(m["files"]) + c["duplicates"] == len(names)
    for split in data.SPLITS:
        assert arrays[split].shape == (c[split], 3, 32, 32) and arrays[split].dtype == np.uint8
    # the hash split gives each held-out set roughly its share
    assert 0.05 < c["val"] / len(m["files"]) < 0.15 and 0.05 < c["test"] / len(m["files"]) < 0.15


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_transparent_corner_is_white(prepared, mode):
    m, arrays = prepared
    name = transparent_corner_sprite(mode)
    info = m["files"][name]
    row = arrays[info["split"]][info["row"]]
    for y, x in [(0, 0), (1, 1), (2, 0)]:
        assert tuple(int(v) for v in row[:, y, x]) == (255, 255, 255), (name, y, x, row[:, y, x])
    assert row.min() < 200, name  # and the sprite itself is there, not a blank image


def test_sprites_are_not_on_black(prepared):
    # with transparency composited over white, almost every sprite's top-left pixel is white
    _, arrays = prepared
    corners = np.concatenate([a[:, :, 0, 0] for a in arrays.values()])
    assert (corners == 0).all(axis=1).mean() < 0.01
    assert (corners == 255).all(axis=1).mean() > 0.8


def test_stage_skips_files_over_max_file_bytes_before_reading(tmp_path):
    """stages/prepare.py passes max_file_bytes through: every sprite larger than it is skipped, with its size."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from conftest import ROOT

    if not IMAGES.is_dir():
        pytest.skip(f"Pokémon dataset not found at {IMAGES}")
    sizes = sorted(p.stat().st_size for p in IMAGES.iterdir())
    limit = sizes[len(sizes) * 3 // 4]  # about a quarter of the files are larger
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p.update(source=str(IMAGES), image_size=32, channels=3, max_file_bytes=limit, max_skipped_fraction=0.5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    out = tmp_path / "prepared"
    r = subprocess.run([sys.executable, "stages/prepare.py", "--params", str(tmp_path / "params.yaml"),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["max_file_bytes"] == limit
    too_large = {os.path.basename(n): os.stat(IMAGES / n).st_size for n in os.listdir(IMAGES)
                 if os.stat(IMAGES / n).st_size > limit}
    assert 150 < len(too_large) < 250
    assert {s["path"]: s["reason"] for s in m["skipped"]} == {
        n: f"file too large: {size} bytes is over max_file_bytes={limit}" for n, size in too_large.items()}
    assert len(m["files"]) + m["counts"]["duplicates"] == EXPECTED_FILES - len(too_large)
    assert "file too large" in r.stdout  # the first skipped files are listed with their reason
    for split in data.SPLITS:
        arr = data.load_split(out, split)
        assert isinstance(arr, np.memmap) and arr.shape == (m["counts"][split], 3, 32, 32)
