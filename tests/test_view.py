"""avis view: the page's data (runs, matches, colours, escaping), its media (times and sound), the attention
file and its images, the local server, and the page itself in a real headless Chromium (Debian's chromium +
chromedriver, driven by selenium): elements render, a track and a category toggle off, the masks follow the
playing time, the sound decodes, the table sorts, hostile names stay text.

The browser tests skip, saying why, only when Chromium, chromedriver or selenium is missing (.ci/run installs
them)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avis import cli as avis_cli
from avis.errors import ConfigError, InputError
from avis.io import masks as mask_io
from avis.view import attention as att
from avis.view import media, page
from avis.view.serve import serve

H, W, T, FPS = 64, 96, 8, 4
BG = 100  # grey of the test videos
HOSTILE = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def make_run(root: Path) -> dict:
    """Two 2 s videos (4 fps, grey, a 440 Hz tone) with two objects each: #1 (bell) in frames 0-3 only, #2
    (a hostile category name) in every frame. Run "av" finds #1 exactly (0.9), #2 shifted by 4 rows (0.8)
    and a false positive (0.3); run "vis" misses #1 and finds #2 exactly (0.7). "av" kept attention maps."""
    from data_tools.synth import write_mp4

    vids, anns = [], []
    wav = (0.3 * np.sin(np.arange(16000 * T // FPS) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    for vid, name in ((1, "a"), (2, "b")):
        write_mp4(root / "videos" / f"{name}.mp4", np.full((T, H, W, 3), BG, np.uint8), wav, FPS, 16000)
        vids.append({"id": vid, "width": W, "height": H, "length": T, "fps": FPS, "video_file": f"{name}.mp4"})
        one = [mask_io.encode(_box(10, 40, 10, 40)) if t < 4 else None for t in range(T)]
        two = [mask_io.encode(_box(20, 50, 55, 85)) for _ in range(T)]
        anns += [{"id": 10 * vid + 1, "video_id": vid, "category_id": 1, "iscrowd": 0, "segmentations": one},
                 {"id": 10 * vid + 2, "video_id": vid, "category_id": 2, "iscrowd": 0, "segmentations": two}]
    gt = {"videos": vids, "annotations": anns, "categories": [{"id": 1, "name": "bell"}, {"id": 2, "name": HOSTILE}]}
    (root / "gt.json").write_text(json.dumps(gt))
    shifted = [mask_io.encode(_box(24, 54, 55, 85)) for _ in range(T)]
    fp = [mask_io.encode(_box(50, 60, 0, 20)) if t % 2 else None for t in range(T)]
    runs = {"av": [], "vis": []}
    for k, vid in enumerate((1, 2)):
        one, two = anns[2 * k]["segmentations"], anns[2 * k + 1]["segmentations"]
        runs["av"] += [{"video_id": vid, "category_id": 1, "score": 0.9, "segmentations": one},
                       {"video_id": vid, "category_id": 2, "score": 0.8, "segmentations": shifted},
                       {"video_id": vid, "category_id": 1, "score": 0.3, "segmentations": fp}]
        runs["vis"] += [{"video_id": vid, "category_id": 2, "score": 0.7, "segmentations": two}]
    for name, res in runs.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps(res))
    maps = {}
    for vid in (1, 2):
        r2t = np.full((T, 4, 4, 6), 0.01, np.float32)
        r2t[:, 0, :, :3] = 0.2  # token 0 looks at the left half
        a2t = np.full((T, 2, 4, 6), 0.02, np.float32)
        maps[vid] = {"ref_to_target": list(r2t), "audio_to_target": list(a2t)}
    att.write_attention(root / "av" / "attention.npz", maps)
    return gt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("view_run")
    make_run(root)
    out = root / "page"
    page.write_view(root / "av", out, gt=root / "gt.json", videos_dir=root / "videos", compare=[root / "vis"],
                    labels=["AV", "visual"])
    return root, out


def _video_data(out: Path, n: int) -> dict:
    text = (out / "data" / f"{n}.js").read_text()
    prefix = f"AVIS.loaded({n},"
    assert text.startswith(prefix) and text.endswith(");\n")
    return json.loads(text[len(prefix):-3])


def _page_data(out: Path) -> dict:
    text = (out / "index.html").read_text()
    block = text.split('<script id="avis-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    return json.loads(block)


# ------------------------------------------------------------------------------------------------ data
def test_script_json_cannot_close_the_block_or_start_markup():
    obj = {"name": HOSTILE + "<!-- & \u2028 é", "x": [1.5, None]}
    text = page.script_json(obj)
    assert not any(ch in text for ch in "<>&\u2028é")
    assert json.loads(text) == obj


def test_page_data_matches_ious_scores_and_colours(tiny):
    _, out = tiny
    data = _page_data(out)
    assert [r["label"] for r in data["runs"]] == ["AV", "visual"]
    assert data["runs"][0]["attention"] and not data["runs"][1]["attention"]
    assert data["categories"][1]["name"] == HOSTILE  # kept as data, escaped in the file
    assert HOSTILE not in (out / "index.html").read_text()
    # one row per GT instance; IoU of the shifted box: 26 rows of 30 overlap -> 26 / 34
    rows = {(r["n"], r["label"]): r for r in data["instances"]}
    assert len(rows) == 4
    assert rows[(0, "#1")]["runs"][0] == {"iou": 1.0, "score": 0.9, "track": 1}
    assert rows[(0, "#1")]["runs"][1] == {"iou": None, "score": None, "track": None}
    assert rows[(0, "#2")]["runs"][0]["iou"] == pytest.approx(26 / 34)
    assert rows[(0, "#2")]["runs"][1] == {"iou": 1.0, "score": 0.7, "track": 1}
    assert rows[(0, "#1")]["first"] == 0
    v = _video_data(out, 0)
    assert v["media"] == "media/0.mp4" and v["sound"] and v["times"] == [t / FPS for t in range(T)]
    gt_colors = [g["color"] for g in v["gt"]]
    tracks = v["runs"][0]["tracks"]
    assert [t["score"] for t in tracks] == [0.9, 0.8, 0.3]  # best first
    # a prediction matched to GT instance k has its colour; the false positive gets another
    assert tracks[0]["color"] == gt_colors[0] and tracks[1]["color"] == gt_colors[1]
    assert tracks[2]["color"] not in gt_colors and tracks[2]["iou"] is None and tracks[2]["gt"] is None
    assert v["runs"][1]["tracks"][0]["color"] == gt_colors[1]
    assert v["gt"][0]["segs"][4] is None and v["gt"][0]["segs"][0] == mask_io.encode(_box(10, 40, 10, 40))["counts"]
    assert set(v["runs"][0]["attention"]) == {"ref_to_target", "audio_to_target"}
    assert v["runs"][1]["attention"] is None
    # every written file is inside the output folder and named by the page, not by the inputs
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"index.html", "view.js", "view.css", "data/0.js", "data/1.js", "media/0.mp4", "media/1.mp4",
                     *(f"att/0_{n}_{k}.png" for n in (0, 1) for k in ("ref_to_target", "audio_to_target"))}


def test_matched_samples_name_the_prediction():
    from avis.evaluation.samples import instance_samples, matched_samples_from_entries
    from avis.evaluation.ytvis_eval import match_all

    gt = {"videos": [{"id": 1, "width": W, "height": H, "length": 1}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 5, "video_id": 1, "category_id": 1, "iscrowd": 0,
                           "segmentations": [mask_io.encode(_box(0, 10, 0, 10))]},
                          {"id": 6, "video_id": 1, "category_id": 1, "iscrowd": 0,
                           "segmentations": [mask_io.encode(_box(30, 40, 30, 40))]}]}
    res = [{"video_id": 1, "category_id": 1, "score": 0.2, "segmentations": [mask_io.encode(_box(30, 40, 30, 40))]},
           {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [mask_io.encode(_box(0, 10, 0, 5))]}]
    rows = matched_samples_from_entries(match_all(gt, res)[2])
    assert {r["instance_id"]: (r["result_index"], r["iou"]) for r in rows} == {5: (1, 0.5), 6: (0, 1.0)}
    assert [{k: r[k] for k in ("video_id", "category_id", "instance_id", "iou", "score")} for r in rows] \
        == instance_samples(gt, res)


def test_inputs_are_found_and_bad_ones_named(tiny, tmp_path):
    root, _ = tiny
    assert page.find_results(root / "av") == root / "av" / "results.json"
    assert page.find_results(root / "av" / "results.json") == root / "av" / "results.json"
    run = tmp_path / "run"
    for step in ("step_00000004", "step_00000012"):
        (run / "eval" / step).mkdir(parents=True)
        shutil.copy(root / "av" / "results.json", run / "eval" / step / "results.json")
    assert page.find_results(run) == run / "eval" / "step_00000012" / "results.json"
    assert page.default_label(run / "eval" / "step_00000012" / "results.json") == "eval/step_00000012"
    with pytest.raises(InputError, match="no results.json"):
        page.find_results(tmp_path)
    with pytest.raises(ConfigError, match="give --gt"):  # no gt.json beside the results
        page.write_view(root / "av", tmp_path / "p")
    with pytest.raises(ConfigError, match="2 labels for 1 runs"):
        page.write_view(root / "av", tmp_path / "p", gt=root / "gt.json", labels=["a", "b"])


def test_cli_errors_are_one_line_and_media_paths_stay_inside(tiny, tmp_path, capsys):
    root, _ = tiny
    assert avis_cli.main(["view", str(tmp_path / "nope"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no such file or folder" in err
    gt = json.loads((root / "gt.json").read_text())
    gt["videos"][0]["video_file"] = "../secret.mp4"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert avis_cli.main(["view", str(root / "av"), "--gt", str(tmp_path / "gt.json"), "--videos",
                          str(root / "videos"), "--out", str(tmp_path / "p")]) == 2
    assert "must be a path relative to the videos folder" in capsys.readouterr().err
    assert not (tmp_path / "p" / "index.html").exists()


def test_cli_writes_the_page_without_media_and_with_a_default_gt(tiny, tmp_path, capsys):
    root, _ = tiny
    run = tmp_path / "eval"
    shutil.copytree(root / "av", run)
    shutil.copy(root / "gt.json", run / "gt.json")
    assert avis_cli.main(["view", str(run), "--out", str(tmp_path / "p"), "--limit", "1"]) == 0
    assert "page: file://" in capsys.readouterr().out
    v = _video_data(tmp_path / "p", 0)
    assert not v["sound"] and "no media" in v["note"] and len(_page_data(tmp_path / "p")["videos"]) == 1
    with av.open(str(tmp_path / "p" / "media" / "0.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert not c.streams.audio
    assert abs(float(np.median(frames[0])) - media.BLANK) <= 2


# ------------------------------------------------------------------------------------------------ media
def test_frames_and_sound_keep_their_times(tmp_path):
    times = [0.0, 0.25, 0.75, 1.0]  # variable rate, as frame_times may be
    levels = [30, 90, 150, 210]
    frames = np.stack([np.full((H - 1, W - 1, 3), lv, np.uint8) for lv in levels])  # odd size: padded
    sound = np.zeros(16000 * 5 // 4, np.float32)
    sound[8000:8160] = 0.9  # a click at 0.5 s
    media.encode_frames(tmp_path / "m.mp4", frames, times, sound, 16000)
    with av.open(str(tmp_path / "m.mp4")) as c:
        got = [(float(f.time), float(np.median(f.to_ndarray(format="rgb24")[:H - 1, :W - 1])))
               for f in c.decode(video=0)]
    assert [t for t, _ in got[:4]] == pytest.approx(times, abs=1e-4)
    assert [lv for _, lv in got[:4]] == pytest.approx(levels, abs=3)
    assert len(got) == 5 and got[4][0] == pytest.approx(1.25, abs=1e-3)  # the last frame held one interval
    with av.open(str(tmp_path / "m.mp4")) as c:
        wav = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
        start = float(c.streams.audio[0].start_time * c.streams.audio[0].time_base)
    click = start + np.flatnonzero(np.abs(wav) > 0.3)[0] / 16000
    assert click == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------------------------ attention
def _rcf_tiny(audio: bool):
    from avis.models.audio import audio_tokens_tiny
    from avis.models.rcf import rcf_tiny

    torch.manual_seed(0)
    return rcf_tiny(num_classes=3, delta=2, audio_encoder=audio_tokens_tiny() if audio else None).eval()


def test_recorder_keeps_every_frames_maps_and_restores_the_model(tmp_path):
    model = _rcf_tiny(audio=True)
    frames = torch.randint(0, 255, (5, 3, 48, 64), dtype=torch.uint8)
    audio = torch.randn(5, 15360) * 0.1
    rec = att.AttentionRecorder(model)
    videos = [{"video_id": 7, "frames": frames, "audio": audio}, {"video_id": 9, "frames": frames[:3], "audio": audio[:3]}]
    for v in rec.videos(videos):
        model.predict_video(v["frames"], v["audio"])
    assert "step" not in vars(model) and not model.keep_attention  # the model is back to normal
    maps = rec.maps
    assert set(maps) == {7, 9}
    r2t, a2t = np.stack(maps[7]["ref_to_target"]), np.stack(maps[7]["audio_to_target"])
    assert r2t.shape[:2] == (5, 4) and a2t.shape[:2] == (5, 3) and r2t.shape[2:] == a2t.shape[2:]
    assert len(maps[9]["ref_to_target"]) == 3
    # the last frame's maps are the model's own (kept while recording)
    model.keep_attention = True
    model.predict_video(frames[:3], audio[:3])
    last = model.attention_maps()
    np.testing.assert_allclose(maps[9]["ref_to_target"][-1], last["ref_to_target"][0].numpy(), atol=1e-3)
    np.testing.assert_allclose(maps[9]["audio_to_target"][-1], last["audio_to_target"][0].numpy(), atol=1e-3)
    # attention rows sum to 1 over every token: reference-to-target is part of it
    assert 0 < r2t.astype(np.float32).sum(axis=(2, 3)).max() <= 1 + 1e-2
    path = rec.save(tmp_path / "attention.npz")
    back = att.read_attention(path)
    assert set(back) == {7, 9} and back[7]["ref_to_target"].shape == r2t.shape
    np.testing.assert_array_equal(back[7]["audio_to_target"], a2t.astype(np.float32))
    # the recording step passes the frame's tracked instances through (the online per-frame contract)
    from avis.models.base import FrameResult

    for _ in rec.videos([{"video_id": 11}]):
        state = model.init_state()
        results = [model.step(state, f, a) for f, a in zip(frames[:2], audio[:2])]
    assert all(isinstance(r, FrameResult) for r in results) and [r.frame for r in results] == [0, 1]
    assert len(rec.maps[11]["ref_to_target"]) == 2


def test_recorder_refuses_a_model_without_attention_and_a_visual_model_has_no_audio_maps():
    with pytest.raises(ConfigError, match="keeps no attention"):
        att.AttentionRecorder(torch.nn.Linear(2, 2))
    model = _rcf_tiny(audio=False)
    rec = att.AttentionRecorder(model)
    for _ in rec.videos([{"video_id": 1}]):
        model.predict_video(torch.randint(0, 255, (2, 3, 48, 64), dtype=torch.uint8))
    assert set(rec.maps[1]) == {"ref_to_target"}


def test_attention_file_refuses_pickles_and_other_files(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, format=np.array(att.FORMAT), video_ids=np.array([1]),
             ref_to_target_1=np.array([{"x": 1}], dtype=object))
    with pytest.raises(InputError, match="unreadable attention file"):
        att.read_attention(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="not an avis attention file"):
        att.read_attention(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError):
        att.read_attention(tmp_path / "junk.npz")


def test_pca_separates_what_the_tokens_look_at_and_heat_scales_per_frame(tmp_path):
    maps = np.zeros((2, 3, 4, 6), np.float32)
    maps[:, 0, :, :3] = 1.0  # token 0: left half; token 1: right half; token 2: top rows
    maps[:, 1, :, 3:] = 1.0
    maps[:, 2, :2] = 0.5
    rgb = att.pca_rgb(maps)
    assert rgb.shape == (2, 4, 6, 3)
    left, right = rgb[0, 3, 0].astype(int), rgb[0, 3, 5].astype(int)
    assert np.abs(left - right).max() > 200  # the first component splits left from right
    assert (rgb[0] == rgb[1]).all()  # the same maps, the same colours
    hot = att.heat(maps * np.array([1, 2], np.float32)[:, None, None, None])
    magma = att._magma()
    assert (hot[0, 0, 0, 0] == magma[255]).all() and (hot[1, 0, 0, 0] == magma[255]).all()
    assert (hot[0, 2, 0, 0] == magma[128]).all() and (hot[0, 0, 0, 5] == magma[0]).all()
    info = att.render_sprites({"ref_to_target": maps}, tmp_path / "att", "0_0")
    from PIL import Image

    assert info["ref_to_target"] == {"file": "att/0_0_ref_to_target.png", "frames": 2, "tokens": 3, "h": 4, "w": 6}
    assert Image.open(tmp_path / "att" / "0_0_ref_to_target.png").size == (4 * 6, 2 * 4)


# ------------------------------------------------------------------------------------------------ server
def test_server_is_local_serves_ranges_and_stays_in_the_folder(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "m.bin").write_bytes(bytes(range(100)))
    (tmp_path / "secret.txt").write_text("no")
    server = serve(tmp_path / "site", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        url = f"http://{host}:{port}"
        req = urllib.request.Request(f"{url}/m.bin", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 206 and r.read() == bytes(range(10, 20))
            assert r.headers["Content-Range"] == "bytes 10-19/100"
        req = urllib.request.Request(f"{url}/m.bin", headers={"Range": "bytes=-5"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.read() == bytes(range(95, 100))
        with urllib.request.urlopen(f"{url}/m.bin", timeout=10) as r:
            assert r.status == 200 and len(r.read()) == 100 and r.headers["Accept-Ranges"] == "bytes"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/../secret.txt", timeout=10)
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(f"{url}/m.bin", headers={"Range": "bytes=200-"}), timeout=10)
        assert e.value.code == 416
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------ browser
def _browser_missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not shutil.which("chromium") and not Path("/usr/bin/chromium").exists():
        return "Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it)"
    if not shutil.which("chromedriver") and not Path("/usr/bin/chromedriver").exists():
        return "chromedriver is not installed (apt-get install chromium-driver; .ci/run does it)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _browser_missing()
    if reason:
        pytest.skip(f"browser test: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1400,1800",
              "--force-device-scale-factor=1", "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(20)
    yield driver
    driver.quit()


def _shot(driver, css: str, path: Path) -> np.ndarray:
    from PIL import Image

    el = driver.find_element("css selector", css)
    path.write_bytes(el.screenshot_as_png)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _count(img: np.ndarray, color, tol: int = 10) -> int:
    return int((np.abs(img - np.asarray(color)).max(-1) <= tol).sum())


def _fill(color) -> np.ndarray:
    a = round(0.45 * 255) / 255
    return BG * (1 - a) + np.asarray(color) * a


def _run(driver, script: str):
    return driver.execute_async_script(f"const done = arguments[arguments.length - 1]; {script}")


@pytest.mark.slow
def test_page_in_headless_chromium(browser, tiny):
    root, out = tiny
    shots = Path(os.environ.get("AVIS_VIEW_SCREENSHOTS") or (root / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    d = browser
    d.get((out / "index.html").as_uri())
    _run(d, "AVIS.select(0).then(() => AVIS.seekFrame(1)).then(() => done())")
    state = d.execute_script("const v = AVIS.video; return {ready: v.readyState, src: v.getAttribute('src'), "
                             "frame: AVIS.state.frame, pwned: window.pwned === undefined ? null : window.pwned, "
                             "status: document.getElementById('status').textContent}")
    assert state == {"ready": 4, "src": "media/0.mp4", "frame": 1, "pwned": None,
                     "status": "a (video id 1) · 8 annotated frames"}
    # the elements render: videos, runs, panels, track tables, categories (hostile name as text), attention
    assert d.execute_script("return document.querySelectorAll('#videos li').length") == 2
    assert d.execute_script("return document.querySelectorAll('#runs tbody tr').length") == 2
    assert d.execute_script("return [...document.querySelectorAll('#panels figure')].map(f => f.dataset.layer)") \
        == ["source", "gt", "r0", "r1"]
    assert d.execute_script("return [...document.querySelectorAll('#tracks table')].map("
                            "t => t.querySelectorAll('tbody tr').length)") == [2, 3, 1]
    assert d.execute_script("return document.querySelectorAll('#instances tbody tr').length") == 4
    assert HOSTILE in d.execute_script("return document.getElementById('categories').textContent")
    assert d.execute_script("return document.querySelectorAll('#categories img, #tracks img, #instances img').length") == 0
    d.save_screenshot(str(shots / "page.png"))

    colors = d.execute_script("return AVIS.state.v.runs[0].tracks.map(t => [t.key, t.color])")
    (key1, c1), (key2, c2), (_, c3) = colors
    img = _shot(d, "canvas[data-layer=r0]", shots / "av_before.png")
    assert _count(img, _fill(c1)) > 3000 and _count(img, _fill(c2)) > 3000
    assert _count(img, _fill(c3)) == 0  # the false positive (0.3) is below the page's 0.5 threshold
    # toggle track 1 off: its colour goes, track 2 stays
    d.find_element("css selector", f"#tracks input[data-layer=r0][data-key='{key1}']").click()
    img = _shot(d, "canvas[data-layer=r0]", shots / "av_track_off.png")
    assert _count(img, _fill(c1)) < 50 and _count(img, _fill(c2)) > 3000
    d.find_element("css selector", f"#tracks input[data-layer=r0][data-key='{key1}']").click()
    # toggle category 2 off: track 2 goes from the run and from the ground truth
    d.find_element("css selector", "#categories input[data-category='2']").click()
    img = _shot(d, "canvas[data-layer=r0]", shots / "av_category_off.png")
    assert _count(img, _fill(c1)) > 3000 and _count(img, _fill(c2)) < 50
    assert _count(_shot(d, "canvas[data-layer=gt]", shots / "gt_category_off.png"), _fill(c2)) < 50
    d.find_element("css selector", "#categories input[data-category='2']").click()
    # the masks follow the time: object #1 is gone from frame 4 (t = 1 s) on
    _run(d, "AVIS.seekFrame(5).then(() => done())")
    assert d.execute_script("return AVIS.state.frame") == 5
    img = _shot(d, "canvas[data-layer=r0]", shots / "av_frame5.png")
    assert _count(img, _fill(c1)) < 50 and _count(img, _fill(c2)) > 3000
    # lowering the threshold shows the false positive (in odd frames)
    d.execute_script("const t = document.getElementById('threshold'); t.value = '0.25'; "
                     "t.dispatchEvent(new Event('input'))")
    assert _count(_shot(d, "canvas[data-layer=r0]", shots / "av_low_threshold.png"), _fill(c3)) > 500
    # attention: token 0's tile is bright on its left half, dark on its right
    img = _shot(d, "#attention canvas[data-role=tokens][data-kind=ref_to_target]", shots / "tokens.png")
    tile = img[2:20, 2:60]
    assert tile[:, :20].mean() > 150 and tile[:, 40:].mean() < 60
    # it plays with sound, and the drawn frame follows
    _run(d, "AVIS.seekFrame(0).then(() => AVIS.video.play()).then(() => setTimeout(done, 900), () => done())")
    played = d.execute_script("const v = AVIS.video; v.pause(); return {t: v.currentTime, "
                              "audio: v.webkitAudioDecodedByteCount, frame: AVIS.state.frame}")
    assert played["t"] > 0.3 and played["audio"] > 0 and played["frame"] >= 1
    # the instance table sorts by IoU (misses last) and a row jumps to its video
    iou_col = d.execute_script("return [...document.querySelectorAll('#instances th')].findIndex("
                               "th => th.textContent === 'IoU · visual')")
    header = d.find_elements("css selector", "#instances th")[iou_col]
    header.click()
    col = d.execute_script(f"return [...document.querySelectorAll('#instances tbody tr')].map("
                           f"tr => tr.children[{iou_col}].textContent)")
    assert col == ["1.000", "1.000", "miss", "miss"]
    d.find_element("css selector", "#instances tbody tr[data-n='1']").click()
    d.execute_async_script("const done = arguments[0]; const t0 = Date.now(); (function wait() { "
                           "if (AVIS.state.n === 1 && AVIS.state.v && AVIS.state.v.n === 1 || Date.now() - t0 > 5000) done(); "
                           "else setTimeout(wait, 50); })()")
    assert d.execute_script("return AVIS.state.v.name") == "b"
    assert d.execute_script("return [...document.querySelectorAll('#videos li')].map(li => li.classList.contains('current'))") \
        == [False, True]
    assert d.execute_script("return window.pwned === undefined")
    d.save_screenshot(str(shots / "page_video_b.png"))


@pytest.mark.slow
def test_page_served_on_localhost_loads_its_media(browser, tiny):
    _, out = tiny
    server = serve(out, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        _run(browser, "AVIS.select(1).then(() => AVIS.seekFrame(6)).then(() => done())")
        assert browser.execute_script("return [AVIS.video.readyState, AVIS.state.frame]") == [4, 6]
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_eval_keeps_attention_and_view_plays_the_shards(tmp_path):
    """synth -> build -> two steps of RCF tiny (audio) -> avis eval --keep-attention -> avis view --shards."""
    for module in ("data_tools.build", "data_tools.synth", "avis.models.rcf"):
        pytest.importorskip(module)
    from tests.baseline_utils import build_synth_shards

    build_synth_shards(tmp_path, videos=4, frames=6)
    run = tmp_path / "run"
    assert avis_cli.main(["train", "experiment=rcf_av_tiny", f"data.train.pattern={tmp_path / 'train'}",
                          f"hydra.run.dir={run}", "trainer.max_steps=2", "trainer.eval_every=0", "data.batch_size=2",
                          "data.scales=[48]", "data.test_size=48", "model.num_queries=4", "trainer.progress=false",
                          "trainer.tensorboard=false", "audio.pretrain.steps=5"]) == 0  # a short audio pretraining
    ev = tmp_path / "eval"
    assert avis_cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--shards",
                          str(tmp_path / "val"), "--out", str(ev), "--keep-attention"]) == 0
    gt = json.loads((ev / "gt.json").read_text())
    maps = att.read_attention(ev / "attention.npz")
    assert set(maps) == {v["id"] for v in gt["videos"]}
    for v in gt["videos"]:
        r2t, a2t = maps[v["id"]]["ref_to_target"], maps[v["id"]]["audio_to_target"]
        assert r2t.shape[:2] == (v["length"], 4) and a2t.shape[:2] == (v["length"], 2)  # pool 2 x 2, delta 1
    out = tmp_path / "page"
    assert avis_cli.main(["view", str(ev), "--shards", str(tmp_path / "val"), "--out", str(out)]) == 0
    data = _page_data(out)
    assert data["runs"][0]["attention"] and len(data["videos"]) == len(gt["videos"])
    from avis.data import iter_videos

    shard = next(iter(iter_videos(tmp_path / "val")))
    n = next(r["n"] for r in data["videos"] if r["id"] == int(shard.video_id))
    v = _video_data(out, n)
    assert v["sound"] and v["times"] == pytest.approx(list(shard.frame_times)) and "shards" in v["note"]
    assert v["runs"][0]["attention"]["ref_to_target"]["frames"] == shard.num_frames
    with av.open(str(out / "media" / f"{n}.mp4")) as c:
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    # the frames the model saw (JPEG in the shards, then H.264): close to the originals
    assert len(frames) == shard.num_frames + 1
    diff = np.abs(frames[2][:shard.frames.shape[1], :shard.frames.shape[2]].astype(int) - shard.frames[2].astype(int))
    assert diff.mean() < 8


@pytest.mark.slow
def test_page_without_playable_media_still_steps_through_the_masks(browser, tiny, tmp_path):
    _, out = tiny
    copy = tmp_path / "page"
    shutil.copytree(out, copy)
    (copy / "media" / "1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    browser.get((copy / "index.html").as_uri())
    _run(browser, "AVIS.select(1).then(() => AVIS.seekFrame(2)).then(() => done())")
    assert browser.execute_script("return AVIS.state.frame") == 2
    assert "cannot play media/1.mp4" in browser.execute_script("return document.getElementById('status').textContent")
    c1 = browser.execute_script("return AVIS.state.v.gt[0].color")
    img = _shot(browser, "canvas[data-layer=gt]", tmp_path / "gt_on_black.png")
    a = round(0.45 * 255) / 255
    assert _count(img, np.asarray(c1) * a) > 3000  # object #1 blended onto black
