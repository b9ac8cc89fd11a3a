"""Conditions the query features P3/P4/P5 on the reference prototypes.

Per level: a depthwise correlation (query feature * prototype, per channel), a cosine
similarity map, and channel modulation (FiLM) from the prototype, mixed by a 1x1 conv and
added back to the query feature (residual), so the head sees where the query looks like the
references.

The mix is pointwise on purpose: the head's two 3x3 convs per branch already aggregate the
similarity over a 5x5 neighbourhood of the fused map. A 3x3 conv here (the first design)
cost 1.4 of the 15.7 GFLOP of a 160 px smoke training step, more than the references'
encoding; validation ST-IoU with and without it was the same within seed noise (three seeds
each, measured here; README "Design").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refdet.model.blocks import Conv


class LevelFusion(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.film = nn.Linear(c, 2 * c)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.mix = Conv(2 * c + 1, c, 1)

    def forward(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """q [B, C, H, W] query features, p [B, C] prototype per query -> [B, C, H, W]."""
        gamma, beta = self.film(p).chunk(2, dim=1)
        modulated = q * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        corr = q * p[:, :, None, None]
        sim = F.cosine_similarity(q, p[:, :, None, None], dim=1, eps=1e-6).unsqueeze(1)
        return q + self.mix(torch.cat([modulated, corr, sim], 1))


class ReferenceFusion(nn.Module):
    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        self.levels = nn.ModuleList(LevelFusion(c) for c in channels)

    def forward(
        self, feats: list[torch.Tensor], prototypes: list[torch.Tensor], ref_index: torch.Tensor
    ) -> list[torch.Tensor]:
        """feats: P3/P4/P5 [B, C_l, H_l, W_l]; prototypes [N, C_l]; ref_index [B] in [0, N)."""
        return [fuse(f, p[ref_index]) for fuse, f, p in zip(self.levels, feats, prototypes)]
