"""ERFNet (Romera et al. 2018) and its encoder-only variant, as in Eromera/erfnet_pytorch.

All convolutions carry a bias and BatchNorm uses eps=1e-3, exactly as the reference, so
parameter counts match the paper (2,066,642 / 1,876,495 at 19 classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Refine, pad_to_stride, upsample_and_crop


class Downsampler(nn.Module):
    """concat(3x3 stride-2 conv, 2x2 max-pool) -> BN -> ReLU: halves resolution cheaply."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out - c_in, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class NonBottleneck1d(nn.Module):
    """Residual block of factorised 3x1/1x3 convs; the second pair is dilated by ``dilation``."""

    def __init__(self, channels: int, drop: float, dilation: int):
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(c, eps=1e-3)
        self.dropout = nn.Dropout2d(drop) if drop > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1x3_1(F.relu(self.conv3x1_1(x)))))
        y = self.dropout(self.bn2(self.conv1x3_2(F.relu(self.conv3x1_2(y)))))
        return F.relu(y + x)


class Encoder(nn.Module):
    """ERFNet encoder: 1/8 resolution, 128 channels, plus its 1x1 classifier (128 -> C)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.initial_block = Downsampler(3, 16)
        layers: list[nn.Module] = [Downsampler(16, 64)]
        layers += [NonBottleneck1d(64, 0.03, 1) for _ in range(5)]
        layers.append(Downsampler(64, 128))
        layers += [NonBottleneck1d(128, 0.3, d) for _ in range(2) for d in (2, 4, 8, 16)]
        self.layers = nn.Sequential(*layers)
        self.output_conv = nn.Conv2d(128, num_classes, 1, bias=True)

    def features(self, x: Tensor) -> Tensor:
        return self.layers(self.initial_block(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.output_conv(self.features(x))


class Upsampler(nn.Module):
    """Transposed 3x3 stride-2 conv -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class Decoder(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.layers = nn.Sequential(
            Upsampler(128, 64), NonBottleneck1d(64, 0, 1), NonBottleneck1d(64, 0, 1),
            Upsampler(64, 16), NonBottleneck1d(16, 0, 1), NonBottleneck1d(16, 0, 1),
        )
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_conv(self.layers(x))


class ERFNet(nn.Module):
    """Full encoder-decoder ERFNet. The encoder keeps its (unused) classifier, as the
    reference does, so an ``erfnet_enc`` checkpoint loads into ``encoder`` unchanged."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = Encoder(num_classes)
        self.decoder = Decoder(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        logits = self.decoder(self.encoder.features(pad_to_stride(x)))
        return logits[..., :h, :w]


class ERFNetEncoderSeg(nn.Module):
    """ERFNet encoder + 1x1 classifier + bilinear x8: the EACNet-ERF backbone."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = Encoder(num_classes)

    def forward(self, x: Tensor, refine: Refine = None) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_stride(x)
        logits = self.encoder(x)
        if refine is not None:
            logits = refine(logits)
        return upsample_and_crop(logits, tuple(x.shape[-2:]), (h, w))
