"""EfficientVIS: tracklet queries and proposals refined over M stages, one clip at a time; identities carry
from clip to clip through the queries (no association step, no NMS, no thresholds on scores).

Shapes (B videos, T frames per clip, N tracklet queries, D channels)::

    frames    uint8 B x 2T x 3 x H x W  (training: two consecutive clips of T frames, split in the model)
    backbone  -> levels fine to coarse -> fused base feature (B*T) x D x H/s x W/s, s = finest stride
    queries   B x N x T x D, proposals B x N x T x 4 (normalised cxcywh)
    stage m   -> class logits B x N x T x (K+1), boxes B x N x T x 4, mask logits B x N x T x H/s x W/s

Deviations from the paper: the list in the project's ``docs/baselines_efficientvis.md``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from avis.models.base import Track, VISMethod
from avis.models.efficientvis.criterion import TrackletCriterion, TrackletMatcher, Tracklets, build_tracklets
from avis.models.efficientvis.stage import Stage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BaseFeature(nn.Module):
    """Backbone levels -> the base feature for RoIs (D channels, at level ``roi_level``'s stride) and the mask
    feature map (``mask_dim`` channels, at the finest stride). Laterals (1x1 to D) are summed top-down at the
    finest stride; the RoI level is that sum resized to its stride + a 3x3 conv."""

    def __init__(self, channels: list[int], dim: int, mask_dim: int, roi_level: int = 0):
        super().__init__()
        self.roi_level = roi_level
        self.lateral = nn.ModuleList([nn.Conv2d(c, dim, 1) for c in channels])
        self.fuse = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(min(32, dim), dim),
                                  nn.ReLU(inplace=True))
        # 1x1 first: a 3x3 at D channels and the finest stride would cost about a ResNet-50 per frame.
        self.mask = nn.Sequential(nn.Conv2d(dim, mask_dim, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(mask_dim, mask_dim, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        size = feats[0].shape[-2:]
        x = self.lateral[0](feats[0])
        for lat, f in zip(self.lateral[1:], feats[1:]):
            x = x + F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False)
        roi = x if self.roi_level == 0 else F.interpolate(x, size=feats[self.roi_level].shape[-2:],
                                                          mode="bilinear", align_corners=False)
        return self.fuse(roi), self.mask(x)


class EfficientVIS(VISMethod):
    """Clip-level VIS with tracklet queries (see the module docstring for shapes and deviations).

    Args:
        backbone: module B x 3 x H x W -> feature maps fine to coarse, with ``channels`` and ``strides``.
        num_classes: K real classes (an empty class is added).
        clip_length: T, frames per clip (36 in the paper; 9 to compare with online methods). Training
            batches hold ``2T`` frames when ``correspondence`` is on (the model's ``clip_length`` attribute).
        num_queries: N. num_stages: M. hidden_dim: D. pool_size: RoI bins S. dynamic_dim: TDC's inner width.
        mask_dim: channels of the mask features (default D). roi_level: backbone level whose stride the RoI
            feature has (0: finest).
        correspondence: train on two consecutive clips, clip 2 starting from clip 1's queries.
        class/l1/giou/dice/bce weights, empty_weight: the loss; cost_*: the matching cost.
        aux_loss: losses on every stage (each stage matched on its own for clip 1).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, clip_length: int = 36, num_queries: int = 10,
                 num_stages: int = 6, hidden_dim: int = 256, nhead: int = 8, dim_feedforward: int = 2048,
                 dynamic_dim: int = 64, pool_size: int = 7, mask_dim: int | None = None, roi_level: int = 0,
                 dropout: float = 0.0,
                 correspondence: bool = True, aux_loss: bool = True, class_weight: float = 2.0,
                 l1_weight: float = 5.0, giou_weight: float = 2.0, dice_weight: float = 8.0,
                 bce_weight: float = 1.0, empty_weight: float = 0.1, cost_class: float = 2.0,
                 cost_l1: float = 5.0, cost_giou: float = 2.0, cost_mask: float = 2.0):
        super().__init__()
        if clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        mask_dim = mask_dim or hidden_dim
        self.num_classes, self.num_queries = num_classes, num_queries
        self.clip_frames = int(clip_length)
        self.correspondence = correspondence
        self.clip_length = 2 * self.clip_frames if correspondence else self.clip_frames
        self.aux_loss = aux_loss
        self.backbone = backbone
        self.stride = int(backbone.strides[roi_level])  # of the RoI feature; masks are at strides[0]
        self.base = BaseFeature(list(backbone.channels), hidden_dim, mask_dim, roi_level)
        self.init_queries = nn.Embedding(num_queries, hidden_dim)
        self.init_boxes = nn.Embedding(num_queries, 4)
        nn.init.constant_(self.init_boxes.weight[:, :2], 0.5)  # whole-frame proposals (paper, Sec. 3.1)
        nn.init.constant_(self.init_boxes.weight[:, 2:], 1.0)
        self.stages = nn.ModuleList([Stage(hidden_dim, num_classes, nhead, dim_feedforward, dynamic_dim,
                                           pool_size, mask_dim, dropout) for _ in range(num_stages)])
        self.matcher = TrackletMatcher(cost_class, cost_l1, cost_giou, cost_mask)
        self.criterion = TrackletCriterion(num_classes, class_weight, l1_weight, giou_weight, dice_weight,
                                           bce_weight, empty_weight)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255, persistent=False)
        #: assignments of the last training step, per clip (list over B of (query idx, instance ids))
        self.last_assignments: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames.to(self.pixel_mean.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def initial_queries(self, b: int, t: int) -> torch.Tensor:
        """Learned initial query repeated over time -> B x N x T x D."""
        return self.init_queries.weight[None, :, None].expand(b, -1, t, -1)

    def run_clip(self, frames: torch.Tensor, queries: torch.Tensor | None = None, all_stages: bool = False):
        """frames: uint8 B x T x 3 x H x W; queries: B x N x D (carried from the previous clip) or None ->
        list (stages, or the last only) of dicts ``logits``, ``boxes``, ``masks``, ``queries`` (B x N x T x .)."""
        b, t = frames.shape[:2]
        size = tuple(frames.shape[-2:])
        feats = self.backbone(self.normalize(frames.flatten(0, 1)))
        base, mask_feat = self.base(feats)
        mask_feat = mask_feat.unflatten(0, (b, t))  # B T C h w
        q = self.initial_queries(b, t) if queries is None else queries[:, :, None].expand(-1, -1, t, -1)
        boxes = self.init_boxes.weight[None, :, None].expand(b, -1, t, -1)
        outs = []
        for i, stage in enumerate(self.stages):
            q, boxes, logits, emb = stage(q, boxes, base, size, self.stride)
            if all_stages or i == len(self.stages) - 1:
                masks = torch.einsum("bntc,btchw->bnthw", emb, mask_feat)
                outs.append({"logits": logits, "boxes": boxes, "masks": masks, "queries": q})
        return outs

    @staticmethod
    def carry(out: dict) -> torch.Tensor:
        """Queries for the next clip: the output queries averaged over time, B x N x D."""
        return out["queries"].mean(2)

    # -- training --------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Batch of B videos x ``clip_length`` frames -> weighted losses of clip 1 (and clip 2 with suffix
        ``_c2``), per stage (``_s{i}`` for stages before the last)."""
        frames = batch["frames"]
        b, t = frames.shape[:2]
        if t != self.clip_length:
            raise ValueError(f"EfficientVIS needs clips of {self.clip_length} frames, got {t}")
        tc = self.clip_frames
        clips = [(0, tc), (tc, 2 * tc)] if self.correspondence else [(0, tc)]
        losses: dict[str, torch.Tensor] = {}
        queries = None
        first: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # clip 1: (query idx, instance ids)
        self.last_assignments = []
        for c, (s, e) in enumerate(clips):
            outs = self.run_clip(frames[:, s:e], queries, all_stages=self.aux_loss)
            h, w = outs[-1]["masks"].shape[-2:]
            targets = [build_tracklets(v[s:e], (h, w), frames.device) for v in batch["targets"]]
            suffix = "" if c == 0 else "_c2"
            final = self._assign(outs[-1], targets, first)
            for k, out in enumerate(outs):
                if k == len(outs) - 1:
                    assign = final
                elif first is None:  # clip 1: every stage is matched on its own
                    assign = self._assign(out, targets, None)
                else:  # clip 2: every stage reuses the assignment
                    assign = final
                tag = suffix if k == len(outs) - 1 else f"{suffix}_s{k}"
                for name, v in self.criterion(out["logits"], out["boxes"], out["masks"], targets,
                                              assign).items():
                    losses[name + tag] = v
            self.last_assignments.append([(r, tg.ids[cidx]) for (r, cidx), tg in zip(final, targets)])
            if first is None:
                first = self.last_assignments[0]
            queries = self.carry(outs[-1])  # gradients flow from clip 2's loss into clip 1 through these
        return losses

    def _assign(self, out: dict, targets, first) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per video (query idx, tracklet idx). With ``first`` (clip 1's query -> instance id), instances
        already assigned keep their query (no re-matching); only new instances are matched, to free queries."""
        res = []
        for i, tgt in enumerate(targets):
            args = (out["logits"][i].detach(), out["boxes"][i].detach(), out["masks"][i].detach())
            if first is None:
                res.append(self.matcher(*args, tgt))
                continue
            rows_prev, ids_prev = first[i]
            where = {int(k): int(r) for r, k in zip(rows_prev.tolist(), ids_prev.tolist())}
            rows, cols = [], []
            for j, iid in enumerate(tgt.ids.tolist()):
                if iid in where:
                    rows.append(where[iid])
                    cols.append(j)
            new = [j for j, iid in enumerate(tgt.ids.tolist()) if iid not in where]
            if new:
                free = torch.ones(self.num_queries, dtype=torch.bool)
                free[rows_prev] = False
                sub = _subset(tgt, new)
                r2, c2 = self.matcher(*args, sub, free=free)
                rows += r2.tolist()
                cols += [new[k] for k in c2.tolist()]
            res.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return res

    # -- inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_clips(self, frames: torch.Tensor):
        """frames: uint8 T x 3 x H x W -> generator of (start, probs N x t x (K+1), mask logits N x t x h x w)
        per clip, queries carried from clip to clip."""
        queries = None
        for s in range(0, frames.shape[0], self.clip_frames):
            out = self.run_clip(frames[s:s + self.clip_frames][None], queries)[-1]
            queries = self.carry(out)
            yield s, out["logits"][0].softmax(-1), out["masks"][0]

    @torch.no_grad()
    def predict_video(self, frames: torch.Tensor, audio: torch.Tensor | None = None) -> list[Track]:
        """Clip after clip; identity = query index. A query is a track in the frames where its most likely
        class is not empty; its label is the real class with the highest probability summed over those
        frames, its score the mean over them of that class's probability. Masks: sigmoid > 0.5 at H x W."""
        size = tuple(frames.shape[-2:])
        n = self.num_queries
        probs_all, masks_all = [], []
        for _, probs, masks in self.predict_clips(frames):
            probs_all.append(probs.float().cpu())
            masks_all.append(masks)
        probs = torch.cat(probs_all, 1)  # N T K+1
        fired = probs.argmax(-1) != self.num_classes  # N T
        tracks = []
        for i in range(n):
            ts = torch.nonzero(fired[i]).flatten()
            if ts.numel() == 0:
                continue
            p = probs[i, ts, :-1]
            label = int(p.sum(0).argmax())
            track = Track(label=label, score=float(p[:, label].mean()))
            for t in ts.tolist():
                clip, k = divmod(t, self.clip_frames)
                m = masks_all[clip][i, k][None, None].float()
                up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0, 0]
                track.masks[t] = (up > 0).cpu()
            tracks.append(track)
        return tracks


def _subset(tgt: Tracklets, idx: list[int]) -> Tracklets:
    i = torch.as_tensor(idx, dtype=torch.long, device=tgt.labels.device)
    return Tracklets(tgt.ids[i], tgt.labels[i], tgt.masks[i], tgt.boxes[i], tgt.valid[i])
