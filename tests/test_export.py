"""avis export: every readable format round-trips (export -> import -> same masks, ids, categories), the
CVAT XML has the structure CVAT documents, PNG overlaps go to the higher score, the overlay video keeps the
source's frame count and audio."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from PIL import Image

from avis.errors import ConfigError, InputError
from avis.io import masks as mask_io
from avis.io import ytvis
from data_tools import export as export_cmd
from data_tools.exporters import coco, cvat, png
from data_tools.exporters import ytvis as ytvis_export
from data_tools.exporters.common import davis_palette, select_tracks, video_names

H, W = 20, 24
LENGTHS = {1: 5, 2: 4}


def _rect(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _ring():
    """Two parts, one with a hole: exercises run lengths that start inside, holes and components."""
    m = _rect(1, 9, 1, 9)
    m[3:6, 3:6] = 0
    m[12:20, 20:24] = 1  # touches the bottom-right border
    return m


def _gt():
    return {
        "videos": [
            {"id": 1, "width": W, "height": H, "length": 5, "file_names": [f"clipA/{t:05d}.jpg" for t in range(5)],
             "fps": 5.0, "video_file": "clipA.mp4"},
            {"id": 2, "width": W, "height": H, "length": 4, "file_names": [f"clipB/{t:05d}.jpg" for t in range(4)],
             "frame_times": [0.0, 0.25, 0.5, 0.75]},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}],
    }


def _enc(masks):
    return [None if m is None else mask_io.encode(m) for m in masks]


def _results(with_track_ids=False):
    a = [_rect(1, 6, 1 + t, 7 + t) for t in range(4)] + [None]
    b = [None, _rect(10, 16, 2, 9), None, _rect(11, 17, 3, 10), _rect(12, 18, 4, 11)]  # a gap at frame 2
    c = [_rect(0, 3, 18, 24)] * 5  # low score
    d = [None, None, _rect(15, 19, 15, 20), None, None]  # one frame only
    e = [_ring(), _ring(), None, _rect(0, 20, 0, 24)]  # full-frame mask at the end
    res = [
        {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": _enc(a)},
        {"video_id": 1, "category_id": 2, "score": 0.7, "segmentations": _enc(b)},
        {"video_id": 1, "category_id": 5, "score": 0.3, "segmentations": _enc(c)},
        {"video_id": 1, "category_id": 2, "score": 0.8, "segmentations": _enc(d)},
        {"video_id": 2, "category_id": 5, "score": 0.6, "segmentations": _enc(e)},
    ]
    if with_track_ids:
        for r, tid in zip(res, (7, 3, 11, 4, 7)):
            r["track_id"] = tid
    return res


@pytest.fixture
def files(tmp_path):
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(_gt()))
    res_path.write_text(json.dumps(_results()))
    return gt_path, res_path


def _key(tracks):
    """(video, track) -> (category, score, masks as a T x H x W array)."""
    out = {}
    for t in tracks:
        masks = np.stack([np.zeros((H, W), np.uint8) if s is None else mask_io.decode(s)
                          for s in t["segmentations"]])
        out[(t["video_id"], t["track_id"])] = (t["category_id"], round(t["score"], 5), masks)
    return out


def _assert_same(expected, got):
    e, g = _key(expected), _key(got)
    assert sorted(e) == sorted(g)
    for k in e:
        assert e[k][0] == g[k][0], k
        assert e[k][1] == g[k][1], k
        np.testing.assert_array_equal(e[k][2], g[k][2], err_msg=str(k))


def test_select_tracks_filters_and_assigns_ids():
    gt = _gt()
    res = ytvis.normalize_results(_results(), gt)
    tracks = select_tracks(res, gt, score_threshold=0.5, min_frames=2)
    assert [(t["video_id"], t["track_id"], t["score"]) for t in tracks] == [(1, 1, 0.9), (1, 2, 0.7), (2, 1, 0.6)]
    assert len(select_tracks(res, gt, 0.0, 1)) == 5
    assert len(select_tracks(res, gt, 0.0, 1, max_per_video=1)) == 2
    # the results' own track ids are kept when unique within each video
    res = ytvis.normalize_results(_results(with_track_ids=True), gt)
    assert [t["track_id"] for t in select_tracks(res, gt, 0.0, 1)] == [7, 4, 3, 11, 7]
    # an empty mask counts as absent
    res[0]["segmentations"] = [mask_io.encode(np.zeros((H, W)))] * 5
    assert all(t["score"] != 0.9 for t in select_tracks(res, gt, 0.0, 1))


READERS = {
    "ytvis": lambda out, gt: ytvis_export.read_results(out / "results.json", gt),
    "ytvis-zip": lambda out, gt: ytvis_export.read_results(out / "results.zip", gt),
    "ytvis-annotations": lambda out, gt: ytvis_export.read_results(out / "ytvis_annotations.json", gt),
    "coco": lambda out, gt: coco.read_coco(out / "coco_instances.json", gt),
    "png": lambda out, gt: png.read_png(out / "png", gt),
    "cvat": lambda out, gt: [t for p in sorted((out / "cvat").glob("*.xml")) for t in cvat.read_cvat(p, gt)],
}


@pytest.mark.parametrize("fmt", sorted(READERS))
@pytest.mark.parametrize("track_ids", [False, True])
def test_round_trip(files, tmp_path, fmt, track_ids):
    gt_path, res_path = files
    res_path.write_text(json.dumps(_results(with_track_ids=track_ids)))
    out = tmp_path / "out"
    written = export_cmd.export(res_path, gt_path, [fmt], out, score_threshold=0.5, min_frames=2)
    assert written[fmt].exists()
    gt = ytvis.load_annotations(gt_path)
    expected = select_tracks(ytvis.load_results(res_path, gt=gt), gt, 0.5, 2)
    assert len(expected) == 3
    _assert_same(expected, READERS[fmt](out, gt))


def test_default_thresholds_keep_everything_for_servers_only(files, tmp_path):
    gt_path, res_path = files
    export_cmd.export(res_path, gt_path, ["ytvis,coco"], tmp_path)
    assert len(json.loads((tmp_path / "results.json").read_text())) == 5
    coco_data = json.loads((tmp_path / "coco_instances.json").read_text())
    assert {a["score"] for a in coco_data["annotations"]} == {0.9, 0.7, 0.8, 0.6}  # 0.3 < 0.5 dropped


def test_zip_layout_and_results_are_valid(files, tmp_path):
    gt_path, res_path = files
    export_cmd.export(res_path, gt_path, ["ytvis-zip"], tmp_path)
    with zipfile.ZipFile(tmp_path / "results.zip") as z:
        assert z.namelist() == ["results.json"]
        data = json.loads(z.read("results.json"))
    assert ytvis.validate_results(data, _gt()) == []
    assert len(data) == 5


def test_pseudo_labels_are_a_valid_ground_truth_with_builder_fields(files, tmp_path):
    gt_path, res_path = files
    export_cmd.export(res_path, gt_path, ["ytvis-annotations"], tmp_path, score_threshold=0.5, min_frames=2)
    raw = json.loads((tmp_path / "ytvis_annotations.json").read_text())
    assert ytvis.validate_annotations(raw) == []
    assert raw["videos"] == _gt()["videos"]  # fps / frame_times / video_file kept for avis build
    a = raw["annotations"][0]
    assert a["areas"][:4] == [30, 30, 30, 30] and a["areas"][4] is None
    assert a["bboxes"][0] == [1.0, 1.0, 6.0, 5.0]
    # and it scores as a perfect ground truth for the predictions it came from
    assert [x["id"] for x in raw["annotations"]] == [1, 2, 3]


def test_coco_structure(files, tmp_path):
    gt_path, res_path = files
    export_cmd.export(res_path, gt_path, ["coco"], tmp_path)
    d = json.loads((tmp_path / "coco_instances.json").read_text())
    assert len(d["images"]) == 9 and d["images"][5]["file_name"] == "clipB/00000.jpg"
    assert d["images"][5]["video_id"] == 2 and d["images"][5]["frame_index"] == 0
    ids = [a["id"] for a in d["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    a = d["annotations"][0]
    assert a["attributes"] == {"track_id": 1} and a["iscrowd"] == 0
    assert isinstance(a["segmentation"]["counts"], str) and a["area"] == 30
    # usable by pycocotools' COCO API as is
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = d
    api.createIndex()
    assert len(api.getAnnIds(imgIds=[1])) == 1


def test_png_masks_palette_ids_and_overlaps(files, tmp_path):
    gt_path, res_path = files
    r = _results()
    r[1]["segmentations"][1] = mask_io.encode(_rect(0, 10, 0, 12))  # overlaps track 1 (0.9) at frame 1
    res_path.write_text(json.dumps(r))
    export_cmd.export(res_path, gt_path, ["png"], tmp_path, score_threshold=0.5, min_frames=2)
    folder = tmp_path / "png" / "clipA"
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{t:05d}.png" for t in range(5)]
    with Image.open(folder / "00001.png") as im:
        assert im.mode == "P" and im.size == (W, H)
        np.testing.assert_array_equal(np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)[:4], davis_palette()[:4])
        idx = np.asarray(im)
    assert davis_palette()[1].tolist() == [128, 0, 0] and davis_palette()[2].tolist() == [0, 128, 0]
    meta = json.loads((folder / "instances.json").read_text())
    assert [(i["index"], i["track_id"], i["score"]) for i in meta["instances"]] == [(1, 1, 0.9), (2, 2, 0.7)]
    # overlap: the 0.9 track (index 1) wins where both are; the rest of the 0.7 mask is index 2
    both = _rect(1, 6, 2, 8).astype(bool)
    assert (idx[both] == 1).all()
    assert (idx[_rect(0, 10, 0, 12).astype(bool) & ~both] == 2).all()
    assert set(np.unique(idx)) == {0, 1, 2}
    # instance ids are consistent over time: index 2 is track 2 in frames 3 and 4 too
    with Image.open(folder / "00004.png") as im:
        assert set(np.unique(np.asarray(im))) == {0, 2}


def _check_cvat_structure(path):
    """The structure of CVAT's documented "XML annotation format" 1.1, interpolation (video) mode."""
    root = ET.parse(path).getroot()
    assert root.tag == "annotations"
    kids = list(root)
    assert kids[0].tag == "version" and kids[0].text == "1.1"
    assert kids[1].tag == "meta" and all(k.tag == "track" for k in kids[2:])
    task = kids[1].find("task")
    for tag in ("id", "name", "size", "mode", "overlap", "bugtracker", "flipped", "created", "updated", "labels",
                "segments", "owner", "original_size"):
        assert task.find(tag) is not None, tag
    assert task.findtext("mode") == "interpolation" and task.findtext("flipped") in ("True", "False")
    assert kids[1].find("dumped") is not None
    size = int(task.findtext("size"))
    width, height = int(task.findtext("original_size/width")), int(task.findtext("original_size/height"))
    for seg in task.iter("segment"):
        assert 0 <= int(seg.findtext("start")) <= int(seg.findtext("stop")) < size and seg.find("id") is not None
    labels = {}
    for label in task.find("labels"):
        assert label.tag == "label" and label.findtext("name")
        assert label.findtext("type") in ("any", "bbox", "cuboid", "ellipse", "mask", "polygon", "polyline",
                                          "points", "skeleton", "tag")
        attrs = {}
        for a in label.find("attributes"):
            assert a.findtext("mutable") in ("True", "False")
            assert a.findtext("input_type") in ("select", "checkbox", "radio", "number", "text")
            attrs[a.findtext("name")] = a
        labels[label.findtext("name")] = attrs
    track_ids = [int(t.get("id")) for t in kids[2:]]
    assert len(set(track_ids)) == len(track_ids)
    assert all(int(t.get("group_id", "0")) >= 0 for t in kids[2:])
    n_shapes = 0
    for track in kids[2:]:
        assert track.get("label") in labels and track.get("source") in ("manual", "auto")
        frames = []
        for shape in track:
            n_shapes += 1
            assert shape.tag in ("box", "polygon", "polyline", "points", "mask", "ellipse", "cuboid", "skeleton")
            frames.append(int(shape.get("frame")))
            for flag in ("outside", "occluded", "keyframe"):
                assert shape.get(flag) in ("0", "1"), flag
            if shape.tag == "mask":
                rle = [int(v) for v in shape.get("rle").split(",")]
                left, top, w, h = (int(shape.get(k)) for k in ("left", "top", "width", "height"))
                assert min(rle) >= 0 and sum(rle) == w * h
                assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
            int(shape.get("z_order", "0"))
            if shape.tag == "polygon":
                pts = [tuple(map(float, p.split(","))) for p in shape.get("points").split(";")]
                assert len(pts) >= 3 and all(len(p) == 2 for p in pts)
            for a in shape.findall("attribute"):
                assert a.get("name") in labels[track.get("label")]
        assert frames == sorted(set(frames)) and all(0 <= f < size for f in frames)
        # a track that disappears before the end is closed by an outside shape
        shapes = list(track)
        visible = [s for s in shapes if s.get("outside") == "0"]
        assert visible, "a track has at least one visible shape"
    return root, n_shapes


