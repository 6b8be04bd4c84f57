"""STMask's protonet and prediction head with feature calibration for anchors (FCA) and boxes (FCB)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from .anchors import KERNELS


class ProtoNet(nn.Module):
    """YOLACT protonet: P3 N x C x h x w -> prototypes N x k x 2h x 2w (stride 4, ReLU)."""

    def __init__(self, in_channels: int, channels: int = 256, num_protos: int = 32):
        super().__init__()
        self.pre = nn.Sequential(*[m for i in range(3) for m in
                                   (nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                                    nn.ReLU(inplace=True))])
        self.post = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, num_protos, 1), nn.ReLU(inplace=True))

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.pre(p3), scale_factor=2, mode="bilinear", align_corners=False)
        return self.post(x)


class DeformConv(nn.Module):
    """kh x kw deformable convolution (torchvision.ops.deform_conv2d, no modulation); offsets from the caller."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int]):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(cout, cin, *kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel
        return deform_conv2d(x, offsets, self.weight, self.bias, padding=(kh // 2, kw // 2))


class Predictor(nn.Module):
    """One FCA predictor (kernel kh x kw, one anchor per location).

    x N x C x h x w -> dict of N x h x w x {4 box, K+1 cls, 1 ctr, k coef (tanh), E emb (L2-normalised)}.
    FCB (adaptive): the class branch (and with ``fcb_mask`` the coefficient and embedding branches) is a
    deformable conv whose offsets come from a zero-initialised 1x1 conv on the detached box deltas, so at
    initialisation it is the plain kh x kw convolution."""

    def __init__(self, c: int, num_classes: int, num_protos: int, embed_dim: int, kernel: tuple[int, int],
                 fcb: bool = True, fcb_mask: bool = False):
        super().__init__()
        kh, kw = kernel
        pad = (kh // 2, kw // 2)
        self.fcb, self.fcb_mask = fcb, fcb and fcb_mask
        self.box = nn.Conv2d(c, 4, kernel, padding=pad)
        self.ctr = nn.Conv2d(c, 1, kernel, padding=pad)
        self.offset = nn.Conv2d(4, 2 * kh * kw, 1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        cls_mod = DeformConv if fcb else (lambda a, b, k: nn.Conv2d(a, b, k, padding=pad))
        other = DeformConv if self.fcb_mask else (lambda a, b, k: nn.Conv2d(a, b, k, padding=pad))
        self.cls = cls_mod(c, num_classes + 1, kernel)
        self.coef = other(c, num_protos, kernel)
        self.emb = other(c, embed_dim, kernel)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        box = self.box(x)
        offsets = self.offset(box.detach()) if self.fcb else None

        def run(conv, deform):
            return conv(x, offsets) if deform else conv(x)

        out = {"box": box, "cls": run(self.cls, self.fcb), "ctr": self.ctr(x),
               "coef": torch.tanh(run(self.coef, self.fcb_mask)), "emb": F.normalize(run(self.emb, self.fcb_mask), dim=1)}
        return {k: v.permute(0, 2, 3, 1) for k, v in out.items()}


class STMaskHead(nn.Module):
    """Shared over P3..P7: 3x3 conv + ReLU, then the three FCA predictors (3x3, 3x5, 5x3).

    forward([P_l]) -> dict of N x A x C (A = sum_l h_l w_l * 3, flat order of :func:`make_anchors`)."""

    def __init__(self, c: int, num_classes: int, num_protos: int = 32, embed_dim: int = 128,
                 fcb: bool = True, fcb_mask: bool = False, kernels=KERNELS):
        super().__init__()
        self.upfeature = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.predictors = nn.ModuleList(Predictor(c, num_classes, num_protos, embed_dim, k, fcb, fcb_mask)
                                        for k in kernels)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        per_level = []
        for f in feats:
            x = self.upfeature(f)
            outs = [p(x) for p in self.predictors]
            n = f.shape[0]
            per_level.append({k: torch.stack([o[k] for o in outs], 3).reshape(n, -1, outs[0][k].shape[-1])
                              for k in outs[0]})
        return {k: torch.cat([lv[k] for lv in per_level], 1) for k in per_level[0]}
