"""VGGish (Hershey et al., 2017) with the official layer layout, loading torchvggish state dicts.

Layout (input: a log-mel example, N x 1 x 96 x 64, time as height, mel bands as width)::

    features:   conv3x3 1->64, ReLU, maxpool2 | conv 64->128, ReLU, maxpool2 |
                conv 128->256, ReLU, conv 256->256, ReLU, maxpool2 | conv 256->512, ReLU, conv 512->512, ReLU,
                maxpool2                                             -> N x 512 x 6 x 4
    flatten in (height, width, channel) order, as TF's NHWC reshape -> N x 12288
    embeddings: fc 12288->4096, ReLU, fc 4096->4096, ReLU, fc 4096->128, ReLU

The module attribute names reproduce torchvggish's ``nn.Sequential`` indices, so its state dict (the converted
official TF weights, e.g. ``vggish-10086976.pth``) loads with no renaming::

    features.0.{weight,bias}    conv1    (TF vggish/conv1)          64 x 1 x 3 x 3
    features.3.{weight,bias}    conv2    (vggish/conv2)            128 x 64 x 3 x 3
    features.6.{weight,bias}    conv3_1  (vggish/conv3/conv3_1)    256 x 128 x 3 x 3
    features.8.{weight,bias}    conv3_2  (vggish/conv3/conv3_2)    256 x 256 x 3 x 3
    features.11.{weight,bias}   conv4_1  (vggish/conv4/conv4_1)    512 x 256 x 3 x 3
    features.13.{weight,bias}   conv4_2  (vggish/conv4/conv4_2)    512 x 512 x 3 x 3
    embeddings.0.{weight,bias}  fc1_1    (vggish/fc1/fc1_1)       4096 x 12288
    embeddings.2.{weight,bias}  fc1_2    (vggish/fc1/fc1_2)       4096 x 4096
    embeddings.4.{weight,bias}  fc2      (vggish/fc2)              128 x 4096

torchvggish's full ``VGGish`` module also stores its PCA post-processor as ``pproc.pca_matrix`` /
``pproc.pca_means``; those keys are ignored (the RCF feature is taken before the PCA). A leading ``module.``
(DataParallel) is stripped. Any other missing, unexpected or mis-shaped key is an :class:`avis.errors.InputError`.

The RCF feature a_t (C_a = 4096) is :meth:`VGGish.forward_features`: the output of the second 4096-d fc layer
after its ReLU, i.e. the input of the last linear layer.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from avis.errors import InputError
from avis.io.files import regular_file

log = logging.getLogger(__name__)

FEATURE_DIM = 4096
EMBEDDING_DIM = 128
_LAYOUT = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]
_IGNORED_PREFIXES = ("pproc.",)


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 1
    for v in _LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = v
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """VGGish. ``forward``: N x 96 x 64 (or N x 1 x 96 x 64) log-mel -> N x 128 embedding (no PCA)."""

    feature_dim = FEATURE_DIM

    def __init__(self):
        super().__init__()
        self.features = _make_features()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM), nn.ReLU(inplace=True),
        )

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[:, None]
        x = self.features(x)  # N x 512 x 6 x 4
        return x.permute(0, 2, 3, 1).flatten(1)  # (h, w, c) order, as the TF weights expect

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """N x 96 x 64 log-mel -> N x 4096: the input of the last linear layer (after fc1_2 + ReLU)."""
        return self.embeddings[:4](self._trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embeddings(self._trunk(x))


def load_vggish_state_dict(model: VGGish, path: str | os.PathLike) -> None:
    """Load a torchvggish-named state dict from a local file (``weights_only=True``), strictly.

    The loaded tensors (cast to float32) replace the module's parameters (``assign=True``), so ``model`` may
    live on the meta device.
    """
    regular_file(path, missing="VGGish weights file not found")
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or corrupt file: one clear line, not a traceback
        raise InputError(f"cannot read VGGish weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                         path) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"not a state dict (got {type(state).__name__})", path)
    cleaned = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(_IGNORED_PREFIXES):
            continue
        cleaned[key] = value
    own = model.state_dict()
    missing = sorted(set(own) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(own))
    wrong = [k for k in own if k in cleaned and tuple(cleaned[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise InputError(f"not a torchvggish VGGish state dict (missing keys {missing}, unexpected keys "
                         f"{unexpected}, wrong shapes {wrong})", path)
    model.load_state_dict({k: v.to(torch.float32) for k, v in cleaned.items()}, assign=True)


def vggish(weights: str | os.PathLike | None = None) -> VGGish:
    """Build VGGish; load ``weights`` (a local torchvggish state dict) or warn and keep the random init."""
    if weights:
        # Build on the meta device: the 72 M-parameter random init would be thrown away by the load anyway.
        with torch.device("meta"):
            model = VGGish()
        load_vggish_state_dict(model, weights)
        log.info("VGGish weights loaded from %s", weights)
    else:
        model = VGGish()
        log.warning("VGGish: no weights file given; using random initialization (audio features are not "
                    "pretrained)")
    return model
