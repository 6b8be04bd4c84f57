"""``avis build --ray [ADDRESS]``: the per-video work of :mod:`data_tools.build` as Ray tasks.

Without an address a local Ray instance is started (no dashboard, a small object store); ``auto`` or
``ray://host:port`` joins a cluster, whose nodes must see ``--videos`` and ``--out`` at the same paths (a
shared file system) and run the same avis version.

* A *video task* runs :func:`data_tools.build._work`, the code ``--workers`` runs, and writes the video's tar
  blocks to ``OUT/.build-parts/NNNNNNNNN.tar`` and its outcome (size, frames, sound, warnings or the reason it
  failed) to ``NNNNNNNNN.json`` beside it, both atomically; it returns the outcome only, so no frame goes
  through the driver or Ray's object store.
* The driver places the finished videos in input order with the same cut rule
  (:func:`data_tools.build.starts_new_shard`) and hands each full shard to a *shard task*, which joins the
  parts into ``shard-NNNNNN.tar`` (temporary name, fsync, rename). Shards are committed to the build state
  in order; their parts are deleted then. The output is byte-identical to a local build.
* A worker that dies (killed, out of memory) is retried by Ray (``max_retries``); an input whose task dies
  every time is reported as failed. A killed driver resumes (``--resume``, with or without ``--ray``) after
  the last committed shard, and with ``--ray`` keeps every part already written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from avis.errors import ConfigError
from avis.io.atomic import atomic_open, atomic_write_json
from data_tools import build as B

log = logging.getLogger(__name__)

RAY_RETRIES = 3  # attempts after a worker's death, per task
LOCAL_OBJECT_STORE = 96 << 20  # bytes; tasks return small outcomes only (Ray's minimum is 75 MiB)
TASKS_PER_CPU = 2  # videos in flight per CPU: enough to keep workers busy, few outcomes waiting


def _part(parts: Path, index: int, ext: str) -> Path:
    return parts / f"{index:09d}.{ext}"


def video_task(index: int, job: dict, settings: dict, ctx: dict, parts: str) -> dict:
    """One video -> its part (tar blocks) and outcome in ``parts``; returns the outcome."""
    index, res, error = B._work((index, job, settings, ctx))
    parts_dir = Path(parts)
    outcome = {"index": index, "error": error}
    if res is not None:
        with atomic_open(_part(parts_dir, index, "tar"), "wb") as f:
            for b in res["blocks"]:
                f.write(b)
        outcome.update(size=res["size"], num_frames=res["num_frames"], has_audio=res["has_audio"],
                       warnings=res["warnings"])
    atomic_write_json(outcome, _part(parts_dir, index, "json"))  # after the part: its presence means complete
    return outcome


def shard_task(out: str, shard_index: int, items: list[tuple[str, str, int]]) -> dict:
    """Join the parts ``items`` = [(key, part path, frames)] into shard ``shard_index`` of ``out``."""
    w = B.ShardWriter(Path(out), shard_index)
    try:
        for key, path, frames in items:
            with open(path, "rb") as f:
                w.add(key, [f.read()], frames)
        return w.close()
    except BaseException:
        w.f.close()
        w.tmp.unlink(missing_ok=True)
        raise


def connect(address: str, workers: int | None):
    """Start a local Ray instance (``address`` "local") or join a cluster -> the ``ray`` module. Called before
    the output folder is touched: a cluster that cannot be reached leaves an earlier build there as it was."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'avis[ray]'") from None
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address == "local":
            # The workers must import this very code (a checkout run with PYTHONPATH, not an installed copy).
            code = str(Path(B.__file__).resolve().parents[1])
            path = os.pathsep.join([code] + [p for p in [os.environ.get("PYTHONPATH")] if p])
            ray.init(address="local", num_cpus=workers or os.cpu_count(),
                     object_store_memory=LOCAL_OBJECT_STORE, runtime_env={"env_vars": {"PYTHONPATH": path}},
                     **quiet)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"--ray {address}: cannot start or join Ray ({e})") from None
    return ray


def _reusable_parts(parts: Path, start: int, n: int) -> dict[int, dict]:
    """Outcomes of videos from ``start`` on whose parts a killed run left complete; anything else is removed."""
    done = {}
    for p in sorted(parts.iterdir()):
        if p.suffix != ".json" or not p.stem.isdigit():
            continue
        index = int(p.stem)
        try:
            outcome = json.loads(p.read_text())
            tar = _part(parts, index, "tar")
            ok = start <= index < n and outcome.get("index") == index and (
                outcome.get("error") is not None or (tar.is_file() and tar.stat().st_size == outcome["size"]))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            done[index] = outcome
    for p in list(parts.iterdir()):  # stale parts, temporary files of killed tasks
        if not (p.stem.isdigit() and int(p.stem) in done):
            p.unlink(missing_ok=True)
    return done


