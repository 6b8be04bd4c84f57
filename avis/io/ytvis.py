"""YouTube-VIS annotation and result JSON: load, validate, normalise, save.

Formats (JSON Schemas in ``annotations/schemas/``, protocol in ``docs/evaluation.md``):

* annotations: ``{"videos": [...], "annotations": [...], "categories": [...]}``; a video has ``id, width,
  height, length, file_names`` and optionally the builder extensions ``fps`` / ``frame_times`` /
  ``video_file`` / ``audio_file``; an annotation has ``id, video_id, category_id, iscrowd,
  segmentations [T], bboxes [T], areas [T]`` with ``None`` where the instance is absent, and optionally
  ``sounding [T]`` (booleans: is the instance sounding in the frame; FSLA needs it).
* results: a list of ``{"video_id", "category_id", "score", "segmentations": [T RLE or None]}``, in a JSON
  file or as ``results.json`` at the root of a zip (what ``avis export --format ytvis-zip`` writes for the
  evaluation servers): :func:`load_results` reads both.

:func:`validate_annotations` / :func:`validate_results` return one message per problem, each naming the
video, annotation (or result index) and frame it is about. They check structure and sizes only: masks are
never decoded, so a YTVIS-sized file (thousands of annotations) validates in well under a second.

After :func:`load_annotations` / :func:`load_results` every segmentation is compressed RLE with ``str``
counts; annotations also get ``areas`` and ``bboxes`` filled in where missing, ``iscrowd`` and ``length``.
"""

from __future__ import annotations

import gc
import math
import os
import re
from collections.abc import Iterable
from contextlib import contextmanager
from functools import lru_cache
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypedDict

from avis.errors import InputError
from avis.io import masks as mask_io
from avis.io.atomic import atomic_write_json

# Refuse absurd files before reading them (json.load needs several times the file size in memory). The
# environment variable AVIS_MAX_JSON_BYTES raises (or lowers) the limit, read at each load.
MAX_JSON_BYTES = 256 << 20
MAX_SIDE = 16384  # pixels: larger frames (beyond 16K video) are a corrupt or hostile header, not a video
MAX_LISTED_PROBLEMS = 5  # an InputError lists this many problems and counts the rest

# Compressed RLE counts use the characters 48..111 ('0'..'o') of pycocotools' LEB128-like code.
_RLE_CHARS = re.compile(r"[0-o]*")


def load_json(path: str | os.PathLike):
    """Read a JSON file; any problem becomes an :class:`InputError` naming the file.

    msgspec decodes it (several times faster than ``json`` on large files); what it refuses (``NaN``, a stray
    byte) goes through Python's parser, whose messages give the line and column and which reads ``NaN`` for the
    validators to name. An integer with more digits than Python converts (4300) is refused with its place in
    the file (a 5000-digit id used to crash every command); the validators bound ids and sizes to 64 bits."""
    path = Path(path)
    return decode_json(_read_bytes(path), path)


def _read_bytes(path: Path, array: bool = False):
    """The file's bytes, refused (naming it) beyond :func:`max_json_bytes`. ``array``: as a writable uint8 NumPy
    array of the size the file had when looked at (NumPy backs large arrays with huge pages: a tenth of the page
    faults of a ``bytes`` object of a hundred MB)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None
    limit = max_json_bytes()
    if size > limit:
        raise InputError(f"file is {size} bytes, larger than the {limit} byte limit for JSON (set "
                         "AVIS_MAX_JSON_BYTES to raise it)", path)
    from avis.io.files import open_regular

    try:
        with open_regular(path, "rb") as f:
            if not array:
                return f.read()
            import numpy as np

            buf = np.empty(size, np.uint8)
            view, n = memoryview(buf), 0
            while n < size and (k := f.readinto(view[n:])):
                n += k
            return buf[:n]
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None


@contextmanager
def _gc_paused():
    """Decoding a large file creates millions of containers, and the cyclic garbage collector would walk them
    again and again (3x the decoding time) although JSON cannot make cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _IntTooLong(Exception):
    pass


_INT_DIGITS = 4300  # Python's limit for int(str), which both parsers apply


def _bounded_int(digits: str) -> int:
    if len(digits) > _INT_DIGITS:  # refused here, before any conversion
        raise _IntTooLong
    return int(digits)


def _long_int_where(data: bytes) -> str:
    """' at line L column C' of the first number token longer than Python reads (or '' if none is found)."""
    m = re.search(rb'(?<![\w".+-])-?\d{%d,}(?![\w".])' % (_INT_DIGITS + 1), data)
    if m is None:
        return ""
    start = m.start()
    line, column = data.count(b"\n", 0, start) + 1, start - data.rfind(b"\n", 0, start)
    return f" ({len(m.group().lstrip(b'-'))} digits) at line {line} column {column}"


