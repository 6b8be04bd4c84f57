"""The CrossVIS method and its CondInst-VIS ablation (deviations from the paper: docs/baselines.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from ..base import FrameResult, Track, TrackedInstance, VISMethod
from ..frame_pairs import pair_targets
from ..losses import squared_dice_loss, zero_loss
from ..preprocess import normalize_and_pad, register_pixel_stats
from ..sampling import FramePair
from .association import DROPPED, TrackState, update_tracks
from .crossover import crossover_pairs
from .head import CrossVISHead
from .losses import GlobalEmbeddingLoss, IdentityMap, pairwise_embedding_loss
from .mask import DynamicMaskHead, MaskBranch, mask_logits
from .targets import centerness, fcos_targets, level_locations


def _flat(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per level N x C x h x w -> N x L x C (levels concatenated, row-major), float32 (losses, boxes and the
    dynamic parameters stay in full precision under bf16 autocast)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1).float()


class CrossVIS(VISMethod):
    """CrossVIS: CondInst (FCOS + dynamic mask head) + crossover learning + global balanced embedding.

    Args:
        num_classes: K categories (sigmoid logits, no background class).
        backbone: module images N x 3 x H x W -> [P3..P7] with ``out_channels`` and ``strides`` attributes.
        num_identities: N proxies of the global embedding (>= number of training instances; see IdentityMap).
        crossover: add the crossover loss. embedding: "global" (CrossVIS), "pairwise" (MaskTrack R-CNN style,
            CondInst-VIS) or None (no embedding branch; association by class + box IoU only).
    Training: ``forward(batch)`` uses the first and the last frame of each clip (reference, target) and returns
    ``loss_cls, loss_box, loss_ctr`` (detection), ``loss_mask``, ``loss_cross``, ``loss_embed``; all weight 1.
    Inference: online, one frame per ``step``; masks at the input size.
    """

    clip_length = 2
    uses_audio = False

    def __init__(self, num_classes: int, backbone: nn.Module, num_identities: int = 4096,
                 mask_branch_channels: int = 128, mask_channels: int = 8, embed_dim: int = 256,
                 crossover: bool = True, embedding: str | None = "global",
                 sizes_of_interest: tuple[float, ...] = (64, 128, 256, 512, 1024),
                 center_sampling_radius: float | None = 1.5, max_proposals: int = 500,
                 score_threshold: float = 0.05, pre_nms_topk: int = 1000, nms_threshold: float = 0.6,
                 max_detections: int = 100, mask_threshold: float = 0.5, match_threshold: float = 0.4,
                 size_divisibility: int = 128, partner_distance: int = 20):
        super().__init__()
        if embedding not in ("global", "pairwise", None):
            raise ValueError(f"embedding must be 'global', 'pairwise' or None, not {embedding!r}")
        self.num_classes, self.crossover, self.embedding = num_classes, crossover, embedding
        self.backbone = backbone
        self.strides = tuple(backbone.strides)
        self.sizes_of_interest = tuple(float(s) for s in sizes_of_interest)
        self.center_sampling_radius, self.max_proposals = center_sampling_radius, max_proposals
        self.score_threshold, self.pre_nms_topk, self.nms_threshold = score_threshold, pre_nms_topk, nms_threshold
        self.max_detections, self.mask_threshold = max_detections, mask_threshold
        self.match_threshold, self.size_divisibility = match_threshold, size_divisibility
        # training pairs: a frame and a partner at a random distance up to partner_distance, never itself
        self.clip_sampler = FramePair(partner_distance)
        c = backbone.out_channels
        self.dynamic_head = DynamicMaskHead(mask_channels)
        self.head = CrossVISHead(c, num_classes, self.dynamic_head.num_params, len(self.strides),
                                 embed_dim if embedding else None, self.strides)
        self.mask_branch = MaskBranch(c, mask_branch_channels, mask_channels)
        if embedding == "global":
            self.embed_loss = GlobalEmbeddingLoss(embed_dim, num_identities)
            self.identities = IdentityMap(num_identities)
        register_pixel_stats(self)

    # -- shared ---------------------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> normalised float N x 3 x Hp x Wp, zero-padded right/bottom to the divisibility."""
        return normalize_and_pad(frames, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def _features(self, images: torch.Tensor):
        feats = self.backbone(images)
        out = self.head(feats)
        locations, levels = level_locations([f.shape[-2:] for f in feats], self.strides, images.device)
        return feats, out, locations, levels

    def _soi(self, levels: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.sizes_of_interest, device=levels.device)[levels]

    # -- training -------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        sel = [0, frames.shape[1] - 1]  # reference, target
        images = self.preprocess(frames[:, sel].flatten(0, 1))
        targets = pair_targets(batch["targets"], sel, images.shape[-2:], self.pixel_mean.device, batch["video_ids"])
        feats, out, locations, levels = self._features(images)
        k = self.num_classes
        cls, box, ctr = _flat(out["cls"]), _flat(out["box"]), _flat(out["ctr"])[..., 0]
        params = _flat(out["params"])

        assigned = [fcos_targets(locations, levels, t["boxes"], t["labels"], k, self.sizes_of_interest,
                                 self.strides, self.center_sampling_radius) for t in targets]
        cls_t = torch.stack([a[0] for a in assigned])
        reg_t = torch.stack([a[1] for a in assigned])
        gt_t = torch.stack([a[2] for a in assigned])
        pos = cls_t < k
        num_pos = max(float(pos.sum()), 1.0)
        onehot = F.one_hot(cls_t, k + 1)[..., :k].to(cls.dtype)
        losses = {"loss_cls": sigmoid_focal_loss(cls, onehot, reduction="sum") / num_pos}

        pos_img, pos_loc = pos.nonzero(as_tuple=True)
        pos_gt = gt_t[pos_img, pos_loc]
        reg, loc = reg_t[pos_img, pos_loc], locations[pos_loc]
        ctr_t = centerness(reg)
        pred = box[pos_img, pos_loc]
        pred_boxes = torch.cat([loc - pred[:, :2], loc + pred[:, 2:]], 1)
        tgt_boxes = torch.cat([loc - reg[:, :2], loc + reg[:, 2:]], 1)
        giou = generalized_box_iou_loss(pred_boxes, tgt_boxes, reduction="none")
        losses["loss_box"] = (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        losses["loss_ctr"] = F.binary_cross_entropy_with_logits(ctr[pos_img, pos_loc], ctr_t,
                                                                reduction="sum") / num_pos

        # masks: at most max_proposals positives (random) per batch
        mask_feats = self.mask_branch(feats[:3]).float()
        soi = self._soi(levels)
        sample = torch.randperm(len(pos_img), device=pos_img.device)[: self.max_proposals]
        s_img, s_loc, s_gt = pos_img[sample], pos_loc[sample], pos_gt[sample]
        s_params = params[s_img, s_loc]
        logits = mask_logits(self.dynamic_head, mask_feats[s_img], s_params, locations[s_loc], soi[s_loc])
        losses["loss_mask"] = squared_dice_loss(logits.sigmoid(), self._gt_masks(targets, s_img, s_gt, logits))

        if self.crossover:
            losses["loss_cross"] = self.crossover_loss(mask_feats, s_params, s_img, s_gt, pos_img, pos_loc,
                                                       pos_gt, targets, locations, soi)
        if self.embedding:
            emb = _flat(out["emb"])
            if self.embedding == "global":
                keys = [(targets[n]["video"], targets[n]["ids"][g]) for n, g in zip(pos_img.tolist(), pos_gt.tolist())]
                ids = torch.tensor(self.identities.indices(keys), dtype=torch.long, device=emb.device)
                losses["loss_embed"] = self.embed_loss(emb[pos_img, pos_loc], ids)
            else:
                losses["loss_embed"] = self._pairwise_loss(emb, pos_img, pos_loc, pos_gt, targets)
        return losses

    @staticmethod
    def _gt_masks(targets: list[dict], img: torch.Tensor, gt: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if len(img) == 0:
            return like.new_zeros(like.shape)
        return torch.stack([targets[n]["masks4"][g] for n, g in zip(img.tolist(), gt.tolist())])

    def crossover_loss(self, mask_feats: torch.Tensor, s_params: torch.Tensor, s_img: torch.Tensor,
                       s_gt: torch.Tensor, pos_img: torch.Tensor, pos_loc: torch.Tensor, pos_gt: torch.Tensor,
                       targets: list[dict], locations: torch.Tensor, soi: torch.Tensor) -> torch.Tensor:
        """Dice of the masks that the filters s_params (of positives in image s_img) produce on the mask
        features of the other frame of the clip (image n ^ 1), with relative coordinates centred on a random
        positive location of the same instance there, against that frame's mask of the instance."""
        src, dst_img, dst_loc, dst_gt = crossover_pairs(s_img, s_gt, pos_img, pos_loc, pos_gt,
                                                        [t["ids"] for t in targets], partner=lambda n: n ^ 1)
        logits = mask_logits(self.dynamic_head, mask_feats[dst_img], s_params[src], locations[dst_loc],
                             soi[dst_loc])
        return (squared_dice_loss(logits.sigmoid(), self._gt_masks(targets, dst_img, dst_gt, logits))
                + zero_loss(s_params))

    def _pairwise_loss(self, emb, pos_img, pos_loc, pos_gt, targets) -> torch.Tensor:
        """CondInst-VIS: key = target frame (odd image), references = mean embedding of each instance's
        positives in the reference frame (even image)."""
        losses = []
        for key in range(1, len(targets), 2):
            ref = key - 1
            in_ref, in_key = pos_img == ref, pos_img == key
            if not in_key.any():
                continue
            ref_gts = pos_gt[in_ref].unique()
            ref_emb = torch.stack([emb[ref, pos_loc[in_ref][pos_gt[in_ref] == g]].mean(0) for g in ref_gts]) \
                if len(ref_gts) else emb.new_zeros(0, emb.shape[-1])
            ref_ids = targets[ref]["ids"][ref_gts]
            key_ids = targets[key]["ids"][pos_gt[in_key]]
            losses.append(pairwise_embedding_loss(emb[key, pos_loc[in_key]], key_ids, ref_emb, ref_ids))
        return torch.stack(losses).mean() if losses else zero_loss(emb)

    # -- online inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, frame: torch.Tensor) -> dict[str, torch.Tensor]:
        """One uint8 3 x H x W frame -> D detections: boxes D x 4, scores D, labels D, emb D x E, masks D x H x W."""
        h, w = frame.shape[-2:]
        images = self.preprocess(frame[None])
        feats, out, locations, levels = self._features(images)
        cls = _flat(out["cls"])[0].sigmoid()
        ctr = _flat(out["ctr"])[0, :, 0].sigmoid()
        scores = cls * ctr[:, None]
        loc_idx, labels = (scores > self.score_threshold).nonzero(as_tuple=True)
        scores = scores[loc_idx, labels]
        if len(scores) > self.pre_nms_topk:
            top = scores.topk(self.pre_nms_topk).indices
            loc_idx, labels, scores = loc_idx[top], labels[top], scores[top]
        ltrb = _flat(out["box"])[0, loc_idx]
        loc = locations[loc_idx]
        boxes = torch.cat([loc - ltrb[:, :2], loc + ltrb[:, 2:]], 1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        scores = scores.sqrt()
        keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.max_detections]
        loc_idx, labels, scores, boxes = loc_idx[keep], labels[keep], scores[keep], boxes[keep]
        mask_feats = self.mask_branch(feats[:3]).float()
        params = _flat(out["params"])[0, loc_idx]
        logits = mask_logits(self.dynamic_head, mask_feats.expand(len(keep), -1, -1, -1), params,
                             locations[loc_idx], self._soi(levels)[loc_idx])
        logits = F.interpolate(logits[:, None], scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
        masks = logits[:, :h, :w].sigmoid() > self.mask_threshold
        emb = _flat(out["emb"])[0, loc_idx] if self.embedding else boxes.new_zeros(len(keep), 1)
        return {"boxes": boxes, "scores": scores, "labels": labels, "emb": emb, "masks": masks}

    def init_state(self) -> dict:
        return {"frame": 0, "tracks": []}

    @torch.no_grad()
    def step(self, state: dict, frame: torch.Tensor, audio: torch.Tensor | None = None) -> FrameResult:
        """One frame: detect, associate -> the detections that joined or started a track (track id = index of
        the track, its class, this detection's score and mask)."""
        d = self.detect(frame)
        t = state["frame"]
        joined = update_tracks(state["tracks"], t, d["emb"], d["boxes"], d["labels"], d["scores"], d["masks"],
                               self.match_threshold)
        masks = d["masks"].cpu()
        state["frame"] += 1
        return FrameResult(t, sorted((TrackedInstance(j, int(d["labels"][i]), float(d["scores"][i]), masks[i])
                                      for i, j in enumerate(joined) if j != DROPPED), key=lambda x: x.track_id))

    def finish(self, state: dict) -> list[Track]:
        """Per track: score = mean of its frame scores, class = its first detection's (association keeps it)."""
        tracks: list[TrackState] = state["tracks"]
        return [Track(label=t.label, score=sum(t.scores) / len(t.scores), masks={k: m.cpu() for k, m in t.masks.items()},
                      track_id=j) for j, t in enumerate(tracks)]
