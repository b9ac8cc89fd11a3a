"""RefDet: a YOLOv8-style query detector conditioned on K reference photos of the target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refdet.config import ModelConfig
from refdet.model.backbone import Backbone, PANNeck
from refdet.model.fusion import ReferenceFusion
from refdet.model.head import STRIDES, DetectHead
from refdet.model.reference import ReferenceEncoder
from refdet.ops.roi import roi_mean


class ProposalEmbedder(nn.Module):
    """Averages each box's ROI-aligned feature (``roi_size`` x ``roi_size`` bilinear samples) on
    every fused level, concatenates the levels and projects to a unit-norm embedding (used by
    the CPE loss). Prototypes are projected by the same MLP, so proposals and references share
    one embedding space."""

    def __init__(self, channels: tuple[int, ...], embed_dim: int, roi_size: int):
        super().__init__()
        self.roi_size = roi_size
        c = sum(channels)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * embed_dim), nn.SiLU(), nn.Linear(2 * embed_dim, embed_dim))

    def pool(self, feats: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """feats: fused P3/P4/P5; boxes: per image [n_i, 4] xyxy px -> [sum n_i, sum C_l]."""
        return torch.cat([roi_mean(f, boxes, self.roi_size, 1.0 / s) for f, s in zip(feats, STRIDES)], 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(pooled), dim=1)


class RefDet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.neck = PANNeck(self.backbone.channels, cfg)
        self.reference_encoder = ReferenceEncoder(self.backbone, self.neck)
        self.fusion = ReferenceFusion(self.backbone.channels)
        self.head = DetectHead(self.backbone.channels, cfg.num_classes, cfg.reg_max)
        self.cpe_embed = ProposalEmbedder(self.backbone.channels, cfg.embed_dim, cfg.roi_size)
        self._anchor_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def query_detector_parameters(self) -> int:
        """Parameters of the plain query detector (backbone + neck + head)."""
        parts = (self.backbone, self.neck, self.head)
        return sum(p.numel() for m in parts for p in m.parameters())

    def encode_references(self, references: torch.Tensor) -> list[torch.Tensor]:
        return self.reference_encoder(references)

    def forward(
        self,
        query: torch.Tensor,
        references: torch.Tensor | None,
        ref_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """
        query       [B, 3, H, W] in 0-1, H and W multiples of 32
        references  [N, K, 3, r, r] in 0-1: N reference sets of K photos each; None runs the
                    plain detector (no conditioning; the non-episodic stage 1)
        ref_index   [B] long, which reference set conditions each query (default arange(B), N == B)

        Returns (same keys in train and eval), A = H*W/8^2 + H*W/16^2 + H*W/32^2:
          box_logits      [B, A, 4*reg_max]  DFL logits, sides l,t,r,b
          cls_logits      [B, A, num_classes]
          anchors         [A, 2]  anchor centres, px
          strides         [A, 1]  px per grid cell
          fused_features  list of 3 [B, C_l, H/s, W/s], P3/P4/P5 conditioned on the references
          prototypes      list of 3 [N, C_l], per-scale reference prototypes ([] without references)
          ref_index       [B] (None without references)
        """
        if references is None:
            fused = self.neck(self.backbone(query))
            return self._outputs(fused, [], None)
        if ref_index is None:
            if references.shape[0] != query.shape[0]:
                raise ValueError("ref_index is required when references and queries differ in number")
            ref_index = torch.arange(query.shape[0], device=query.device)
        prototypes = self.encode_references(references)
        feats = self.neck(self.backbone(query))
        fused = self.fusion(feats, prototypes, ref_index)
        return self._outputs(fused, prototypes, ref_index)

    def _outputs(self, fused: list[torch.Tensor], prototypes: list[torch.Tensor],
                 ref_index: torch.Tensor | None) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        box_logits, cls_logits = self.head(fused)
        anchors, strides = self.anchors(fused)
        return {
            "box_logits": box_logits,
            "cls_logits": cls_logits,
            "anchors": anchors,
            "strides": strides,
            "fused_features": fused,
            "prototypes": prototypes,
            "ref_index": ref_index,
        }

    def anchors(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(f.shape[2:] for f in feats) + (feats[0].device, feats[0].dtype)
        if key not in self._anchor_cache:
            points, strides = [], []
            for f, s in zip(feats, STRIDES):
                h, w = f.shape[2:]
                ys = torch.arange(h, device=f.device, dtype=torch.float32) + 0.5
                xs = torch.arange(w, device=f.device, dtype=torch.float32) + 0.5
                gy, gx = torch.meshgrid(ys, xs, indexing="ij")
                points.append(torch.stack([gx, gy], -1).view(-1, 2) * s)
                strides.append(torch.full((h * w, 1), float(s), device=f.device))
            self._anchor_cache[key] = (torch.cat(points), torch.cat(strides))
        return self._anchor_cache[key]