@pytest.mark.parametrize("shape", ["mask", "polygon"])
def test_cvat_xml_has_the_documented_structure(files, tmp_path, shape):
    gt_path, res_path = files
    export_cmd.export(res_path, gt_path, ["cvat"], tmp_path, score_threshold=0.5, min_frames=2, cvat_shape=shape)
    paths = sorted((tmp_path / "cvat").glob("*.xml"))
    assert [p.name for p in paths] == ["clipA.xml", "clipB.xml"]
    root, n = _check_cvat_structure(paths[0])
    _check_cvat_structure(paths[1])
    tracks = root.findall("track")
    assert [t.get("id") for t in tracks] == [str(i) for i in range(len(tracks))]  # as CVAT numbers them
    by_object = {}
    for t in tracks:
        by_object.setdefault(t.get("group_id"), []).append([(s.get("frame"), s.get("outside")) for s in t])
    first = tracks[0]
    assert first.get("label") == "cat" and first[0].find("attribute").text == "0.900000"
    if shape == "polygon":
        # one CVAT track per object: visible 0..3 then closed at 4; object 2 visible at 1, 3, 4 (gone at 2)
        assert by_object["1"] == [[("0", "0"), ("1", "0"), ("2", "0"), ("3", "0"), ("4", "1")]]
        assert by_object["2"] == [[("1", "0"), ("2", "1"), ("3", "0"), ("4", "0")]]
    else:
        # CVAT has no mask tracks: one single-frame track per (object, frame), closed on the next frame,
        # as CVAT exports mask shapes; group_id ties an object's frames together
        assert by_object["1"] == [[("0", "0"), ("1", "1")], [("1", "0"), ("2", "1")], [("2", "0"), ("3", "1")],
                                  [("3", "0"), ("4", "1")]]
        assert by_object["2"] == [[("1", "0"), ("2", "1")], [("3", "0"), ("4", "1")], [("4", "0")]]
        assert n == 13


