"""YOLOv8 CSP backbone + PAN-FPN neck, scaled by depth/width multipliers (yolov8.yaml layout)."""

from __future__ import annotations

import math

import torch
from torch import nn

from refdet.config import ModelConfig
from refdet.model.blocks import SPPF, C2f, Conv


def scale_channels(c: int, cfg: ModelConfig) -> int:
    """YOLOv8's rule: min(c, max_channels) * width, rounded up to a multiple of 8."""
    return int(math.ceil(min(c, cfg.max_channels) * cfg.width_multiple / 8) * 8)


def scale_depth(n: int, cfg: ModelConfig) -> int:
    return max(round(n * cfg.depth_multiple), 1)


class Backbone(nn.Module):
    """Returns C3, C4, C5 (strides 8, 16, 32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = [scale_channels(x, cfg) for x in (64, 128, 256, 512, 1024)]
        d3, d6 = scale_depth(3, cfg), scale_depth(6, cfg)
        self.stem = nn.Sequential(Conv(3, c[0], 3, 2), Conv(c[0], c[1], 3, 2), C2f(c[1], c[1], d3, True))
        self.stage3 = nn.Sequential(Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], d6, True))
        self.stage4 = nn.Sequential(Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], d6, True))
        self.stage5 = nn.Sequential(Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], d3, True), SPPF(c[4], c[4]))
        self.channels = (c[2], c[3], c[4])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage3(self.stem(x))
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return c3, c4, c5


class PANNeck(nn.Module):
    """Top-down FPN then bottom-up PAN; returns P3, P4, P5 with the backbone's channels."""

    def __init__(self, channels: tuple[int, int, int], cfg: ModelConfig):
        super().__init__()
        c3, c4, c5 = channels
        n = scale_depth(3, cfg)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C2f(c5 + c4, c4, n)
        self.td3 = C2f(c4 + c3, c3, n)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bu4 = C2f(c3 + c4, c4, n)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bu5 = C2f(c4 + c5, c5, n)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        t4 = self.td4(torch.cat([self.up(c5), c4], 1))
        p3 = self.td3(torch.cat([self.up(t4), c3], 1))
        p4 = self.bu4(torch.cat([self.down3(p3), t4], 1))
        p5 = self.bu5(torch.cat([self.down4(p4), c5], 1))
        return [p3, p4, p5]
