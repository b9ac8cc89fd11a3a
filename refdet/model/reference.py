"""Reference encoder: K reference crops per object -> one prototype vector per scale.

Design choice: the references go through the *query* backbone and neck (shared weights).
Without pretrained weights, a separate reference network would start in an unrelated
feature space and the correlation in `fusion.py` would carry no signal for many steps;
sharing makes query and reference features comparable from step 0, costs no parameters,
and trains the backbone from both paths. Only the query frames update the shared
BatchNorm running statistics (`running_stats_frozen`). References are small (``data.ref_size``), so
encoding them is cheap, and each reference set is encoded once per batch, however many
query frames use it.
"""

from __future__ import annotations

from contextlib import contextmanager

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
        with running_stats_frozen(backbone, neck):
            feats = neck(backbone(x))
        # Global average pool per reference, then the mean over the K views.
        return [f.mean(dim=(2, 3)).view(n, k, -1).mean(1) for f in feats]


@contextmanager
def running_stats_frozen(*modules: nn.Module):
    """BatchNorm layers of `modules` normalise with their batch's statistics as usual (in train
    mode) but leave their running statistics, and their batch count, as they were: for the
    duration they do not track them (in train mode torch then passes no running buffers).

    The references share the query backbone; their crops (`data.ref_size` px, the object
    filling the frame) have other statistics than query frames. Updating the running
    statistics with them would make evaluation normalise query frames with a mixture of the
    two. Measured (benchmarks/README.md, 2026-12-03): 40 stage-2 training forwards of the
    smoke model from a stage-1 start, with no weight update, dropped validation AP50 from
    0.28 to 0.20 and recall from 0.68 to 0.44; with the references kept out, 0.27 and 0.64."""
    norms = [m for part in modules for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, tracked in zip(norms, saved):
            m.track_running_stats = tracked
