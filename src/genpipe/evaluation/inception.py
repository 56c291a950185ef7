"""Inception-v3 in the FID configuration, in plain torch (no torchvision, nothing downloaded).

This is the network of pytorch-fid (``pytorch_fid/inception.py``: ``fid_inception_v3`` with
its ``FIDInceptionA``, ``FIDInceptionC``, ``FIDInceptionE_1`` and ``FIDInceptionE_2`` blocks)
and of torch-fidelity, i.e. the TensorFlow graph ``2015-12-05`` that the original FID and
Inception Score code used, ported to torch:

* images are repeated to 3 channels when grey, resized to 299x299 (bilinear,
  ``align_corners=False``, as pytorch-fid does) and taken in [-1, 1];
* the stem and the Mixed_5b..7c blocks of torchvision's ``Inception3`` (BatchNorm eps 1e-3),
  with the TF graph's quirks: the average-pool branches do not count the zero padding
  (``count_include_pad=False``) and the pool branch of the last block (Mixed_7c) is a *max*
  pool;
* ``features``: the 2048-d ``pool3`` output (global average pool after Mixed_7c), the FID
  features; ``classify``: the 1008-way logits (1001 ImageNet classes plus 7 unused ones)
  whose softmax the Inception Score uses, computed as the reference IS code does, without
  ``fc``'s bias; ``forward``: the graph's logits, bias included.

The module names are those of torchvision's ``Inception3(num_classes=1008,
aux_logits=False)``, which is what pytorch-fid loads ``pt_inception-2015-12-05-6726825d.pth``
into with a strict ``load_state_dict``; so its ``state_dict`` keys are ``Conv2d_1a_3x3.conv.weight``,
``Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var,num_batches_tracked}``, ...,
``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight``, ``fc.bias``. A file without
``num_batches_tracked`` entries also loads (BatchNorm fills them in for state dicts saved
before they existed).

Key names follow pytorch-fid's and torchvision's source; a file that differs raises
:class:`InputError` naming the first differing key. Numbers differ slightly from the TF
reference (TF1 bilinear resize).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genpipe.config import INCEPTION_FEATURE_DIM
from genpipe.errors import InputError


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # the TF graph's average pool ignores the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/5c/5d: 64 + 64 + 96 + pool_features channels out."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17): 384 + 96 + in_channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..6e (factorised 7x7): 4 x 192 channels out."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8): 320 + 192 + in_channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (``pool="avg"``, pytorch-fid's FIDInceptionE_1) and Mixed_7c (``pool="max"``,
    FIDInceptionE_2): 320 + 768 + 768 + 192 = 2048 channels out."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "avg":
            pooled = _avg_pool(x)
        else:  # the TF graph's last block max-pools here (pytorch-fid: "likely an error", kept for FID)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3FID(nn.Module):
    """The FID Inception-v3: ``features(x)`` -> (N, 2048) pool3, ``classify(f)`` -> (N, 1008) IS logits.

    ``x``: float images in [-1, 1], ``(N, C, H, W)`` with C in {1, 3} and any H, W (resized to
    299x299 here). Randomly initialised; load the weights with :func:`load_fid_inception`.
    """

    FEATURE_DIM = INCEPTION_FEATURE_DIM
    NUM_CLASSES = 1008
    INPUT_SIZE = 299

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, self.NUM_CLASSES)

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images of any size, 1 or 3 channels -> (N, 3, 299, 299)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        size = InceptionV3FID.INPUT_SIZE
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pool3 features of [-1, 1] images."""
        x = self.preprocess(x.float())
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 149 -> 147 -> 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # 35 -> 17 (6a) -> 8 (7a)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 1008) logits of the Inception Score from pool3 features: ``features @ fc.weight.T``.

        Without fc's bias, as the reference IS code (improved-gan's ``inception_score.py``
        multiplies pool3 by the ``softmax/logits/MatMul`` weights only) and torch-fidelity's
        ``logits_unbiased`` do; :meth:`forward` gives the graph's full logits, bias included.
        """
        return F.linear(features, self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1008) logits of the TF graph (fc with its bias)."""
        return self.fc(self.features(x))


def _describe_mismatch(net: nn.Module, state: dict[str, torch.Tensor]) -> str:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape "
                     f"(first {k}: {list(state[k].shape)}, expected {list(expected[k].shape)})")
    return "; ".join(parts) or "load_state_dict refused it"


def load_fid_inception(path: Path | str) -> InceptionV3FID:
    """An eval-mode :class:`InceptionV3FID` with the weights of ``path`` (a state dict, read
    with ``weights_only=True``), e.g. pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``.
    Any problem with the file is an :class:`InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (features.inception_weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe to unpickle
        raise InputError(f"{path}: not a readable torch state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    net = InceptionV3FID()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise InputError(f"{path}: not the FID Inception-v3 weights: {_describe_mismatch(net, state)}") from None
    return net.eval()