def decode_json(data: bytes, path=None):
    """JSON ``data`` -> Python objects (see :func:`load_json`); problems are :class:`InputError` naming ``path``."""
    import msgspec

    try:
        with _gc_paused():
            return msgspec.json.decode(data)
    except RecursionError:
        raise InputError("JSON nested too deeply", path) from None
    except (msgspec.DecodeError, msgspec.ValidationError):
        # not strict JSON, or a number out of msgspec's range: Python's parser says where, reads NaN / Infinity
        # / 1e400 (for the validators to name) and refuses an over-long integer before converting it
        pass
    import json

    try:
        with _gc_paused():
            return json.loads(data.decode("utf-8"), parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path) from None
    except _IntTooLong:
        raise InputError(f"an integer longer than {_INT_DIGITS} digits{_long_int_where(data)}", path) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", path) from None


def max_json_bytes() -> int:
    """The JSON size limit: ``AVIS_MAX_JSON_BYTES`` (bytes) if set, else :data:`MAX_JSON_BYTES`."""
    value = os.environ.get("AVIS_MAX_JSON_BYTES")
    if not value:
        return MAX_JSON_BYTES
    try:
        return int(value)
    except ValueError:
        from avis.errors import ConfigError

        raise ConfigError(f"AVIS_MAX_JSON_BYTES must be a number of bytes, got {value!r}") from None


def save_json(obj, path: str | os.PathLike, indent: int | None = None) -> None:
    """Atomic JSON write."""
    atomic_write_json(obj, path, indent=indent)


# --------------------------------------------------------------------------------------------- validation
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _is_int(x) -> bool:
    """An integer of 64 bits (ids, sizes and counts become numpy int64 arrays downstream)."""
    return isinstance(x, int) and not isinstance(x, bool) and _I64_MIN <= x <= _I64_MAX


def _show(x) -> str:
    """``repr(x)`` for a message, short: an integer beyond 64 bits by its first digits and length, anything
    else cut at 60 characters."""
    if isinstance(x, int) and not isinstance(x, bool) and not _I64_MIN <= x <= _I64_MAX:
        digits = str(abs(x))
        return f"{'-' if x < 0 else ''}{digits[:12]}... ({len(digits)} digits, beyond 64 bits)"
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_finite(x) -> bool:
    if isinstance(x, int) and not isinstance(x, bool):
        return -1e308 < x < 1e308  # an integer too large for a float is not a usable number either
    return isinstance(x, float) and math.isfinite(x)


def _where(video=None, ann=None, frame=None, result=None) -> str:
    parts = []
    if result is not None:
        parts.append(f"result {result}")
    if video is not None:
        parts.append(f"video {video}")
    if ann is not None:
        parts.append(f"annotation {ann}")
    if frame is not None:
        parts.append(f"frame {frame}")
    return " ".join(parts)


def _tname(x) -> str:
    return "null" if x is None else type(x).__name__


def check_segmentation(seg, height: int | None, width: int | None) -> str | None:
    """What is wrong with one per-frame segmentation (``None`` when it is fine or null).

    Accepts a polygon list, uncompressed RLE (``counts`` a list) or compressed RLE (``counts`` a string).
    ``height``/``width`` (the video's size) are checked against an RLE's ``size`` when given. Nothing is
    decoded; uncompressed counts are summed, compressed counts are checked for their character set only.
    """
    if seg is None:
        return None
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list (use null for an absent instance)"
        for k, poly in enumerate(seg):
            # pycocotools reads a 4-number "polygon" as a box, so fewer than 3 points is an error, not a quirk
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, list) else _tname(poly)
                return f"polygon {k} must be a list of an even number (>= 6) of coordinates, got {n}"
            if not all(_is_finite(c) for c in poly):
                return f"polygon {k} has a non-numeric or non-finite coordinate"
        return None
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            return "RLE needs 'size' and 'counts'"
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
            return f"RLE size must be [height, width] (two non-negative integers), got {_show(size)}"
        if height is not None and width is not None and size != [height, width]:
            return f"RLE size {size} does not match the video's [height, width] [{height}, {width}]"
        counts = seg["counts"]
        if isinstance(counts, str):
            if not _RLE_CHARS.fullmatch(counts):
                return "compressed RLE counts contain characters outside pycocotools' code ('0'..'o')"
        elif isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts):
                return "uncompressed RLE counts must be non-negative integers"
            if sum(counts) != size[0] * size[1]:
                return f"uncompressed RLE counts sum to {sum(counts)}, not height*width = {size[0] * size[1]}"
        else:
            return f"RLE counts must be a string or a list of integers, got {_tname(counts)}"
        return None
    return f"segmentation is {_tname(seg)}, expected null, a polygon list or an RLE dict"


def check_relpath(p) -> str | None:
    """What is wrong with a media path of an annotation file (None: a relative path without '..')."""
    if not isinstance(p, str) or not p:
        return f"must be a non-empty string, got {_tname(p)}"
    if ".." not in p and ":" not in p and p[0] not in "/\\":
        # certainly relative (POSIX: no leading '/'; Windows: no drive without ':' or a leading '\\') and free
        # of '..': the common file name, without building two path objects per frame
        return None
    if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or ".." in re.split(r"[\\/]", p):
        return f"{p!r} must be a path relative to the videos folder, without '..'"
    return None


