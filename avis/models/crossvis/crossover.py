"""Crossover learning (training only): pair each sampled positive of one frame with a positive location of
the same instance in the other frame of its clip."""

from __future__ import annotations

from collections.abc import Callable

import torch


def crossover_pairs(src_img: torch.Tensor, src_gt: torch.Tensor, pos_img: torch.Tensor, pos_loc: torch.Tensor,
                    pos_gt: torch.Tensor, instance_ids: list[torch.Tensor], partner: Callable[[int], int],
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """For each source positive (image src_img[q], ground truth src_gt[q]) find the same instance (equal
    instance id) in image partner(src_img[q]) and a random positive location of it there.

    src_img, src_gt: Q (the positives whose filters are used); pos_img, pos_loc, pos_gt: all positives of the
    batch (image, flattened location index, ground-truth index); instance_ids: per image, ids of its ground
    truths -> (src index, dst image, dst location index, dst gt index), each Q' <= Q long; positives whose
    instance is absent from the other frame, or has no positive location there, are skipped.
    """
    by_gt: dict[tuple[int, int], list[int]] = {}
    for n, loc, g in zip(pos_img.tolist(), pos_loc.tolist(), pos_gt.tolist()):
        by_gt.setdefault((n, g), []).append(loc)
    gt_of_id = [{int(i): g for g, i in enumerate(ids.tolist())} for ids in instance_ids]
    out: list[tuple[int, int, int, int]] = []
    for q, (n, g) in enumerate(zip(src_img.tolist(), src_gt.tolist())):
        m = partner(n)
        g2 = gt_of_id[m].get(int(instance_ids[n][g]))
        locs = by_gt.get((m, g2)) if g2 is not None else None
        if not locs:
            continue
        pick = int(torch.randint(len(locs), (1,), generator=generator))
        out.append((q, m, locs[pick], g2))
    t = torch.tensor(out, dtype=torch.long, device=src_img.device).reshape(-1, 4)
    return t[:, 0], t[:, 1], t[:, 2], t[:, 3]
