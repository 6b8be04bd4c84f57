"""The InsPro method: propagated query-proposal pairs, dynamic interaction stages, CondInst masks."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import (
    FeaturePyramidNetwork,
    MultiScaleRoIAlign,
    generalized_box_iou,
    masks_to_boxes,
    sigmoid_focal_loss,
)

from avis.models.base import FrameResult, Track, TrackedInstance, VISMethod
from avis.models.crossvis.mask import DynamicMaskHead, MaskBranch, mask_logits
from avis.models.losses import squared_dice_loss, zero_loss
from avis.models.preprocess import normalize_and_pad, register_pixel_stats

from .head import InteractionStage, IntraQueryAttention
from .matching import dedup_loss, match_cost, temporally_consistent_matching


def clip_to_image(boxes: torch.Tensor, image_size: tuple[int, int], min_size: float = 1.0) -> torch.Tensor:
    """boxes ... x 4 (x1y1x2y2) clipped to [0, W] x [0, H] (what is propagated to the next frame).

    Boxes keep at least ``min_size`` pixels per side: a box clipped to zero width could never grow again, as
    the stages scale widths multiplicatively (choice; the paper only says boxes are clipped)."""
    h, w = image_size
    x1 = boxes[..., 0].clamp(0, w - min_size)
    y1 = boxes[..., 1].clamp(0, h - min_size)
    x2 = torch.maximum(boxes[..., 2].clamp(0, w), x1 + min_size)
    y2 = torch.maximum(boxes[..., 3].clamp(0, h), y1 + min_size)
    return torch.stack([x1, y1, x2, y2], -1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """bool n x H x W (non-empty) -> n x 4 x1y1x2y2 pixel-edge boxes (x2, y2 exclusive)."""
    if masks.shape[0] == 0:
        return masks.new_zeros(0, 4, dtype=torch.float32)
    return masks_to_boxes(masks) + masks.new_tensor([0, 0, 1, 1], dtype=torch.float32)


class InsPro(VISMethod):
    """InsPro (He et al., NeurIPS 2022): online VIS by propagating instance query-proposal pairs.

    Per frame: backbone + FPN; ``num_stages`` interaction stages refine N (query, box) pairs; each stage
    predicts class logits (sigmoid), a box and 169 CondInst filters applied to an 8-channel stride-8 mask
    branch plus 2 relative-coordinate channels (centred on the predicted box); masks are upsampled to
    stride 4. The last stage's object features enter a bank of the last T frames; intra-query attention
    over it gives the next frame's queries, and the last stage's boxes (clipped to the image) its proposals.
    Identity = slot index: no NMS, no association.

    Training (``forward``): clips of ``clip_length`` frames in time order, queries propagated with gradients,
    temporally consistent matching per clip (from the last stage's predictions; every stage shares it),
    losses per frame and stage: ``w_cls`` focal class + ``w_l1`` L1 + ``w_giou`` GIoU + ``w_dedup``
    de-duplication + ``w_dice`` dice + ``w_mask_focal`` focal mask, normalised by the number of objects of
    the frame (over the batch), summed over stages, averaged over frames.

    Inference (``init_state``/``step``/``finish``): slot i's masks on the frames where its max class score
    exceeds ``score_threshold`` form a track; class = argmax of the mean scores over those frames, score =
    that mean. ``split_gap`` (frames, optional) splits a slot's track where it was inactive that long.
    """

    uses_audio = False

    def __init__(self, num_classes: int, backbone: nn.Module, hidden_dim: int = 256, num_queries: int = 100,
                 num_stages: int = 6, dim_dynamic: int = 64, dim_feedforward: int = 2048, num_heads: int = 8,
                 dropout: float = 0.0, pooler_resolution: int = 7, mask_branch_channels: int = 128,
                 mask_channels: int = 8, clip_length: int = 3, train_bank: int = 3, test_bank: int = 18,
                 w_cls: float = 2.0, w_l1: float = 5.0, w_giou: float = 2.0, w_dedup: float = 1.0,
                 w_dice: float = 5.0, w_mask_focal: float = 5.0, match_cls: float = 2.0, match_l1: float = 5.0,
                 match_giou: float = 2.0, dedup_k: int = 5, dedup_beta: float = 0.1, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, deep_supervision: bool = True, score_threshold: float = 0.15,
                 mask_threshold: float = 0.5, split_gap: int | None = None, rel_coord_min: float = 8.0,
                 mask_target: str = "area"):
        super().__init__()
        self.num_classes, self.num_queries, self.hidden_dim = num_classes, num_queries, hidden_dim
        self.clip_length, self.train_bank, self.test_bank = int(clip_length), int(train_bank), int(test_bank)
        self.w = {"cls": w_cls, "l1": w_l1, "giou": w_giou, "dedup": w_dedup, "dice": w_dice,
                  "mask_focal": w_mask_focal}
        self.match_w = (match_cls, match_l1, match_giou)
        self.dedup_k, self.dedup_beta = int(dedup_k), float(dedup_beta)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.deep_supervision = deep_supervision
        self.score_threshold, self.mask_threshold, self.split_gap = score_threshold, mask_threshold, split_gap
        self.rel_coord_min = rel_coord_min
        if mask_target not in ("area", "center"):
            raise ValueError(f"mask_target must be 'area' or 'center', got {mask_target!r}")
        self.mask_target = mask_target

        self.backbone = backbone
        strides = list(self.backbone.strides)
        self.level_names = [f"p{int(math.log2(s))}" for s in strides]
        self.size_divisibility = max(strides)
        self.fpn = FeaturePyramidNetwork(list(self.backbone.channels), hidden_dim)
        self.pooler = MultiScaleRoIAlign(self.level_names, pooler_resolution, sampling_ratio=2)
        self.mask_levels = [i for i, s in enumerate(strides) if s >= 8][:3]
        if not self.mask_levels or strides[self.mask_levels[0]] != 8:
            raise ValueError(f"InsPro needs a stride-8 backbone level for its mask branch, got strides {strides}")
        self.mask_branch = MaskBranch(hidden_dim, mask_branch_channels, mask_channels, len(self.mask_levels))
        self.mask_head = DynamicMaskHead(mask_channels, 8, 3)
        self.stages = nn.ModuleList(
            InteractionStage(hidden_dim, num_classes, pooler_resolution, dim_dynamic, num_heads, dim_feedforward,
                             dropout, num_mask_params=self.mask_head.num_params) for _ in range(num_stages))
        self.intra_query = IntraQueryAttention(hidden_dim)
        self.init_queries = nn.Embedding(num_queries, hidden_dim)
        self.init_boxes = nn.Embedding(num_queries, 4)  # cx, cy, w, h as fractions of the image
        nn.init.constant_(self.init_boxes.weight[:, :2], 0.5)
        nn.init.constant_(self.init_boxes.weight[:, 2:], 1.0)
        register_pixel_stats(self)

    # ------------------------------------------------------------------ shared parts

    def bank_size(self) -> int:
        """Length of the feature bank: ``train_bank`` in training mode, ``test_bank`` in eval mode."""
        return self.train_bank if self.training else self.test_bank

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 M x 3 x H x W -> normalised float, zero-padded (bottom/right) to the largest stride."""
        return normalize_and_pad(frames, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def features(self, images: torch.Tensor) -> tuple[OrderedDict, torch.Tensor]:
        """M x 3 x Hp x Wp -> (FPN maps by level name, mask features M x 8 x Hp/8 x Wp/8)."""
        feats = self.fpn(OrderedDict(zip(self.level_names, self.backbone(images))))
        levels = list(feats.values())
        return feats, self.mask_branch([levels[i] for i in self.mask_levels])

    def initial_pairs(self, batch: int, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Learned queries B x N x C and proposals B x N x 4 (pixels) for the first frame."""
        h, w = image_size
        cxcywh = self.init_boxes.weight
        half = cxcywh[:, 2:] / 2
        boxes = torch.cat([cxcywh[:, :2] - half, cxcywh[:, :2] + half], 1) * cxcywh.new_tensor([w, h, w, h])
        return (self.init_queries.weight[None].expand(batch, -1, -1),
                boxes[None].expand(batch, -1, -1))

    def frame_forward(self, feats: OrderedDict, queries: torch.Tensor, boxes: torch.Tensor,
                      padded_size: tuple[int, int]) -> list[dict]:
        """All stages on one frame of B videos; returns each stage's outputs (see InteractionStage)."""
        outs = []
        for stage in self.stages:
            roi = self.pooler(feats, list(boxes.detach().unbind(0)), [padded_size] * boxes.shape[0])
            out = stage(roi, boxes, queries)
            # boxes are detached between stages (Sparse R-CNN); the first stage's input boxes are not, so the
            # learned initial proposals get gradients
            queries, boxes = out["queries"], out["boxes"].detach()
            outs.append(out)
        return outs

    def propagate(self, last: dict, bank: list[torch.Tensor], image_size: tuple[int, int]):
        """Last stage's outputs -> next frame's (queries, proposals, bank) with a bank of ``bank_size()``."""
        bank = (bank + [last["queries"]])[-self.bank_size():]
        queries = self.intra_query(torch.stack(bank))
        return queries, clip_to_image(last["boxes"].detach(), image_size), bank

    def instance_masks(self, mask_feats: torch.Tensor, params: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """mask_feats C x h x w (one frame), params P x 169, boxes P x 4 -> mask logits P x 2h x 2w (stride 4).

        Relative coordinates are centred on each box and divided by half its longer side (at least
        ``rel_coord_min`` pixels), so the box edge sits near +-1 (choice; CondInst divides by the FPN
        level's size of interest)."""
        boxes = boxes.detach()
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        soi = ((boxes[:, 2:] - boxes[:, :2]).amax(1) / 2).clamp(min=self.rel_coord_min)
        feats = mask_feats[None].expand(params.shape[0], -1, -1, -1)
        return mask_logits(self.mask_head, feats, params, centres, soi, stride=8)

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        B, T, _, H, W = frames.shape
        images = self.prepare(frames.flatten(0, 1))
        padded = tuple(images.shape[-2:])
        feats, mask_feats = self.features(images)
        feats = OrderedDict((k, v.unflatten(0, (B, T))) for k, v in feats.items())
        mask_feats = mask_feats.unflatten(0, (B, T))

        queries, boxes = self.initial_pairs(B, (H, W))
        bank: list[torch.Tensor] = []
        outputs = []
        for t in range(T):
            outs = self.frame_forward(OrderedDict((k, v[:, t]) for k, v in feats.items()), queries, boxes, padded)
            outputs.append(outs)
            queries, boxes, bank = self.propagate(outs[-1], bank, (H, W))

        targets = [[self._target(batch["targets"][b][t], padded, frames.device) for t in range(T)]
                   for b in range(B)]
        matches = [self._match([outputs[t][-1] for t in range(T)], b, targets[b], (H, W)) for b in range(B)]
        losses = {k: frames.new_zeros((), dtype=torch.float32) for k in self.w}
        stages = range(len(self.stages)) if self.deep_supervision else [len(self.stages) - 1]
        for t in range(T):
            num = max(sum(len(targets[b][t]["labels"]) for b in range(B)), 1)
            for s in stages:
                for k, v in self._frame_losses(outputs[t][s], mask_feats[:, t], [tg[t] for tg in targets],
                                               [m[t] for m in matches], (H, W)).items():
                    losses[k] = losses[k] + v / num
        return {f"loss_{k}": self.w[k] * v / T for k, v in losses.items()}

    def _target(self, target: dict, padded: tuple[int, int], device) -> dict:
        masks = target["masks"].to(device).bool()
        keep = masks.flatten(1).any(1)
        masks = masks[keep]
        h, w = masks.shape[-2:]
        masks = F.pad(masks.to(torch.uint8), (0, padded[1] - w, 0, padded[0] - h)).bool()
        if self.mask_target == "area":  # fraction of each 4 x 4 cell inside the object (soft target)
            masks4 = F.avg_pool2d(masks[:, None].float(), 4)[:, 0] if len(masks) else masks[:, ::4, ::4].float()
        else:  # CondInst: the pixel at each cell's centre (stride-4 pixel k sits at 4k + 2)
            masks4 = masks[:, 2::4, 2::4].float()
        return {"labels": target["labels"].to(device)[keep], "ids": target["instance_ids"][keep.cpu()],
                "boxes": mask_boxes(masks), "masks4": masks4}

    @torch.no_grad()
    def _match(self, last_outs: list[dict], b: int, targets: list[dict], image_size):
        costs = [match_cost(o["logits"][b].float(), o["boxes"][b].float(), tg["labels"], tg["boxes"], image_size, *self.match_w,
                            alpha=self.focal_alpha, gamma=self.focal_gamma) for o, tg in zip(last_outs, targets)]
        return temporally_consistent_matching(costs, [tg["ids"] for tg in targets])

    def _frame_losses(self, out: dict, mask_feats: torch.Tensor, targets: list[dict], matches: list,
                      image_size) -> dict[str, torch.Tensor]:
        """Sums (not yet normalised) of each loss over the B videos of one frame and one stage (in float32,
        also under bf16/fp16 autocast)."""
        h, w = image_size
        out = {k: v.float() for k, v in out.items()}
        scale = out["boxes"].new_tensor([w, h, w, h])
        zero = zero_loss(out["logits"])
        acc = {k: zero for k in self.w}
        for b, (tg, (slots, gi)) in enumerate(zip(targets, matches)):
            slots, gi = slots.to(out["logits"].device), gi.to(out["logits"].device)
            logits, boxes = out["logits"][b], out["boxes"][b]
            cls_t = torch.zeros_like(logits)
            cls_t[slots, tg["labels"][gi]] = 1
            acc["cls"] = acc["cls"] + sigmoid_focal_loss(logits, cls_t, self.focal_alpha, self.focal_gamma, "sum")
            matched = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
            matched[slots] = True
            acc["dedup"] = acc["dedup"] + dedup_loss(boxes, matched, tg["boxes"], self.dedup_k, self.dedup_beta)
            if slots.numel() == 0:
                # keep the mask head and controller in the graph (DDP needs a gradient for every parameter)
                acc["dice"] = acc["dice"] + zero_loss(out["params"][b], mask_feats[b])
                continue
            pb, gb = boxes[slots], tg["boxes"][gi]
            acc["l1"] = acc["l1"] + (pb / scale - gb / scale).abs().sum()
            acc["giou"] = acc["giou"] + (1 - torch.diag(generalized_box_iou(pb, gb))).sum()
            logit_m = self.instance_masks(mask_feats[b], out["params"][b][slots], pb).float()
            gt_m = tg["masks4"][gi].float()
            acc["dice"] = acc["dice"] + squared_dice_loss(logit_m.sigmoid(), gt_m) * slots.numel()
            acc["mask_focal"] = acc["mask_focal"] + sigmoid_focal_loss(
                logit_m, gt_m, self.focal_alpha, self.focal_gamma, "none").flatten(1).mean(1).sum()
        return acc

    # ------------------------------------------------------------------ online inference

    def init_state(self) -> dict:
        return {"t": 0, "queries": None, "boxes": None, "bank": [], "records": {}, "runs": {}, "next_id": 0,
                "last": None}

    @torch.no_grad()
    def step(self, state: dict, frame: torch.Tensor, audio: torch.Tensor | None = None) -> FrameResult:
        """One frame (uint8 3 x H x W): run the stages from the propagated pairs, record active slots -> one
        instance per active slot (its track: the slot's current run, see ``split_gap``; class = argmax of this
        frame's scores, score = their max).

        ``state["last"]`` holds this frame's ``scores`` N x K, ``boxes`` N x 4 and ``active`` slots."""
        H, W = frame.shape[-2:]
        images = self.prepare(frame[None])
        padded = tuple(images.shape[-2:])
        feats, mask_feats = self.features(images)
        if state["queries"] is None:
            state["queries"], state["boxes"] = self.initial_pairs(1, (H, W))
        last = self.frame_forward(feats, state["queries"], state["boxes"], padded)[-1]
        scores = last["logits"][0].sigmoid()
        active = (scores.amax(1) > self.score_threshold).nonzero().flatten()
        instances = []
        if active.numel():
            logit_m = self.instance_masks(mask_feats[0], last["params"][0][active], last["boxes"][0][active])
            full = F.interpolate(logit_m[:, None], scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
            masks = (full[:, :H, :W].sigmoid() > self.mask_threshold).cpu()  # crop the padding
            for j, slot in enumerate(active.tolist()):
                records = state["records"].setdefault(slot, [])
                if not records or (self.split_gap and state["t"] - records[-1][0] > self.split_gap):
                    state["runs"].setdefault(slot, []).append(state["next_id"])  # a new track (see _split)
                    state["next_id"] += 1
                records.append((state["t"], scores[slot].cpu(), masks[j]))
                score, label = records[-1][1].max(0)
                instances.append(TrackedInstance(state["runs"][slot][-1], int(label), float(score), masks[j]))
        state["queries"], state["boxes"], state["bank"] = self.propagate(last, state["bank"], (H, W))
        state["last"] = {"scores": scores, "boxes": last["boxes"][0], "active": active}
        state["t"] += 1
        return FrameResult(state["t"] - 1, sorted(instances, key=lambda x: x.track_id))

    def finish(self, state: dict) -> list[Track]:
        """Per slot and run: class = argmax of the mean scores over its frames, score = that mean."""
        tracks = []
        for slot in sorted(state["records"]):
            for run, tid in zip(self._split(state["records"][slot]), state["runs"][slot], strict=True):
                mean = torch.stack([s for _, s, _ in run]).mean(0)
                label = int(mean.argmax())
                tracks.append(Track(label=label, score=float(mean[label]), masks={t: m for t, _, m in run},
                                    track_id=tid))
        return tracks

    def _split(self, records: list) -> list[list]:
        if not self.split_gap:
            return [records]
        runs = [[records[0]]]
        for rec in records[1:]:
            if rec[0] - runs[-1][-1][0] > self.split_gap:
                runs.append([])
            runs[-1].append(rec)
        return runs