def _video_length(v: dict, where: str, problems: list[str]) -> int | None:
    """The video's frame count from length / file_names / frame_times, reporting every disagreement."""
    counts = {}
    if "length" in v:
        if _is_int(v["length"]) and v["length"] >= 0:
            counts["length"] = v["length"]
        else:
            problems.append(f"{where}: 'length' must be a non-negative integer, got {_show(v['length'])}")
    if "file_names" in v:
        fn = v["file_names"]
        if isinstance(fn, list) and all(isinstance(f, str) for f in fn):
            counts["file_names"] = len(fn)
            bad = next((m for f in fn if (m := check_relpath(f))), None)
            if bad:
                problems.append(f"{where}: 'file_names' {bad}")
        else:
            problems.append(f"{where}: 'file_names' must be a list of strings")
    if "frame_times" in v:
        ft = v["frame_times"]
        if not (isinstance(ft, list) and all(_is_finite(t) for t in ft)):
            problems.append(f"{where}: 'frame_times' must be a list of finite numbers (seconds)")
        else:
            counts["frame_times"] = len(ft)
            for t in range(1, len(ft)):
                if ft[t] <= ft[t - 1]:
                    problems.append(f"{where} frame {t}: frame_times must increase ({ft[t - 1]} then {ft[t]})")
                    break
            if ft and ft[0] < 0:
                problems.append(f"{where} frame 0: frame_times must not be negative ({ft[0]})")
    if not counts:
        if not any(k in v for k in ("length", "file_names", "frame_times")):
            problems.append(f"{where}: needs 'file_names' (or 'length')")
        return None
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n} {k}" if k != "length" else f"length {n}" for k, n in counts.items())
        problems.append(f"{where}: frame count mismatch: {listed}")
    return counts.get("length", counts.get("file_names", counts.get("frame_times")))


def _id_problem(section: str, i: int, entry: dict) -> str | None:
    """The problem of ``section[i]`` (an object) having no integer 'id' (missing, or another type); None
    when its id is an integer."""
    if _is_int(entry.get("id")):
        return None
    if "id" in entry:
        return f"{section}[{i}]: 'id' must be an integer, got {_show(entry['id'])}"
    return f"{section}[{i}]: missing 'id'"


def _check_video(i: int, v, ids: set, problems: list[str]) -> tuple[object, dict] | None:
    if not isinstance(v, dict):
        problems.append(f"videos[{i}]: must be an object, got {_tname(v)}")
        return None
    if msg := _id_problem("videos", i, v):
        problems.append(msg)
        return None
    vid = v["id"]
    where = _where(video=vid)
    if vid in ids:
        problems.append(f"{where}: duplicate video id")
        return None
    ids.add(vid)
    info = {"height": None, "width": None, "length": None}
    for key in ("height", "width"):
        if key not in v:
            problems.append(f"{where}: missing '{key}'")
        elif not (_is_int(v[key]) and v[key] > 0):
            problems.append(f"{where}: '{key}' must be a positive integer, got {_show(v[key])}")
        elif v[key] > MAX_SIDE:
            problems.append(f"{where}: '{key}' {v[key]} is beyond the {MAX_SIDE} pixel limit")
        else:
            info[key] = v[key]
    info["length"] = _video_length(v, where, problems)
    if "fps" in v and not (_is_finite(v["fps"]) and v["fps"] > 0):
        problems.append(f"{where}: 'fps' must be a positive number, got {_show(v['fps'])}")
    for key in ("video_file", "audio_file"):
        if key in v and (msg := check_relpath(v[key])):
            problems.append(f"{where}: '{key}' {msg}")
    return vid, info


def _frame_list_ok(xs, key: str, T: int | None, where: str, problems: list[str]) -> bool:
    """Whether ``xs`` (an annotation's or result's ``key``) is a list, so its entries can be checked; notes
    a non-list, or a list whose length is not the video's T frames (T None: unknown, not checked)."""
    if not isinstance(xs, list):
        problems.append(f"{where}: '{key}' must be a list (one entry per frame), got {_tname(xs)}")
        return False
    if T is not None and len(xs) != T:
        problems.append(f"{where}: frame count mismatch: {len(xs)} {key} for a video of {T} frames")
    return True


def _check_per_frame_list(a: dict, key: str, item: str, T: int | None, where: str, problems: list[str],
                          item_ok, item_desc: str) -> None:
    if key not in a:
        return
    xs = a[key]
    if not _frame_list_ok(xs, key, T, where, problems):
        return
    for t, x in enumerate(xs):
        if x is not None and not item_ok(x):
            problems.append(f"{where} frame {t}: {item} must be {item_desc}, got {_show(x)}")
            break  # one message per list is enough to find the writer's bug