def test_cvat_mask_rle_matches_cvat_documented_example():
    # The circle of CVAT's documentation: 13 x 15 box, rle starting with 3 background pixels
    doc = ("3, 5, 7, 7, 5, 9, 3, 11, 2, 11, 2, 12, 1, 12, 1, 26, 1, 12, 1, 12, 2, 11, 3, 9, 5, 7, 7, 5, 3")
    m = cvat.cvat_to_mask({"rle": doc, "left": "2", "top": "1", "width": "13", "height": "15"}, 20, 20)
    assert m[1, 2:15].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # row-major, background first
    runs = [int(v) for v in doc.split(",")]
    assert m.sum() == sum(runs[1::2]) and m[1:16, 2:15].all(axis=None) == 0 and m[8, 2:15].all()
    assert cvat.mask_to_cvat(m)["rle"] == doc


def test_cvat_polygons_are_close_to_the_masks(files, tmp_path):
    gt_path, res_path = files
    export_cmd.export(res_path, gt_path, ["cvat"], tmp_path, score_threshold=0.5, min_frames=2, cvat_shape="polygon")
    gt = ytvis.load_annotations(gt_path)
    got = _key(cvat.read_cvat(tmp_path / "cvat" / "clipA.xml", gt))
    exp = _key([t for t in select_tracks(ytvis.load_results(res_path, gt=gt), gt, 0.5, 2) if t["video_id"] == 1])
    for k in exp:  # rectangles: polygon outlines rasterise back exactly
        np.testing.assert_array_equal(exp[k][2], got[k][2])


