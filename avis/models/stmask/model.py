"""The STMask method (deviations from the paper: docs/baselines_stmask.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, distance_box_iou_loss, nms

from ..base import FrameResult, Track, TrackedInstance, VISMethod
from ..frame_pairs import pair_targets
from ..losses import zero_loss
from ..preprocess import normalize_and_pad, register_pixel_stats
from .anchors import SCALES, decode, encode, make_anchors
from .association import STTrack, update_tracks
from .head import ProtoNet, STMaskHead
from .temporal import TemporalFusion

#: loss weights of the public code
LOSS_WEIGHTS = {"cls": 6.125, "box": 5.0, "ctr": 20.0, "mask": 6.125, "track": 5.0, "t_box": 5.0, "t_mask": 6.125}


def _box_mask(boxes: torch.Tensor, h: int, w: int, stride: int = 1) -> torch.Tensor:
    """boxes P x 4 (input pixels) -> bool P x h x w: cells whose centre (stride * (i + 0.5)) lies in the box."""
    ys = (torch.arange(h, device=boxes.device) + 0.5) * stride
    xs = (torch.arange(w, device=boxes.device) + 0.5) * stride
    b = boxes[:, :, None]
    inside_y = (ys[None] >= b[:, 1]) & (ys[None] < b[:, 3])
    inside_x = (xs[None] >= b[:, 0]) & (xs[None] < b[:, 2])
    return inside_y[:, :, None] & inside_x[:, None, :]


def centerness_targets(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of each anchor's centre inside its matched box (0 outside): P x 4, P x 4 -> P."""
    c = (anchors[:, :2] + anchors[:, 2:]) / 2
    lt, rb = (c - boxes[:, :2]).clamp(min=0), (boxes[:, 2:] - c).clamp(min=0)
    lr, tb = torch.stack([lt[:, 0], rb[:, 0]], 1), torch.stack([lt[:, 1], rb[:, 1]], 1)
    return ((lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) *
            (tb.min(1).values / tb.max(1).values.clamp(min=1e-6))).sqrt()