def _bbox_ok(b) -> bool:
    return isinstance(b, list) and len(b) == 4 and all(_is_finite(c) for c in b) and b[2] >= 0 and b[3] >= 0


def _flag_ok(x) -> bool:
    return isinstance(x, bool)


def _area_ok(x) -> bool:
    return _is_finite(x) and x >= 0


def _check_segmentations(segs, T, h, w, where_of, problems: list[str], where: str) -> None:
    if not _frame_list_ok(segs, "segmentations", T, where, problems):
        return
    for t, s in enumerate(segs):
        if s is not None and (msg := check_segmentation(s, h, w)):
            problems.append(f"{where_of(t)}: {msg}")


def _top_level(data, problems: list[str]) -> bool:
    if not isinstance(data, dict):
        problems.append(f"not a YTVIS annotation file: top level is {_tname(data)}, expected an object with "
                        "'videos', 'annotations', 'categories'")
        return False
    ok = True
    for key in ("videos", "annotations", "categories"):
        if key not in data:
            problems.append(f"missing top-level '{key}'")
            ok = False
        elif not isinstance(data[key], list):
            problems.append(f"top-level '{key}' must be a list, got {_tname(data[key])}")
            ok = False
    return ok


def _categories(cats: list, problems: list[str]) -> set:
    ids: set = set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict):
            problems.append(f"categories[{i}]: must be an object, got {_tname(c)}")
            continue
        if msg := _id_problem("categories", i, c):
            problems.append(msg)
            continue
        cid = c["id"]
        if cid in ids:
            problems.append(f"category {cid}: duplicate category id")
        ids.add(cid)
        if not isinstance(c.get("name"), str):
            problems.append(f"category {cid}: 'name' must be a string, got {_show(c.get('name'))}")
    return ids


def validate_annotations(data) -> list[str]:
    """All problems of a YTVIS annotation dict, one message each (empty list = valid)."""
    return _validate_annotations(data)[0]


def _validate_annotations(data) -> tuple[list[str], bool]:
    """:func:`validate_annotations`, and whether every segmentation is certainly a compressed RLE with ``str``
    counts of its video's size (then normalisation has nothing to convert)."""
    problems: list[str] = []
    if not _top_level(data, problems):
        return problems, False
    cat_ids = _categories(data["categories"], problems)
    videos: dict = {}
    seen_videos: set = set()
    for i, v in enumerate(data["videos"]):
        if (r := _check_video(i, v, seen_videos, problems)) is not None:
            videos[r[0]] = r[1]
    ann_ids: set = set()
    # the per-frame lists checked a column at a time first: when certainly fine, the loop skips them
    frames_ok = _frames_certainly_valid(data["annotations"], videos)
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            problems.append(f"annotations[{i}]: must be an object, got {_tname(a)}")
            continue
        aid = a.get("id")
        if msg := _id_problem("annotations", i, a):
            problems.append(msg)
            aid = f"[{i}]"  # still checked, named by its place in the list
        elif aid in ann_ids:
            problems.append(f"annotation {aid}: duplicate annotation id")
        else:
            ann_ids.add(aid)
        vid = a.get("video_id")
        if "video_id" not in a:
            problems.append(f"annotation {aid}: missing 'video_id'")
            continue
        if not _is_int(vid) or vid not in videos:
            what = "unknown video_id" if _is_int(vid) else "'video_id' must be an integer, got"
            problems.append(f"annotation {aid}: {what} {_show(vid)}")
            continue
        where = _where(video=vid, ann=aid)
        if "category_id" not in a:
            problems.append(f"{where}: missing 'category_id'")
        elif not _is_int(a["category_id"]):
            problems.append(f"{where}: 'category_id' must be an integer, got {_show(a['category_id'])}")
        elif a["category_id"] not in cat_ids:
            problems.append(f"{where}: unknown category_id {a['category_id']}")
        if "iscrowd" in a and not (_is_int(a["iscrowd"]) and a["iscrowd"] in (0, 1)):
            problems.append(f"{where}: 'iscrowd' must be 0 or 1, got {_show(a['iscrowd'])}")
        if frames_ok:
            continue
        info = videos[vid]
        T, h, w = info["length"], info["height"], info["width"]
        if "segmentations" not in a:
            problems.append(f"{where}: missing 'segmentations'")
        else:
            _check_segmentations(a["segmentations"], T, h, w,
                                 lambda t, vid=vid, aid=aid: _where(video=vid, ann=aid, frame=t), problems, where)
        _check_per_frame_list(a, "areas", "area", T, where, problems, _area_ok, "a non-negative number or null")
        _check_per_frame_list(a, "bboxes", "bbox", T, where, problems, _bbox_ok, "[x, y, w, h] (finite, w, h >= 0) or null")
        _check_per_frame_list(a, "sounding", "sounding flag", T, where, problems, _flag_ok, "true, false or null")
    return problems, frames_ok


_ABOVE_MIN = math.nextafter(-1e308, 0.0)  # the smallest float that _is_finite accepts (it wants x > -1e308)


