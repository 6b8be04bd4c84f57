import os
import stat

import pytest

from avis.io.atomic import atomic_open, atomic_write_json


def test_atomic_write_replaces_whole_file_with_plain_permissions(tmp_path):
    p = tmp_path / "out.json"
    atomic_write_json({"a": 1}, p)
    assert p.read_text() == '{"a": 1}'
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert [f.name for f in tmp_path.iterdir()] == ["out.json"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "ckpt.bin"
    p.write_bytes(b"old")
    with pytest.raises(OSError), atomic_open(p, "wb") as f:
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt.bin"]