class STMask(VISMethod):
    """STMask: YOLACT-style prototypes + FCA/FCB head + tracking embedding + temporal fusion on P4.

    Args:
        num_classes: K categories (softmax over K + 1, index 0 = background).
        backbone: images N x 3 x H x W -> [P3..P7] (``out_channels``, ``strides``).
        num_protos: prototypes / coefficients (32). embed_dim: tracking embedding (128).
        fcb: adaptive FCB on the class branch; fcb_mask: also on the coefficient and embedding branches.
        temporal_channels: convs of the temporal fusion RoI net (paper 512, 512, 1024); correlation_patch: 11.
        clip_length: frames per training clip; the first and the last form the pair (t-1, t).
    Training: ``forward(batch)`` uses the first and the last frame of each clip (t-1, t) and returns
    ``loss_cls, loss_box, loss_ctr, loss_mask, loss_track, loss_t_box, loss_t_mask`` (weights applied).
    Inference: online, one frame per ``step``; masks at the input size.
    """

    clip_length = 2
    uses_audio = False

    def __init__(self, num_classes: int, backbone: nn.Module, num_protos: int = 32, embed_dim: int = 128,
                 proto_channels: int = 256, fcb: bool = True, fcb_mask: bool = False,
                 temporal_channels: tuple[int, ...] = (512, 512, 1024), correlation_patch: int = 11,
                 anchor_scales: tuple[float, ...] = SCALES, pos_iou: float = 0.5, neg_iou: float = 0.4,
                 ohem_ratio: int = 3, masks_to_train: int = 100, loss_weights: dict | None = None,
                 score_threshold: float = 0.05, pre_nms_topk: int = 1000, nms_threshold: float = 0.5,
                 max_detections: int = 100, mask_threshold: float = 0.5, new_track_threshold: float = 1.4,
                 track_memory: int = 10, track_decay: float = 0.95, size_divisibility: int = 128,
                 clip_length: int = 2):
        super().__init__()
        self.num_classes, self.backbone = num_classes, backbone
        self.strides = tuple(backbone.strides)
        self.anchor_scales = tuple(float(s) for s in anchor_scales)
        self.pos_iou, self.neg_iou, self.ohem_ratio, self.masks_to_train = pos_iou, neg_iou, ohem_ratio, masks_to_train
        self.loss_weights = {**LOSS_WEIGHTS, **(loss_weights or {})}
        self.score_threshold, self.pre_nms_topk, self.nms_threshold = score_threshold, pre_nms_topk, nms_threshold
        self.max_detections, self.mask_threshold = max_detections, mask_threshold
        self.new_track_threshold, self.track_memory, self.track_decay = new_track_threshold, track_memory, track_decay
        self.size_divisibility = size_divisibility
        self.clip_length = int(clip_length)  # frames delivered; the first and the last are used (gap clip_length - 1)
        c = backbone.out_channels
        self.protonet = ProtoNet(c, proto_channels, num_protos)
        self.head = STMaskHead(c, num_classes, num_protos, embed_dim, fcb, fcb_mask)
        self.temporal = TemporalFusion(c, num_protos, correlation_patch, tuple(temporal_channels), self.strides[1])
        register_pixel_stats(self)

    # -- shared ---------------------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> normalised float N x 3 x Hp x Wp, zero-padded right/bottom to the divisibility."""
        return normalize_and_pad(frames, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def _features(self, images: torch.Tensor):
        feats = self.backbone(images)
        protos = self.protonet(feats[0]).float()
        out = {k: v.float() for k, v in self.head(feats).items()}
        anchors = make_anchors([f.shape[-2:] for f in feats], self.strides, self.anchor_scales, device=images.device)
        return feats, protos, out, anchors

    @staticmethod
    def mask_logits(protos: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """protos k x h x w (or P x k x h x w), coefs P x k -> P x h x w (linear combination)."""
        if protos.dim() == 3:
            return torch.einsum("khw,pk->phw", protos, coefs)
        return torch.einsum("pkhw,pk->phw", protos, coefs)

    # -- training -------------------------------------------------------------------------------------
    def match(self, anchors: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> matched gt index per anchor (A) and state (A: 1 positive, 0 negative, -1 ignored).

        IoU >= pos_iou positive, < neg_iou negative; each gt's best anchor is forced positive (YOLACT)."""
        a = anchors.shape[0]
        if boxes.shape[0] == 0:
            return anchors.new_zeros(a, dtype=torch.long), anchors.new_zeros(a, dtype=torch.long)
        iou = box_iou(boxes, anchors)
        best_iou, best_gt = iou.max(0)
        forced = iou.argmax(1)
        best_iou[forced] = 2.0
        best_gt[forced] = torch.arange(len(boxes), device=anchors.device)
        state = torch.full((a,), -1, dtype=torch.long, device=anchors.device)
        state[best_iou < self.neg_iou] = 0
        state[best_iou >= self.pos_iou] = 1
        return best_gt, state

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        sel = [0, frames.shape[1] - 1]  # t-1, t
        images = self.preprocess(frames[:, sel].flatten(0, 1))
        targets = pair_targets(batch["targets"], sel, images.shape[-2:], self.pixel_mean.device)
        feats, protos, out, anchors = self._features(images)
        wt = self.loss_weights
        matched = [self.match(anchors, t["boxes"]) for t in targets]
        gt_idx = torch.stack([m[0] for m in matched])
        state = torch.stack([m[1] for m in matched])
        pos = state == 1
        num_pos = max(int(pos.sum()), 1)

        # class: softmax CE with OHEM (negatives with the highest background loss, ohem_ratio per positive)
        labels = torch.zeros_like(gt_idx)
        for n, t in enumerate(targets):
            if len(t["labels"]):
                labels[n] = torch.where(pos[n], t["labels"][gt_idx[n]] + 1, 0)
        ce = F.cross_entropy(out["cls"].flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        neg_ce = ce.detach().masked_fill(state != 0, -1.0)
        keep = pos.clone()
        for n in range(len(targets)):
            k = min(self.ohem_ratio * max(int(pos[n].sum()), 1), int((state[n] == 0).sum()))
            keep[n, neg_ce[n].topk(k).indices] = True
        # zero terms keep every head output in the graph when a batch has no positives (DDP needs all grads)
        in_graph = zero_loss(*out.values(), protos)
        losses = {"loss_cls": wt["cls"] * ce[keep].sum() / num_pos + in_graph}

        p_img, p_anc = pos.nonzero(as_tuple=True)
        p_gt = gt_idx[p_img, p_anc]
        gt_boxes = torch.stack([targets[n]["boxes"][g] for n, g in zip(p_img.tolist(), p_gt.tolist())]) \
            if len(p_img) else anchors.new_zeros(0, 4)
        pred_boxes = decode(out["box"][p_img, p_anc], anchors[p_anc])
        losses["loss_box"] = wt["box"] * distance_box_iou_loss(pred_boxes, gt_boxes, reduction="sum") / num_pos
        ctr_t = centerness_targets(anchors[p_anc], gt_boxes)
        losses["loss_ctr"] = wt["ctr"] * F.binary_cross_entropy_with_logits(
            out["ctr"][p_img, p_anc, 0], ctr_t, reduction="sum") / num_pos

        # masks: at most masks_to_train positives per image, BCE inside the gt box / box area (YOLACT)
        sample = torch.cat([torch.nonzero(p_img == n)[:, 0][torch.randperm(int((p_img == n).sum()),
                                                                            device=p_img.device)[:self.masks_to_train]]
                            for n in range(len(targets))]) if len(p_img) else p_img
        s_img, s_gt = p_img[sample], p_gt[sample]
        logits = self.mask_logits(protos[s_img], out["coef"][s_img, p_anc[sample]])
        losses["loss_mask"] = wt["mask"] * self._mask_loss(logits, targets, s_img, s_gt, gt_boxes[sample])

        losses["loss_track"] = wt["track"] * self._track_loss(out["emb"], p_img, p_anc, p_gt, targets)
        t_box, t_mask = self._temporal_loss(feats[1], protos, out["coef"], p_img, p_anc, p_gt, targets)
        losses["loss_t_box"], losses["loss_t_mask"] = wt["t_box"] * t_box, wt["t_mask"] * t_mask
        return losses

    @staticmethod
    def _mask_loss(logits, targets, img, gt, boxes) -> torch.Tensor:
        if len(img) == 0:
            return zero_loss(logits)
        gt_masks = torch.stack([targets[n]["masks4"][g] for n, g in zip(img.tolist(), gt.tolist())]).float()
        crop = _box_mask(boxes, *logits.shape[-2:], stride=4).float()
        bce = F.binary_cross_entropy_with_logits(logits, gt_masks, reduction="none") * crop
        return (bce.flatten(1).sum(1) / crop.flatten(1).sum(1).clamp(min=1)).mean()

    def _track_loss(self, emb, p_img, p_anc, p_gt, targets, max_per_image: int = 100) -> torch.Tensor:
        """Pair-wise BCE between positives of the two frames of a clip: p = (cos + 1) / 2, target same id."""
        losses = []
        for a in range(0, len(targets), 2):
            sides = []
            for n in (a, a + 1):
                idx = torch.nonzero(p_img == n)[:, 0][:max_per_image]
                sides.append((emb[n, p_anc[idx]], targets[n]["ids"][p_gt[idx]]))
            (e0, i0), (e1, i1) = sides
            if len(e0) and len(e1):
                p = ((F.normalize(e0, dim=1) @ F.normalize(e1, dim=1).T + 1) / 2).clamp(1e-6, 1 - 1e-6)
                losses.append(F.binary_cross_entropy(p, (i0[:, None] == i1[None]).float()))
        return torch.stack(losses).mean() if losses else zero_loss(emb)

    def _temporal_loss(self, p4, protos, coef, p_img, p_anc, p_gt, targets):
        """Per clip: gt boxes of t-1 of the instances present at t; their coefficients at t-1 = mean of the
        positives' (detached); targets: the box at t (smooth L1 on SSD deltas relative to the t-1 box) and the
        mask at t from the shifted coefficients (BCE in the box, as loss_mask)."""
        boxes, prev_coefs, next_boxes, next_img, next_gt = [], [], [], [], []
        for a in range(0, len(targets), 2):
            t0, t1 = targets[a], targets[a + 1]
            bx = []
            for g0, iid in enumerate(t0["ids"].tolist()):
                hit = (t1["ids"] == iid).nonzero()
                sel = (p_img == a) & (p_gt == g0)
                if len(hit) == 0 or not sel.any():
                    continue
                g1 = int(hit[0])
                bx.append(t0["boxes"][g0])
                prev_coefs.append(coef[a, p_anc[sel]].mean(0).detach())
                next_boxes.append(t1["boxes"][g1])
                next_img.append(a + 1)
                next_gt.append(g1)
            boxes.append(torch.stack(bx) if bx else p4.new_zeros(0, 4))
        zero = zero_loss(self.temporal.parameters())  # keeps the module in the graph
        if not prev_coefs:
            return zero, zero
        deltas, shift = self.temporal(p4[0::2], p4[1::2], boxes)
        prev = torch.cat(boxes)
        nb = torch.stack(next_boxes)
        t_box = F.smooth_l1_loss(deltas.float(), encode(nb, prev), reduction="mean")
        img, gt = torch.tensor(next_img, device=p4.device), torch.tensor(next_gt, device=p4.device)
        logits = self.mask_logits(protos[img], torch.stack(prev_coefs) + shift.float())
        return t_box + zero, self._mask_loss(logits, targets, img, gt, nb)

    # -- online inference -----------------------------------------------------------------------------
    def masks_at(self, protos: torch.Tensor, coefs: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Prototypes k x h4 x w4, coefficients P x k, boxes P x 4 -> bool P x h x w (upsampled x4, cropped)."""
        if len(coefs) == 0:
            return torch.zeros(0, h, w, dtype=torch.bool, device=protos.device)
        logits = F.interpolate(self.mask_logits(protos, coefs)[:, None], scale_factor=4, mode="bilinear",
                               align_corners=False)[:, 0]
        logits = logits[:, :h, :w]
        return (logits.sigmoid() > self.mask_threshold) & _box_mask(boxes, h, w)

    @torch.no_grad()
    def detect(self, frame: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """uint8 3 x H x W -> (detections: boxes, scores, labels, emb, coef, masks; P4 1 x C x h x w; prototypes)."""
        h, w = frame.shape[-2:]
        feats, protos, out, anchors = self._features(self.preprocess(frame[None]))
        probs = out["cls"][0].softmax(-1)[:, 1:]
        scores, labels = probs.max(1)
        scores = scores * out["ctr"][0, :, 0].sigmoid()
        idx = (scores > self.score_threshold).nonzero()[:, 0]
        if len(idx) > self.pre_nms_topk:
            idx = idx[scores[idx].topk(self.pre_nms_topk).indices]
        boxes = decode(out["box"][0, idx], anchors[idx])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = nms(boxes, scores[idx], self.nms_threshold)[: self.max_detections]  # cross-class
        idx, boxes = idx[keep], boxes[keep]
        coef = out["coef"][0, idx]
        det = {"boxes": boxes, "scores": scores[idx], "labels": labels[idx], "emb": out["emb"][0, idx],
               "coef": coef, "masks": self.masks_at(protos[0], coef, boxes, h, w)}
        return det, feats[1], protos[0]

    def init_state(self) -> dict:
        return {"frame": 0, "tracks": [], "ended": [], "p4": None, "next_id": 0}

    @torch.no_grad()
    def step(self, state: dict, frame: torch.Tensor, audio: torch.Tensor | None = None) -> FrameResult:
        """One frame: detect, propagate the live tracks with the temporal fusion module, associate -> every live
        track with a mask in this frame: matched or new (this detection's class and score) or unmatched and
        propagated (its majority class and decayed score)."""
        h, w = frame.shape[-2:]
        det, p4, protos = self.detect(frame)
        tracks: list[STTrack] = state["tracks"]
        if tracks:
            boxes = torch.stack([t.box for t in tracks])
            pb, pc = self.temporal.propagate(state["p4"], p4, [boxes], torch.stack([t.coef for t in tracks]))
            pb, pc = pb.float(), pc.float()
            pb[:, 0::2] = pb[:, 0::2].clamp(0, w)
            pb[:, 1::2] = pb[:, 1::2].clamp(0, h)
            pm = self.masks_at(protos, pc, pb, h, w)
        else:
            pb = pc = pm = None
        t = state["frame"]
        update_tracks(tracks, state["ended"], t, det, pb, pc, pm, self.new_track_threshold,
                      self.track_memory, self.track_decay)
        instances = []
        for tr in tracks:
            if tr.track_id < 0:  # created in this frame
                tr.track_id, state["next_id"] = state["next_id"], state["next_id"] + 1
            if t in tr.masks:
                label = tr.labels[-1] if tr.missed == 0 else tr.label
                instances.append(TrackedInstance(tr.track_id, label, tr.scores[-1], tr.masks[t].cpu()))
        state["p4"] = p4
        state["frame"] += 1
        return FrameResult(t, sorted(instances, key=lambda x: x.track_id))

    def finish(self, state: dict) -> list[Track]:
        """Ended tracks, then live ones; score = mean of the frame scores, class = majority vote."""
        return [Track(label=t.label, score=sum(t.scores) / len(t.scores), masks={k: m.cpu() for k, m in t.masks.items()},
                      track_id=t.track_id) for t in state["ended"] + state["tracks"]]