def _numbers_in(values: list, lo: float) -> bool:
    """Whether every value is an int or float (not bool) with ``lo <= x < 1e308`` (a subset of what
    :func:`_is_finite` accepts), checked as one float array."""
    if set(map(type, values)) - {int, float}:
        return False
    import numpy as np

    try:
        arr = np.array(values, dtype=np.float64)
    except OverflowError:
        return False
    return bool(((arr >= lo) & (arr < 1e308)).all())


def _frames_certainly_valid(anns, videos: dict) -> bool:
    """Whether the per-frame checks of :func:`validate_annotations` would find nothing in any annotation, decided
    a column at a time (``videos``: id -> checked height, width, length). ``False`` means "not certain": the
    checks then run annotation by annotation and name the problems. Certain only for the common form: every
    segmentation null or a compressed RLE ``{"size": [h, w], "counts": str}`` of the video's size, ``areas``
    non-negative numbers, ``bboxes`` [x, y, w, h] with w, h >= 0, ``sounding`` booleans (nulls anywhere)."""
    with _gc_paused():
        try:
            if set(map(type, anns)) - {dict}:
                return False
            info = [videos[a["video_id"]] for a in anns]
            shape = [(v["height"], v["width"], v["length"]) for v in info]
            if any(None in s for s in shape):
                return False
            lengths = [n for _, _, n in shape]
            segs = [a["segmentations"] for a in anns]
            if set(map(type, segs)) - {list} or list(map(len, segs)) != lengths:
                return False
            masks = [m for m in chain.from_iterable(segs) if m is not None]
            if set(map(type, masks)) - {dict} or set(map(len, masks)) - {2}:
                return False
            sizes = list(map(itemgetter("size"), masks))
            counts = list(map(itemgetter("counts"), masks))
            present = [len(s) - s.count(None) for s in segs]
            if sizes != list(chain.from_iterable(repeat([h, w], k) for (h, w, _), k in zip(shape, present))):
                return False
            if set(map(type, chain.from_iterable(sizes))) - {int} or set(map(type, counts)) - {str}:
                return False  # (an equal [360.0, 640.0] or [True, ...] is not a size)
            if "".join(counts).encode("ascii").translate(None, _RLE_BYTES):
                return False
            for key in ("areas", "bboxes", "sounding"):
                rows = [(a[key], n) for a, n in zip(anns, lengths) if key in a]
                if not rows:
                    continue
                lists = [x for x, _ in rows]
                if set(map(type, lists)) - {list} or list(map(len, lists)) != [n for _, n in rows]:
                    return False
                vals = [x for x in chain.from_iterable(lists) if x is not None]
                if key == "sounding":
                    if set(map(type, vals)) - {bool}:
                        return False
                elif key == "areas":
                    if not _numbers_in(vals, 0.0):
                        return False
                else:
                    if set(map(type, vals)) - {list} or set(map(len, vals)) - {4}:
                        return False
                    if not _numbers_in(list(chain.from_iterable(vals)), _ABOVE_MIN):
                        return False
                    if not _numbers_in([b[2] for b in vals] + [b[3] for b in vals], 0.0):
                        return False
        except (KeyError, TypeError, UnicodeEncodeError):
            return False
    return True


def _gt_index(gt) -> tuple[dict, set]:
    """video id -> (height, width, length) and the category ids of a (raw or normalised) annotation dict."""
    videos = {}
    for v in gt.get("videos", []):
        if isinstance(v, dict) and _is_int(v.get("id")):
            n = v.get("length")
            if not _is_int(n):
                n = len(v["file_names"]) if isinstance(v.get("file_names"), list) else (
                    len(v["frame_times"]) if isinstance(v.get("frame_times"), list) else None)
            videos[v["id"]] = (v.get("height"), v.get("width"), n)
    cats = {c["id"] for c in gt.get("categories", []) if isinstance(c, dict) and _is_int(c.get("id"))}
    return videos, cats


def _results_list(results):
    if isinstance(results, dict) and isinstance(results.get("annotations"), list):
        return results["annotations"]
    return results


