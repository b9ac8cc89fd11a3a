"""Anchor-free decoupled detection head with DFL (YOLOv8 Detect)."""

from __future__ import annotations

import math

import torch
from torch import nn

from refdet.model.blocks import Conv

STRIDES = (8, 16, 32)


class DetectHead(nn.Module):
    """Per level: a box branch (4 * reg_max DFL logits) and a class branch (num_classes logits)."""

    def __init__(self, channels: tuple[int, ...], num_classes: int, reg_max: int):
        super().__init__()
        self.nc, self.reg_max = num_classes, reg_max
        c2 = max(16, channels[0] // 4, reg_max * 4)
        c3 = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, num_classes, 1)) for c in channels
        )
        self.reset_bias()

    def reset_bias(self, img_size: int = 640) -> None:
        """YOLOv8's initialisation: box logits 1.0; class prior of 5 objects per 640 px image."""
        for box, cls, s in zip(self.box, self.cls, STRIDES):
            nn.init.constant_(box[-1].bias, 1.0)
            nn.init.constant_(cls[-1].bias, math.log(5 / self.nc / (img_size / s) ** 2))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns box logits [B, A, 4*reg_max] and class logits [B, A, nc], A = sum of H*W."""
        boxes, scores = [], []
        for x, box, cls in zip(feats, self.box, self.cls):
            boxes.append(box(x).flatten(2))
            scores.append(cls(x).flatten(2))
        return torch.cat(boxes, 2).transpose(1, 2), torch.cat(scores, 2).transpose(1, 2)
