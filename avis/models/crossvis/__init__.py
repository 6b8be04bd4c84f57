"""CrossVIS (Yang et al., ICCV 2021) and its CondInst-VIS ablation, visual-only online baselines.

Layout: ``backbone`` (ResNet/tiny + FPN P3-P7), ``head`` (FCOS towers, controller, embedding branch),
``targets`` (FCOS assignment), ``mask`` (mask branch, relative coordinates, dynamic head), ``crossover``
(cross-frame pairing), ``losses`` (dice, global balanced / pair-wise embedding, identity map), ``association``
(online tracking rule), ``model`` (the :class:`CrossVIS` method). Builders: :func:`crossvis_tiny`,
:func:`crossvis_r50`, :func:`condinst_vis_tiny`, :func:`condinst_vis_r50`.

Deviations from the paper / public code (each is a constructor argument, repeated in the configs):

1. No COCO pre-training (nothing may be downloaded): backbones start from random init or from a local
   torchvision state-dict file (``weights_path``).
2. Two frames per clip: the first (reference) and the last (target) frame of the engine's clip; the
   reference-frame distance (paper: up to 20 annotated frames) is the data pipeline's ``delta``.
3. Identities are mapped to proxies on the fly in order of first appearance ((video_id, instance_id) ->
   index, saved in the state dict); ``num_identities`` is a config value and past it identities share
   proxies by hash (the paper uses exactly the training set's identity count).
4. The proxy classifier is a plain linear layer (weight = proxies) with a bias initialised to the focal
   prior (-log 99); the paper does not say whether the proxies are normalised.
5. Masks are upsampled with bilinear interpolation (align_corners=False) instead of CondInst's
   ``aligned_bilinear``; both keep pixel centres aligned with the stride-4 targets (sampled at 4k + 2).
6. The 500-proposal cap is per batch (one process = one "GPU"); the crossover loss uses the same sampled
   positives; positives whose instance is missing, or has no positive location, in the other frame are
   skipped.
7. Boxes are derived from the masks (the batch format carries masks only).
8. CondInst-VIS: the paper's ablation keeps MaskTrack R-CNN's pair-wise identity head; here it is the same
   network with ``crossover=False, embedding="pairwise"`` (key = target frame, references = mean embedding
   of each reference-frame instance's positives, cross entropy over [new, refs]) and the same association
   rule as CrossVIS (cosine + box IoU, same class, new track below 0.4), not MaskTrack's rule with
   detection score. ``embedding=None`` gives class + box IoU association only.
9. Unmatched tracks are never terminated (as in the public code); tracks only end with the video.
"""

from __future__ import annotations

from .association import assign, match_scores, update_tracks
from .backbone import resnet50_fpn, tiny_fpn
from .losses import GlobalEmbeddingLoss, IdentityMap, dice_loss, embedding_scale
from .model import CrossVIS

__all__ = ["CrossVIS", "crossvis_tiny", "crossvis_r50", "condinst_vis_tiny", "condinst_vis_r50", "assign",
           "match_scores", "update_tracks", "GlobalEmbeddingLoss", "IdentityMap", "dice_loss", "embedding_scale",
           "bench_entry"]

TINY = {"mask_branch_channels": 16, "embed_dim": 32, "num_identities": 64}


def crossvis_tiny(num_classes: int, **kwargs) -> CrossVIS:
    """CPU preset: 5-stage 16-wide conv net, FPN 32 channels, mask branch 16, embedding 32, 64 proxies."""
    opts = {**TINY, **kwargs}
    return CrossVIS(num_classes, tiny_fpn(32, 16), **opts)


def crossvis_r50(num_classes: int, weights_path: str | None = None, **kwargs) -> CrossVIS:
    """ResNet-50 + FPN 256, mask branch 128 -> 8, embedding 256 (the paper's setting)."""
    return CrossVIS(num_classes, resnet50_fpn(256, weights_path), **kwargs)


def condinst_vis_tiny(num_classes: int, **kwargs) -> CrossVIS:
    return crossvis_tiny(num_classes, **{"crossover": False, "embedding": "pairwise", **kwargs})


def condinst_vis_r50(num_classes: int, weights_path: str | None = None, **kwargs) -> CrossVIS:
    return crossvis_r50(num_classes, weights_path, **{"crossover": False, "embedding": "pairwise", **kwargs})


def bench_entry(variant: str = "crossvis_r50", num_classes: int = 40, device: str = "cpu",
                full_path: bool = True) -> tuple[str, CrossVIS]:
    """For ``scripts/bench_online.py``: (name, model in eval mode on ``device``); time ``model.step(state, frame)``
    with ``state = model.init_state()`` and uint8 3 x 360 x 640 frames.

    Random-init weights score nothing above 0.05, so ``full_path`` sets ``score_threshold=0``: every frame then
    runs the full post-processing (top-1000 -> NMS -> 100 masks -> association), the worst case."""
    builders = {"crossvis_r50": crossvis_r50, "condinst_vis_r50": condinst_vis_r50, "crossvis_tiny": crossvis_tiny,
                "condinst_vis_tiny": condinst_vis_tiny}
    kwargs = {"score_threshold": 0.0} if full_path else {}
    model = builders[variant](num_classes, **kwargs).to(device).eval()
    name = {"crossvis_r50": "CrossVIS R-50", "condinst_vis_r50": "CondInst-VIS R-50"}.get(variant, variant)
    return name, model