def validate_results(results, gt: dict | None = None) -> list[str]:
    """All problems of a YTVIS results list, one message each; with ``gt`` also checks it against the
    ground truth (known videos and categories, frame counts and mask sizes)."""
    results = _results_list(results)
    if not isinstance(results, list):
        return [f"not a YTVIS results file: top level is {_tname(results)}, expected a list of predictions"]
    videos, cats = _gt_index(gt) if gt is not None else (None, None)
    problems: list[str] = []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            problems.append(f"result {i}: must be an object, got {_tname(r)}")
            continue
        missing = [k for k in ("video_id", "category_id", "score", "segmentations") if k not in r]
        if missing:
            problems.append(f"result {i}: missing {', '.join(repr(k) for k in missing)}")
        vid = r.get("video_id")
        h = w = T = None
        if "video_id" in r:
            if not _is_int(vid):
                problems.append(f"result {i}: 'video_id' must be an integer, got {_show(vid)}")
                vid = None
            elif videos is not None:
                if vid not in videos:
                    problems.append(f"result {i} video {vid}: unknown video_id (not in the ground truth)")
                    continue
                h, w, T = videos[vid]
        where = _where(result=i, video=vid)
        if "category_id" in r:
            c = r["category_id"]
            if not _is_int(c):
                problems.append(f"{where}: 'category_id' must be an integer, got {_show(c)}")
            elif cats is not None and c not in cats:
                problems.append(f"{where}: unknown category_id {c}")
        if "score" in r and not _is_finite(r["score"]):
            problems.append(f"{where}: 'score' must be a finite number, got {_show(r['score'])}")
        if "segmentations" in r:
            segs = r["segmentations"]
            _check_segmentations(segs, T, h, w, lambda t, i=i, vid=vid: _where(result=i, video=vid, frame=t),
                                 problems, where)
            if isinstance(segs, list) and h is None:
                # without the ground truth, a result's masks must at least agree with each other
                sizes = {tuple(s["size"]) for s in segs if isinstance(s, dict) and isinstance(s.get("size"), list)}
                if len(sizes) > 1:
                    problems.append(f"{where}: RLE sizes differ between frames: {sorted(sizes)}")
    return problems


_RLE_BYTES = bytes(range(48, 112))  # '0'..'o', the characters of a compressed RLE string


class _Rle(TypedDict):
    size: list[int]
    counts: str


@lru_cache(maxsize=1)
def _results_decoder():
    """msgspec decoder of the common results file: a list of objects whose values are scalars, objects, or
    lists of (null or ``{size: [int], counts: str}``); it checks these types while decoding (RLE keys beyond
    ``size`` / ``counts`` are dropped, as normalisation does)."""
    import msgspec

    return msgspec.json.Decoder(list[dict[str, None | bool | int | float | str | list[_Rle | None] | dict[str, Any]]])


def _decode_results_typed(data: bytes):
    """``data`` decoded by :func:`_results_decoder`, or ``None`` when it is anything else (then the general path
    decodes it and the full validation names its problems)."""
    import msgspec

    try:
        with _gc_paused():
            return _results_decoder().decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def results_certainly_valid(results, gt: dict, typed: bool = False) -> bool:
    """Whether :func:`validate_results` (with ``gt``) would find nothing, decided a column at a time: entries
    are objects with integer ids of the ground truth's videos and categories, a finite score, one mask per frame
    of the video, each null or a compressed RLE (``counts`` a string of pycocotools' characters, ``size`` the
    video's, and no other keys). ``False`` means "not certain": the full validation then names the problems
    (polygons and uncompressed RLE, which are valid, also take that path). ``typed``: ``results`` come from
    :func:`_decode_results_typed`, which already checked the masks' types and keys."""
    if not isinstance(results, list):
        return False
    with _gc_paused():
        return _certainly_valid(results, gt, typed)


def _certainly_valid(results: list, gt: dict, typed: bool) -> bool:
    videos, cats = _gt_index(gt)
    try:
        if set(map(type, results)) - {dict}:
            return False
        vids = [r["video_id"] for r in results]
        cids = [r["category_id"] for r in results]
        scores = [r["score"] for r in results]
        segs = [r["segmentations"] for r in results]
        if (set(map(type, vids)) - {int} or set(map(type, cids)) - {int} or set(map(type, segs)) - {list}
                or set(map(type, scores)) - {float, int}):
            return False
        if not (set(vids) <= videos.keys() and set(cids) <= cats):  # known ids are 64-bit ids
            return False
        if not all(-1e308 < x < 1e308 for x in scores):  # finite, and ints that fit a float (NaN compares False)
            return False
        shape = [videos[v] for v in vids]
        if list(map(len, segs)) != [n for _, _, n in shape]:
            return False
        flat = list(chain.from_iterable(segs))
        masks = [m for m in flat if m is not None]
        if not typed and (set(map(type, masks)) - {dict} or set(map(len, masks)) - {2}):
            return False
        sizes = list(map(itemgetter("size"), masks))
        counts = list(map(itemgetter("counts"), masks))
    except (KeyError, TypeError):
        return False
    present = [len(s) - s.count(None) for s in segs]
    if sizes != list(chain.from_iterable(repeat([h, w], k) for (h, w, _), k in zip(shape, present))):
        return False
    if not typed and (set(map(type, chain.from_iterable(sizes))) - {int} or set(map(type, counts)) - {str}):
        return False  # (an equal [720.0, 1280.0] or [True, ...] is not a size)
    try:
        return not "".join(counts).encode("ascii").translate(None, _RLE_BYTES)
    except UnicodeEncodeError:
        return False


def _raise_problems(problems: list[str], path) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
    n = len(problems)
    raise InputError(f"{n} problem{'s' if n > 1 else ''}: {shown}{tail}", path)


