"""DABNet (Li et al. 2019), as in Reagan1311/DABNet: convs without bias, BN(eps 1e-3) + PReLU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import Refine, pad_to_stride, upsample_and_crop


class BNPReLU(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.BatchNorm2d(channels, eps=1e-3), nn.PReLU(channels))


def conv(c_in: int, c_out: int, k, stride=1, padding=0, dilation=1, groups=1, bn_act=False) -> nn.Module:
    layer = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias=False)
    return nn.Sequential(layer, BNPReLU(c_out)) if bn_act else layer


class DABModule(nn.Module):
    """Depth-wise asymmetric bottleneck: a plain and a dilated factorised depth-wise branch."""

    def __init__(self, c: int, d: int):
        super().__init__()
        h = c // 2
        self.pre = BNPReLU(c)
        self.conv3x3 = conv(c, h, 3, padding=1, bn_act=True)
        self.branch = nn.Sequential(conv(h, h, (3, 1), padding=(1, 0), groups=h, bn_act=True),
                                    conv(h, h, (1, 3), padding=(0, 1), groups=h, bn_act=True))
        self.dilated = nn.Sequential(conv(h, h, (3, 1), padding=(d, 0), dilation=(d, 1), groups=h, bn_act=True),
                                     conv(h, h, (1, 3), padding=(0, d), dilation=(1, d), groups=h, bn_act=True))
        self.post = BNPReLU(h)
        self.conv1x1 = conv(h, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3x3(self.pre(x))
        return self.conv1x1(self.post(self.branch(y) + self.dilated(y))) + x


class Downsample(nn.Module):
    """3x3 stride-2 conv, concatenated with a max-pool of the input when channels grow."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.with_pool = c_in < c_out
        self.conv = conv(c_in, c_out - c_in if self.with_pool else c_out, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.act = BNPReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.act(torch.cat([y, self.pool(x)], 1) if self.with_pool else y)


class DABNet(nn.Module):
    def __init__(self, num_classes: int = 19, block_1: int = 3, block_2: int = 6):
        super().__init__()
        self.num_classes = num_classes
        self.init_conv = nn.Sequential(conv(3, 32, 3, 2, 1, bn_act=True), conv(32, 32, 3, 1, 1, bn_act=True),
                                       conv(32, 32, 3, 1, 1, bn_act=True))
        self.inject = nn.AvgPool2d(3, stride=2, padding=1)  # input injection, applied 1-3 times
        self.bn_prelu_1 = BNPReLU(32 + 3)
        self.downsample_1 = Downsample(32 + 3, 64)
        self.block_1 = nn.Sequential(*[DABModule(64, 2) for _ in range(block_1)])
        self.bn_prelu_2 = BNPReLU(128 + 3)
        self.downsample_2 = Downsample(128 + 3, 128)
        self.block_2 = nn.Sequential(*[DABModule(128, d) for d in (4, 4, 8, 8, 16, 16)[:block_2]])
        self.bn_prelu_3 = BNPReLU(256 + 3)
        self.classifier = conv(259, num_classes, 1)

    def forward(self, x: Tensor, refine: Refine = None) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_stride(x)
        img2 = self.inject(x)
        img4 = self.inject(img2)
        img8 = self.inject(img4)
        y0 = self.bn_prelu_1(torch.cat([self.init_conv(x), img2], 1))
        y1_0 = self.downsample_1(y0)
        y1 = self.bn_prelu_2(torch.cat([self.block_1(y1_0), y1_0, img4], 1))
        y2_0 = self.downsample_2(y1)
        y2 = self.bn_prelu_3(torch.cat([self.block_2(y2_0), y2_0, img8], 1))
        logits = self.classifier(y2)
        if refine is not None:
            logits = refine(logits)
        return upsample_and_crop(logits, tuple(x.shape[-2:]), (h, w))
