"""Videos avis writes (issue 23): overlay labels that do not collide and scale with the frame, mp4 files with
their index first (faststart), written atomically through a temporary path."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from data_tools.exporters import overlay


def top_level_boxes(path: Path) -> list[str]:
    """The order of an mp4's top-level boxes (ftyp, moov, mdat, ...)."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
        elif size == 0:
            size = len(data) - i
        out.append(kind.decode("latin-1"))
        i += size
    return out


def _faststart(path) -> bool:
    boxes = top_level_boxes(path)
    return "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat")


def _square(h, w, y0, x0, size):
    m = np.zeros((h, w), bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def test_labels_of_touching_objects_do_not_collide_and_stay_in_the_frame():
    H, W = 120, 200
    # three objects whose preferred label places (just above their top-left corners) coincide
    masks = [_square(H, W, 10, 20, 40), _square(H, W, 12, 24, 30), _square(H, W, 14, 22, 20)]
    font = overlay.label_font(H, W)
    from PIL import Image, ImageDraw

    d = ImageDraw.Draw(Image.new("RGB", (W, H)))
    sizes = []
    for k in range(3):
        left, top, right, bottom = d.textbbox((0, 0), f"{k + 1} bell 0.9{k}", font=font)
        sizes.append((right - left + 4, bottom - top + 4))
    anchors = []
    for m in masks:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        anchors.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    boxes = overlay.layout_labels(anchors, sizes, (H, W))
    for i, a in enumerate(boxes):
        assert 0 <= a[0] < a[2] <= W and 0 <= a[1] < a[3] <= H
        for b in boxes[i + 1:]:
            assert overlay._overlap(a, b) == 0, boxes
    # the first (the best-scoring track's) keeps its preferred place: just above its mask
    assert boxes[0][1] == anchors[0][1] - sizes[0][1] or boxes[0][1] == 0
    # the old placement (every label just above its own corner) made them overlap
    old = [(x0, max(0, y0 - h), x0 + w, max(0, y0 - h) + h) for (x0, y0, _, _), (w, h) in zip(anchors, sizes)]
    assert overlay._overlap(old[0], old[1]) > 0


def test_drawn_labels_do_not_overlap_in_the_pixels(monkeypatch):
    H, W = 120, 200
    frame = np.full((H, W, 3), 30, np.uint8)
    items = [(_square(H, W, 30, 40, 40), 1, "1 bell 0.90"), (_square(H, W, 32, 44, 40), 2, "2 siren 0.95")]
    seen = []
    real = overlay.layout_labels
    monkeypatch.setattr(overlay, "layout_labels", lambda *a: seen.append(real(*a)) or seen[-1])
    img = overlay.draw(frame, items)
    best, other = seen[0]  # placed in priority order: the last item (drawn on top) first
    assert overlay._overlap(best, other) == 0
    for box, tid in ((best, 2), (other, 1)):
        c = np.array([int(v) for v in overlay.track_color(tid)], np.uint8)
        # the label's rectangle is drawn in its track's colour, not covered by the other's
        assert (img[box[1], box[0]] == c).all() and (img[box[3] - 1, box[2] - 1] == c).all()
    assert best[3] <= 32  # the best sits just above its mask


@pytest.mark.parametrize("short", [96, 360, 1080])
def test_labels_and_outlines_scale_with_the_frame(short):
    H, W = short, short * 16 // 9
    font = overlay.label_font(H, W)
    assert font.size == min(48, max(8, round(0.045 * short)))  # 8, 16, 48 px
    frame = np.zeros((H, W, 3), np.uint8)
    m = _square(H, W, H // 3, W // 3, H // 3)
    img = overlay.draw(frame, [(m, 1, "1 bell 0.99")])
    c = np.array([int(v) for v in overlay.track_color(1)], np.uint8)
    label_rows = np.flatnonzero(np.all(img[: H // 3] == c, axis=-1).any(axis=1))
    # the label's height is about its font's: a constant share of the frame
    assert 0.8 * font.size <= label_rows.size <= 2.0 * font.size
    # the outline thickens with the frame (1 px at 96 and 360, 3 px at 1080)
    row = np.all(img[H // 2] == c, axis=-1)
    left = np.flatnonzero(row)[0]
    assert np.flatnonzero(row[left:] == 0)[0] == overlay.outline_width(H, W)


def test_mp4_writers_put_the_index_first(tmp_path):
    from data_tools.synth import write_mp4

    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    wav = np.zeros(16000 // 2, np.float32)
    write_mp4(tmp_path / "s.mp4", frames, wav, 12.0, 16000)
    assert _faststart(tmp_path / "s.mp4")
    # the overlay of that video (JPEG-free: the mp4 itself), through the exporter
    gt = {"videos": [{"id": 1, "width": 48, "height": 32, "length": 6, "fps": 12.0, "video_file": "s.mp4"}],
          "annotations": [], "categories": [{"id": 1, "name": "bell"}]}
    from avis.io import masks as mask_io

    m = np.zeros((32, 48), np.uint8)
    m[4:20, 4:20] = 1
    tracks = [{"video_id": 1, "category_id": 1, "score": 0.9, "track_id": 1,
               "segmentations": [mask_io.encode(m)] * 6}]
    root = overlay.write_overlay(tracks, gt, tmp_path / "exp", videos_dir=tmp_path)
    assert _faststart(root / "s.mp4")
    from avis.view.media import encode_frames

    encode_frames(tmp_path / "v.mp4", frames, np.arange(6) / 12.0, wav, 16000)
    assert _faststart(tmp_path / "v.mp4")
    # nothing temporary is left beside them
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["s.mp4", "v.mp4"]
    assert [p.name for p in (root).iterdir()] == ["s.mp4"]


def test_a_failed_mp4_write_leaves_the_earlier_file(tmp_path, monkeypatch):
    from avis.io.atomic import atomic_path

    target = tmp_path / "o.mp4"
    target.write_bytes(b"earlier")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".mp4"
            tmp.write_bytes(b"half")
            raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]