# ------------------------------------------------------------------------------------ normalise / load / save
def normalize_annotations(data: dict, path: str | None = None, compressed: bool = False) -> dict:
    """Convert every segmentation to compressed RLE and fill ``areas``/``bboxes``/``length`` in place.

    Expects valid input (see :func:`validate_annotations`); conversion failures still raise
    :class:`InputError` naming ``path``. ``compressed``: every segmentation is known to be a compressed RLE dict
    ``{"size": [h, w], "counts": str}`` of its video's size already (what the conversion would make), and is
    kept as it is.
    """
    if not isinstance(data, dict) or not all(k in data for k in ("videos", "annotations", "categories")):
        raise InputError("not a YTVIS annotation file (needs 'videos', 'annotations', 'categories')", path)
    videos = {}
    for v in data["videos"]:
        if "length" not in v:
            if "file_names" in v:
                v["length"] = len(v["file_names"])
            elif "frame_times" in v:
                v["length"] = len(v["frame_times"])
        videos[v["id"]] = v
    for a in data["annotations"]:
        v = videos.get(a.get("video_id"))
        if v is None:
            raise InputError(f"annotation {a.get('id')}: unknown video_id {a.get('video_id')}", path)
        segs = a.get("segmentations", []) if compressed else []
        for t, s in enumerate(() if compressed else a.get("segmentations", [])):
            if s is None:
                segs.append(None)
                continue
            try:
                segs.append(mask_io.to_rle(s, v["height"], v["width"]))
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise InputError(f"video {v['id']} annotation {a.get('id')} frame {t}: {e}", path) from None
        a["segmentations"] = segs
        if not a.get("areas") or len(a["areas"]) != len(segs):
            a["areas"] = [None if s is None else mask_io.area(s) for s in segs]
        if not a.get("bboxes") or len(a["bboxes"]) != len(segs):
            a["bboxes"] = [None if s is None else mask_io.bbox(s) for s in segs]
        a.setdefault("iscrowd", 0)
    return data


def normalize_results(results: list[dict], gt: dict | None = None, path: str | None = None) -> list[dict]:
    """Convert every result segmentation to compressed RLE (str counts) in place.

    Polygons need the frame size, taken from ``gt`` (or another frame's RLE ``size`` of the same result).
    """
    videos = _gt_index(gt)[0] if gt is not None else {}
    for i, r in enumerate(results):
        size = videos.get(r.get("video_id"), (None, None, None))[:2]
        if size[0] is None:
            size = next((tuple(s["size"]) for s in r["segmentations"] if isinstance(s, dict)), (None, None))
        segs = []
        for t, s in enumerate(r["segmentations"]):
            if s is None:
                segs.append(None)
                continue
            h, w = (s["size"] if isinstance(s, dict) else size)
            if h is None:
                raise InputError(f"result {i} frame {t}: a polygon needs the frame size; pass the ground truth "
                                 "or use RLE", path)
            try:
                segs.append(mask_io.to_rle(s, h, w))
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise InputError(f"result {i} frame {t}: {e}", path) from None
        r["segmentations"] = segs
        r["score"] = float(r["score"])
    return results


def load_annotations(path: str | os.PathLike) -> dict:
    """Load, validate and normalise a YTVIS annotation JSON (see module docstring).

    Raises :class:`InputError` naming the file and listing the first problems when it is invalid.
    """
    data = load_json(path)
    problems, compressed = _validate_annotations(data)
    _raise_problems(problems, path)
    return normalize_annotations(data, os.fspath(path), compressed=compressed)


ZIP_MEMBER = "results.json"  # where evaluation servers (and ``avis export --format ytvis-zip``) put the results


