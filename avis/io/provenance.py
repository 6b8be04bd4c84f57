"""Which media folder a ``videos.json`` of ``avis infer`` may name: files avis itself wrote, on this machine.

Media paths in annotation files stay inside a folder the user gives (``--videos``; see docs/reliability.md): a
downloaded annotation file must not pull any video of this machine into shards or exports. ``avis infer`` runs
on files anywhere, so its ``videos.json`` names their paths relative to the folder that holds them all and
records that folder (``"avis": {"videos_dir": ..., "signature": ...}``). ``avis export`` (and whoever else
takes ``--videos``) may use the recorded folder when none is given, but only when the record carries a valid
signature: an HMAC-SHA256 of the folder and the media paths under a random key kept in this user's data
folder (as Jupyter trusts the notebooks it wrote itself). A file written elsewhere, by someone else or edited
since, has no valid signature, and its folder is not used: give ``--videos``.

The key: ``$AVIS_KEY_FILE``, else ``$XDG_DATA_HOME/avis/infer.key`` (``~/.local/share/avis/infer.key``), made
on first use (32 random bytes, readable by this user only). Without a writable place for it nothing is signed
and ``--videos`` is needed, as for any annotation file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

KEY_ENV = "AVIS_KEY_FILE"
RECORD = "avis"  # the top-level key of videos.json holding the record


def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "avis" / "infer.key"


def _key(create: bool) -> bytes | None:
    path = key_path()
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    if not create:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # the first process to make a key wins; the others read it
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_bytes()
    except OSError as e:
        log.warning("cannot keep the key that marks avis infer's videos.json as avis's own (%s: %s): "
                    "avis export will need --videos", path, e.strerror)
        return None


def _payload(videos_dir: str, videos: list) -> bytes:
    media = [[v.get("id"), v.get("video_file"), v.get("audio_file"), v.get("file_names")]
             for v in videos if isinstance(v, dict)]
    return json.dumps({"videos_dir": videos_dir, "media": media}, sort_keys=True).encode()


def record(videos_dir: str | os.PathLike, videos: list[dict]) -> dict:
    """The ``avis`` record of a videos.json whose media paths are relative to ``videos_dir`` (absolute)."""
    d = os.fspath(videos_dir)
    rec = {"videos_dir": d}
    key = _key(create=True)
    if key is not None:
        rec["signature"] = hmac.new(key, _payload(d, videos), hashlib.sha256).hexdigest()
    return rec


def recorded_videos_dir(data: dict) -> tuple[str | None, str]:
    """``(folder, "")`` when ``data`` (an annotation dict) records a videos folder signed by this user's key,
    else ``(None, why)``: ``why`` is empty when it records none."""
    rec = data.get(RECORD) if isinstance(data, dict) else None
    if not isinstance(rec, dict) or not isinstance(rec.get("videos_dir"), str):
        return None, ""
    d = rec["videos_dir"]
    sig, key = rec.get("signature"), _key(create=False)
    if not isinstance(sig, str) or key is None:
        return None, f"it names the videos folder {d!r} but was not written by avis infer for this user"
    good = hmac.new(key, _payload(d, data.get("videos") or []), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, good):
        return None, (f"it names the videos folder {d!r} but was not written by avis infer for this user, or was "
                      "edited since")
    return d, ""
