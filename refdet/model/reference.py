"""Reference encoder: K reference crops per object -> one prototype vector per scale.

Design choice: the references go through the *query* backbone and neck (shared weights).
Without pretrained weights, a separate reference network would start in an unrelated
feature space and the correlation in `fusion.py` would carry no signal for many steps;
sharing makes query and reference features comparable from step 0, costs no parameters,
and trains the backbone from both paths. References are small (``data.ref_size``), so
encoding them is cheap, and each reference set is encoded once per batch, however many
query frames use it.
"""

from __future__ import annotations

import torch
from torch import nn


class ReferenceEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        # Held by reference, not registered twice: RefDet owns backbone and neck.
        self._parts = (backbone, neck)

    def forward(self, references: torch.Tensor) -> list[torch.Tensor]:
        """references [N, K, 3, r, r] (0-1) -> per scale (P3, P4, P5) prototypes [N, C_l]."""
        n, k = references.shape[:2]
        backbone, neck = self._parts
        x = references.flatten(0, 1)
        if backbone.stem[0].conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # match a channels-last model
        feats = neck(backbone(x))
        # Global average pool per reference, then the mean over the K views.
        return [f.mean(dim=(2, 3)).view(n, k, -1).mean(1) for f in feats]