def _zip_member(raw: bytes, path) -> bytes:
    """The bytes of ``results.json`` at the root of the zip ``raw`` (the file at ``path``), refused before
    inflating when it would be larger than the JSON limit: a zip bomb must not allocate gigabytes. (zipfile
    stops at the declared size, so a member that lies about it cannot inflate further.)"""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = z.namelist()
            if ZIP_MEMBER not in names:
                shown = ", ".join(repr(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")
                raise InputError(f"the zip has no {ZIP_MEMBER} at its root (it holds {shown or 'nothing'})", path)
            size, limit = z.getinfo(ZIP_MEMBER).file_size, max_json_bytes()
            if size > limit:
                raise InputError(f"{ZIP_MEMBER} inflates to {size} bytes, larger than the {limit} byte limit for "
                                 "JSON (set AVIS_MAX_JSON_BYTES to raise it)", path)
            return z.read(ZIP_MEMBER)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as e:
        raise InputError(f"unreadable zip ({str(e)[:200]})", path) from None


def read_results_buffer(path: str | os.PathLike):
    """:func:`read_results_bytes`, with a plain JSON file as a writable uint8 NumPy array (see
    :func:`_read_bytes`), which :func:`avis.evaluation.rle_c.load_packed_results` compacts in place."""
    path = Path(path)
    raw = _read_bytes(path, array=True)
    if raw[:2].tobytes() == b"PK":
        return _zip_member(raw.tobytes(), path)
    if path.suffix.lower() == ".zip":
        raise InputError("not a zip file", path)
    return raw


def read_results_bytes(path: str | os.PathLike) -> bytes:
    """The JSON bytes of a results file: the file itself, or the ``results.json`` inside a zip (a JSON text
    cannot start with the zip signature ``PK``)."""
    path = Path(path)
    raw = _read_bytes(path)
    if raw[:2] == b"PK":
        return _zip_member(raw, path)
    if path.suffix.lower() == ".zip":
        raise InputError("not a zip file", path)
    return raw


def load_results(path: str | os.PathLike, gt: dict | str | os.PathLike | None = None) -> list[dict]:
    """Load, validate and normalise a YTVIS results JSON (a list, or ``{"annotations": [...]}`` as some
    tools write it), or the ``results.zip`` of an evaluation server (``results.json`` at its root). ``gt``
    (an annotation dict or the path of one) adds the checks against the ground truth: every result's video
    and category must exist there, frame counts and mask sizes must match."""
    if gt is not None and not isinstance(gt, dict):
        gt = load_annotations(gt)
    path = Path(path)
    raw = read_results_bytes(path)
    if gt is not None:
        # the common file: types checked while decoding, the rest a column at a time
        data = _decode_results_typed(raw)
        if data is not None and results_certainly_valid(data, gt, typed=True):
            for r in data:  # already compressed RLE with str counts (what normalize_results would make)
                r["score"] = float(r["score"])
            return data
    data = _results_list(decode_json(raw, path))
    problems = validate_results(data, gt)
    if problems and gt is not None and (note := _mismatch_summary(data, gt)):
        problems[-1] += f" -- {note}"  # after the counted problems, so that their count and order stay
    _raise_problems(problems, path)
    return normalize_results(data, gt, os.fspath(path))


def _mismatch_summary(results, gt: dict) -> str:
    """A sentence for results that do not belong to ``gt`` (video ids it does not have, frame counts that
    differ from its videos'): the per-result problems alone read as a broken file. '' when they belong."""
    if not isinstance(results, list):
        return ""
    videos = _gt_index(gt)[0]
    vids = {r.get("video_id") for r in results if isinstance(r, dict) and _is_int(r.get("video_id"))}
    unknown = sorted(vids - videos.keys())
    lengths = {r["video_id"]: len(r["segmentations"]) for r in results if isinstance(r, dict)
               and r.get("video_id") in videos and isinstance(r.get("segmentations"), list)}
    other = sorted(v for v, n in lengths.items() if videos[v][2] is not None and n != videos[v][2])

    def ids(xs):
        return ", ".join(map(str, xs[:5])) + (" ..." if len(xs) > 5 else "")

    parts = []
    if unknown:
        parts.append(f"{len(unknown)} of their {len(vids)} video ids are not in the ground truth ({ids(unknown)})")
    if other:
        parts.append(f"{len(other)} of their {len(vids)} videos have another number of frames than the ground "
                     f"truth's ({ids(other)})")
    return ("these results are for other videos: " + "; ".join(parts)) if parts else ""


def _str_counts(segs: Iterable) -> list:
    out = []
    for s in segs:
        if isinstance(s, dict) and isinstance(s.get("counts"), bytes):
            s = {"size": list(s["size"]), "counts": s["counts"].decode("ascii")}
        out.append(s)
    return out


def save_annotations(data: dict, path: str | os.PathLike, indent: int | None = None) -> None:
    """Validate (``ValueError`` listing the problems: a bug of the writer, not of the user) and write atomically."""
    for a in data.get("annotations", []):
        a["segmentations"] = _str_counts(a["segmentations"])
    problems = validate_annotations(data)
    if problems:
        raise ValueError(f"refusing to write invalid annotations to {os.fspath(path)}: " + "; ".join(problems[:5]))
    save_json(data, path, indent=indent)


def save_results(results: list[dict], path: str | os.PathLike, indent: int | None = None) -> None:
    """Validate (``ValueError`` on problems) and write a results list atomically."""
    for r in results:
        r["segmentations"] = _str_counts(r["segmentations"])
    problems = validate_results(results)
    if problems:
        raise ValueError(f"refusing to write invalid results to {os.fspath(path)}: " + "; ".join(problems[:5]))
    save_json(results, path, indent=indent)


def frame_times(video: dict, fps: float | None = None) -> list[float] | None:
    """Presentation times (s) of a video entry's annotated frames: ``frame_times``, else ``i / fps`` from the
    entry's ``fps`` (or the ``fps`` argument); ``None`` when neither is known."""
    if video.get("frame_times") is not None:
        return [float(t) for t in video["frame_times"]]
    rate = video.get("fps") or fps
    n = video.get("length", len(video.get("file_names", [])))
    return None if not rate else [i / float(rate) for i in range(n)]