def run_ray(ray, args, out: Path, jobs: list[dict], settings: dict, ctx: dict, state: B.BuildState,
            bar) -> None:
    """The build's per-video work as Ray tasks on ``ray`` (from :func:`connect`; the caller shuts it down)."""
    from tqdm import tqdm

    def write(msg):
        tqdm.write(msg, file=sys.stderr)

    n = len(jobs)
    start = state.data["next_index"]
    parts = out.resolve() / B.PARTS_DIR
    parts.mkdir(exist_ok=True)
    outcomes = _reusable_parts(parts, start, n)  # index -> outcome, placed in order below
    bar.update(len(outcomes))
    vtask = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(video_task)
    # joining parts is file I/O: it takes no CPU slot from the videos
    stask = ray.remote(num_cpus=0, max_retries=RAY_RETRIES)(shard_task)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    todo = iter(i for i in range(start, n) if i not in outcomes)
    videos: dict = {}  # ObjectRef -> input index
    shards: dict = {}  # ObjectRef -> (shard index, next_index, failed, no_audio)
    finished: dict = {}  # shard index -> (record, next_index, failed, no_audio)
    cursor, next_shard, next_commit = start, len(state.data["shards"]), len(state.data["shards"])
    current: list = []  # (key, part path, frames) of the shard being filled
    current_bytes = 0
    pending_failed: list = []
    pending_no_audio: list = []

    def close_shard(next_index):
        nonlocal next_shard, current, current_bytes
        ref = stask.remote(str(out.resolve()), next_shard, current)
        shards[ref] = (next_shard, next_index, pending_failed[:], pending_no_audio[:])
        pending_failed.clear()
        pending_no_audio.clear()
        next_shard += 1
        current, current_bytes = [], 0

    while True:
        while len(videos) < TASKS_PER_CPU * cpus and (i := next(todo, None)) is not None:
            videos[vtask.remote(i, jobs[i], settings, ctx, str(parts))] = i
        while cursor < n and cursor in outcomes:  # place finished videos in input order
            o = outcomes.pop(cursor)
            if o["error"] is None and B.starts_new_shard(current_bytes, len(current), o["size"], args.shard_size):
                close_shard(cursor)
            failed, no_audio = state.outcome(cursor, o["error"], o.get("has_audio", True))
            pending_failed += failed
            pending_no_audio += no_audio
            if o["error"] is None:
                current.append((B._key(jobs[cursor]["video_id"]), str(_part(parts, cursor, "tar")),
                                o["num_frames"]))
                current_bytes += o["size"]
            cursor += 1
        if cursor == n and current:
            close_shard(n)
        while next_commit in finished:  # commit in shard order, then drop the parts it holds
            rec, next_index, failed, no_audio = finished.pop(next_commit)
            first = state.data["next_index"]
            state.commit(rec, next_index, failed, no_audio)
            for i in range(first, next_index):
                for ext in ("tar", "json"):
                    _part(parts, i, ext).unlink(missing_ok=True)
            next_commit += 1
        if not videos and not shards:
            break
        ready, _ = ray.wait(list(videos) + list(shards), num_returns=1)
        ref = ready[0]
        if ref in videos:
            i = videos.pop(ref)
            try:
                o = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                _raise_os_error(e)
                o = {"index": i, "error": f"internal error: {type(e.cause).__name__}: {e.cause}"}
            except ray.exceptions.RayError as e:  # the worker died on every attempt (crash, out of memory)
                o = {"index": i, "error": f"the Ray worker decoding it died {RAY_RETRIES + 1} times "
                                          f"({type(e).__name__})"}
            outcomes[i] = o
            bar.update(1)
            B._report(i, jobs[i], o, o["error"], write)
        else:
            shard_index, next_index, failed, no_audio = shards.pop(ref)
            try:
                rec = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                _raise_os_error(e)
                raise
            finished[shard_index] = (rec, next_index, failed, no_audio)
    if cursor < n:  # pragma: no cover - every input is placed above
        raise RuntimeError("the Ray build ended before every input was placed")
    if state.data["next_index"] != n:  # inputs after the last shard (failed ones, or no shard at all)
        state.commit(None, n, pending_failed, pending_no_audio)


def _raise_os_error(e) -> None:
    """A task's OSError (a full disk, a read-only folder) is the machine's, as in a local build: raise it."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, OSError):
        raise cause from None