def test_cli_end_to_end_and_errors(files, tmp_path, cli):
    gt_path, res_path = files
    r = cli("export", "--results", res_path, "--gt", gt_path, "--format", "ytvis,png", "--format", "coco",
            "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "ytvis:" in r.stdout and "png:" in r.stdout and "coco:" in r.stdout
    bad = _results()
    bad[0]["video_id"] = 42
    res_path.write_text(json.dumps(bad))
    r = cli("export", "--results", res_path, "--gt", gt_path, "--format", "ytvis", "--out", tmp_path / "p")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "result 0 video 42: unknown video_id" in r.stderr and str(res_path) in r.stderr
    assert not (tmp_path / "p").exists()  # nothing written for bad input
    with pytest.raises(ConfigError, match="unknown export format 'jpeg'"):
        export_cmd.parse_formats(["jpeg"])
    assert export_cmd.parse_formats(["all"]) == list(export_cmd.FORMATS)
    with pytest.raises(ConfigError, match="needs --videos"):
        export_cmd.export(res_path, gt_path, ["overlay"], tmp_path)


def test_readers_reject_bad_files(tmp_path):
    gt = ytvis.normalize_annotations(_gt())
    p = tmp_path / "x.xml"
    p.write_text("<annotations><version>1.1</versio")
    with pytest.raises(InputError, match="invalid XML"):
        cvat.read_cvat(p, gt)
    p.write_text("<annotations><version>1.1</version></annotations>")
    with pytest.raises(InputError, match="not a CVAT for video"):
        cvat.read_cvat(p, gt)


def test_video_names_are_unique_and_safe():
    gt = _gt()
    gt["videos"][1]["video_file"] = "sub/clipA.mp4"  # same stem as video 1
    gt["videos"].append({"id": 3, "width": 4, "height": 4, "length": 1, "file_names": ["x.jpg"]})
    gt["videos"].append({"id": 4, "width": 4, "height": 4, "length": 1, "video_file": "../../we ird$.mp4"})
    assert video_names(gt) == {1: "clipA_1", 2: "clipA_2", 3: "video_3", 4: "we_ird"}


# ------------------------------------------------------------------------------------------------ overlay
def _write_mp4(path, n=20, fps=10, w=W, h=H, sr=22050, seconds=2.0, audio=True, pts=None):
    """Tiny H.264 (+ AAC) file written with PyAV: frame k is flat grey level 8 k, the sound a 440 Hz tone;
    ``pts`` (in 1 / fps units) makes a variable-frame-rate file."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if audio:
            a = c.add_stream("aac", rate=sr)
            a.codec_context.layout = "mono"
        for k in range(n):
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), 8 * k, np.uint8), format="rgb24")
            f.pts = k if pts is None else pts[k]
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        if audio:
            total = int(sr * seconds)
            x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / sr)).astype(np.float32)
            for s in range(0, total, 1024):
                fr = av.AudioFrame.from_ndarray(x[None, s:s + 1024].copy(), format="flt", layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = sr, s, Fraction(1, sr)
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)


def _probe(path):
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
        info = {"codec": v.codec_context.name, "rate": float(v.average_rate), "frames": frames}
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            info.update(audio_codec=a.codec_context.name, sample_rate=a.codec_context.sample_rate,
                        audio_header=float(a.duration * a.time_base) if a.duration else None,
                        audio_samples=sum(f.samples for f in c.decode(a)))
    return info


MW, MH = 96, 64  # big enough for the labels to stay clear of the pixels the tests look at


@pytest.fixture
def media(tmp_path):
    _write_mp4(tmp_path / "clipA.mp4", w=MW, h=MH)
    gt = _gt()
    gt["videos"] = gt["videos"][:1]
    gt["videos"][0].update(length=20, fps=10.0, width=MW, height=MH,
                           file_names=[f"clipA/{t:05d}.jpg" for t in range(20)])
    a = [_rect(20, 40, 10 + t % 10, 30 + t % 10, MH, MW) if t < 15 else None for t in range(20)]
    res = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": _enc(a)},
           {"video_id": 1, "category_id": 2, "score": 0.6, "segmentations": _enc([_rect(44, 64, 60, 90, MH, MW)] * 20)}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    return tmp_path


@pytest.mark.parametrize("fps,frames", [(None, 20), (5.0, 10), (25.0, 50)])
def test_overlay_frame_count_and_audio(media, fps, frames):
    out = media / f"out_{fps}"
    export_cmd.export(media / "res.json", media / "gt.json", ["overlay"], out, videos_dir=media, overlay_fps=fps)
    src, ov = _probe(media / "clipA.mp4"), _probe(out / "overlay" / "clipA.mp4")
    assert ov["codec"] == "h264" and ov["audio_codec"] == "aac"
    assert len(ov["frames"]) == frames  # the source's 2.0 s at the chosen rate
    assert ov["rate"] == pytest.approx(fps or 10.0)
    assert ov["sample_rate"] == src["sample_rate"]
    assert abs(ov["audio_samples"] - src["audio_samples"]) <= 1024  # within one AAC frame
    assert ov["audio_header"] == pytest.approx(src["audio_header"], abs=1024 / src["sample_rate"])


def test_overlay_draws_masks_on_the_right_frames(media):
    export_cmd.export(media / "res.json", media / "gt.json", ["overlay"], media / "o", videos_dir=media)
    ov = _probe(media / "o" / "overlay" / "clipA.mp4")["frames"]
    for k in (0, 7, 16):
        src_level = 8 * k
        frame = ov[k].astype(int)
        assert frame.shape == (MH, MW, 3)
        outside = frame[MH - 2, 2]  # far from both masks and labels: the source's grey (up to H.264 loss)
        assert np.abs(outside - src_level).max() <= 6
        inside = frame[30, 20 + k % 10]  # the 0.9 track, which moves right and is gone from frame 15
        assert (np.abs(inside - src_level).max() > 20) == (k < 15)
        if k == 7:  # the mask of frame 7 (columns 17..36), not an earlier one: column 12 is clear
            assert np.abs(frame[30, 12] - src_level).max() <= 6
        assert np.abs(frame[55, 75] - src_level).max() > 20  # the 0.6 track, in every frame


def test_overlay_frames_follow_presentation_times_of_a_vfr_source(tmp_path):
    from data_tools.exporters.overlay import iter_frames

    # frames shown at 0, 0.1, 0.3, 0.4, 0.7 s (the last lasting 0.1 s): at 10 fps the overlay shows, at each
    # k / 10 s, the last frame whose time is <= k / 10
    _write_mp4(tmp_path / "vfr.mp4", n=5, audio=False, pts=[0, 1, 3, 4, 7])
    levels = [int(round(rgb.mean() / 8)) for _, _, rgb in iter_frames(tmp_path / "vfr.mp4", 10.0)]
    assert levels == [0, 1, 1, 2, 3, 3, 3, 4]


def test_overlay_with_separate_audio_file_and_jpeg_frames(tmp_path):
    import av

    # a 1.5 s WAV next to JPEG frames: the overlay is the frames at the annotation rate plus that sound
    sr = 16000
    with av.open(str(tmp_path / "a.wav"), "w") as c:
        s = c.add_stream("pcm_s16le", rate=sr)
        s.codec_context.layout = "mono"
        f = av.AudioFrame.from_ndarray(np.zeros((1, int(1.5 * sr)), np.int16), format="s16", layout="mono")
        f.sample_rate = sr
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    (tmp_path / "f").mkdir()
    for t in range(6):
        Image.fromarray(np.full((H, W, 3), 40 * t, np.uint8)).save(tmp_path / "f" / f"{t}.jpg")
    gt = {"videos": [{"id": 1, "width": W, "height": H, "file_names": [f"f/{t}.jpg" for t in range(6)],
                      "frame_times": [0.0, 0.25, 0.5, 0.75, 1.0, 1.25], "audio_file": "a.wav"}],
          "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    res = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": _enc([_rect(0, 5, 0, 5)] * 6)}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    export_cmd.export(tmp_path / "res.json", tmp_path / "gt.json", ["overlay"], tmp_path / "o", videos_dir=tmp_path)
    ov = _probe(tmp_path / "o" / "overlay" / "f.mp4")  # named after the frames folder
    assert len(ov["frames"]) == 6 and ov["rate"] == pytest.approx(4.0)
    assert abs(ov["audio_samples"] - int(1.5 * sr)) <= 1024


def test_overlay_missing_media_is_an_input_error(media):
    (media / "clipA.mp4").unlink()
    with pytest.raises(InputError, match="clipA.mp4: no such file"):
        export_cmd.export(media / "res.json", media / "gt.json", ["overlay"], media / "o", videos_dir=media)
    assert not list((media / "o").glob("**/*.mp4"))  # no partial file left behind


def test_batch_script_exports_every_run_resumes_and_reports_failures(files, tmp_path, capsys):
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("export_annotations", REPO / "scripts" / "export_annotations.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    gt_path, _ = files
    runs = tmp_path / "runs"
    for name, res in (("rcf_av/seed1", _results()), ("rcf_v/seed1", _results(with_track_ids=True))):
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(json.dumps(res))
    bad = _results()
    bad[2]["video_id"] = 9
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text(json.dumps(bad))
    argv = ["--runs", str(runs), "--gt", str(gt_path), "--format", "ytvis,png", "--out", str(tmp_path / "ex")]
    assert script.main(argv) == 1
    out = capsys.readouterr().out
    assert "2 exported, 0 already done, 1 failed (of 3 runs)" in out
    assert "failed: broken:" in out and "result 2 video 9: unknown video_id" in out
    for name in ("rcf_av__seed1", "rcf_v__seed1"):
        assert (tmp_path / "ex" / name / "results.json").is_file()
        assert (tmp_path / "ex" / name / "png" / "clipA" / "00000.png").is_file()
    assert not (tmp_path / "ex" / "broken" / "results.json").exists()
    # second pass: the finished runs are skipped, the broken one is tried again
    assert script.main(argv) == 1
    assert "0 exported, 2 already done, 1 failed" in capsys.readouterr().out
    # a changed results file is exported again
    (runs / "rcf_v" / "seed1" / "results.json").write_text(json.dumps(_results()[:2]))
    script.main(argv)
    assert "1 exported, 1 already done" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "ex" / "rcf_v__seed1" / "results.json").read_text())) == 2


def test_cli_all_formats_with_overlay(media, cli):
    r = cli("export", "--results", media / "res.json", "--gt", media / "gt.json", "--format", "all",
            "--videos", media, "--out", media / "all", "--overlay-fps", "5")
    assert r.returncode == 0, r.stderr
    for rel in ("results.json", "results.zip", "ytvis_annotations.json", "coco_instances.json",
                "png/clipA/00019.png", "cvat/clipA.xml", "overlay/clipA.mp4"):
        assert (media / "all" / rel).is_file(), rel
    assert len(_probe(media / "all" / "overlay" / "clipA.mp4")["frames"]) == 10
