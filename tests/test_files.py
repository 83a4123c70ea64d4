"""dcgan.files: atomic writes keep the old file whole when the writer fails, and leave no debris."""
import os
import stat

import pytest

from dcgan.files import atomic_write, atomic_write_bytes, atomic_write_text


def test_replaces_whole_file_shareable_mode(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_text(path, "old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(path.parent) == ["a.json"]


def test_failed_writer_keeps_old_content_and_no_temp_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous model")

    def half_then_crash(f):
        f.write(b"half of a new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_crash, fsync=True)
    assert path.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["model.pt"]
