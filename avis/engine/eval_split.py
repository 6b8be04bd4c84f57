"""``avis eval`` under torchrun: the validation videos split over processes (GPUs, machines), the results merged
on rank 0, identical to a single-process evaluation.

    torchrun --nproc-per-node 4 -m avis eval --checkpoint CKPT --out DIR                 # 4 GPUs of one machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m avis eval --checkpoint CKPT --out DIR                                         # 16 GPUs of 2 machines

Video k of the evaluation order (shards in order, samples in order, the first ``--limit``) is predicted by rank
k % world size, on ``cuda:LOCAL_RANK`` (or the CPU); only that rank decodes its frames. Each video is run by
the same per-video prediction as a single process (:func:`avis.engine.predict.predict_videos`); rank 0 gathers
the per-video results, puts them back in video order, numbers the ground-truth annotations as one process does,
and writes and scores them. ``results.json``, ``gt.json``, ``samples.csv`` and the metrics are byte-identical
to a single-process evaluation on the same device type and thread count (``torchrun`` sets
``OMP_NUM_THREADS=1``); the timing is summed over ranks. docs/scale.md.
"""

from __future__ import annotations

import os

from tqdm import tqdm


def world_size() -> int:
    """Processes of the torchrun job this process belongs to (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: str) -> str:
    """``auto`` under torchrun is this rank's GPU (``cuda:LOCAL_RANK``) when there is one, not GPU 0 for all."""
    if device != "auto" or world_size() == 1:
        return device
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def rank_videos(source, limit: int | None, rank: int, world: int, check=None):
    """(k, video) for the videos k (in evaluation order, the first ``limit``) with k % world == rank.

    Every rank reads the samples (their JSON and member headers), but only this rank's videos are decoded;
    ``check(unit, video)`` sees each decoded one (as :func:`avis.engine.evaluate.iter_eval_videos`)."""
    k = 0
    for unit in source.units():
        for v in source.videos(unit, strict=True):
            if limit is not None and k >= limit:
                return
            if k % world == rank:
                video = v.load()
                if check is not None:
                    check(unit, video)
                yield k, video
            k += 1


def predict_split(model, source, limit: int | None, categories: list[dict], device, *, with_gt: bool,
                  check=None, **kwargs) -> dict | None:
    """This rank's share of ``predict_videos``; on rank 0 the merged result (the dict ``predict_videos``
    returns, with ``timing["ranks"]``), elsewhere None. ``kwargs``: ``predict_videos``'s options."""
    import torch.distributed as torch_dist

    from avis.engine import dist
    from avis.engine.predict import predict_videos

    info = dist.setup(str(device))
    try:
        mine = []
        for k, video in tqdm(rank_videos(source, limit, info.rank, info.world_size, check), desc="predict", unit="video",
                             disable=not info.is_main, leave=False):
            p = predict_videos(model, [video], categories, device, progress=False, with_gt=with_gt, **kwargs)
            gt = p["gt"] or {}
            mine.append((k, p["results"], gt.get("videos", []), gt.get("annotations", []), p["timing"]))
        gathered = [None] * info.world_size if info.is_main else None
        if info.enabled:
            torch_dist.gather_object(mine, gathered, dst=0)
        else:
            gathered = [mine]
        if not info.is_main:
            return None
        per_video = sorted((item for part in gathered for item in part), key=lambda item: item[0])
        results, gt_videos, gt_anns = [], [], []
        for _, res, videos, anns, _ in per_video:
            results += res
            gt_videos += videos
            for a in anns:  # numbered in video order, as one process numbers them
                gt_anns.append({**a, "id": len(gt_anns) + 1})
        frames = sum(t["frames"] for *_, t in per_video)
        seconds = sum(t["seconds"] for *_, t in per_video)
        timing = {"videos": len(per_video), "frames": frames, "seconds": seconds,
                  "fps": frames / seconds if seconds else None, "ranks": info.world_size}
        gt = {"videos": gt_videos, "annotations": gt_anns, "categories": list(categories)} if with_gt else None
        return {"results": results, "gt": gt, "timing": timing}
    finally:
        dist.teardown(info)
