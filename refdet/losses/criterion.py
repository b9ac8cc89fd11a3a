"""RefDetLoss: box (CIoU) + classification (BCE) + DFL + CPE.

Terms are unweighted; the weights come from `LossConfig`; the total is computed once.
Box, class and DFL terms are normalised by the sum of the assigner's target scores
(as YOLOv8 does, without its final multiplication by the batch size), so their scale does
not grow with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refdet.config import LossConfig
from refdet.losses.assigner import TaskAlignedAssigner
from refdet.losses.cpe import CPELoss
from refdet.metrics import LOSS_TERMS
from refdet.ops.boxes import bbox2dist, ciou, dfl_expectation, dist2bbox

TERMS = LOSS_TERMS


@dataclass
class LossOutput:
    """total: weighted sum (0-dim, with grad); terms: unweighted bbox/cls/dfl/cpe (0-dim);
    stats: diagnostics, detached 0-dim tensors: num_fg (matched anchors), num_gt (ground-truth
    boxes), target_scores_sum,
    cpe_positives, cpe_proposals."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]


def dfl_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [n, 4, reg_max], target [n, 4] in [0, reg_max-1) -> [n] (mean over sides)."""
    tl = target.long()
    wl = tl + 1 - target
    ce_l = F.cross_entropy(logits.flatten(0, 1), tl.flatten(), reduction="none").view(tl.shape)
    ce_r = F.cross_entropy(logits.flatten(0, 1), (tl + 1).flatten(), reduction="none").view(tl.shape)
    return (ce_l * wl + ce_r * (1 - wl)).mean(-1)


class RefDetLoss(nn.Module):
    def __init__(self, cfg: LossConfig, reg_max: int, embedder: nn.Module, use_cpe: bool = True):
        super().__init__()
        self.cfg, self.reg_max, self.use_cpe = cfg, reg_max, use_cpe
        self.embedder = embedder  # the model's ProposalEmbedder (its parameters live in the model)
        self.assigner = TaskAlignedAssigner(cfg.assigner_topk, cfg.assigner_alpha, cfg.assigner_beta)
        self.cpe = CPELoss(cfg)

    def weights(self) -> dict[str, float]:
        c = self.cfg
        return {"bbox": c.bbox_weight, "cls": c.cls_weight, "dfl": c.dfl_weight,
                "cpe": c.cpe_weight if self.use_cpe else 0.0}

    def forward(self, outputs: dict, targets: dict[str, torch.Tensor], with_cpe: bool = True) -> LossOutput:
        """targets: boxes [B, M, 4] px, mask [B, M] bool, labels [B, M] long (optional, 0),
        object_ids [N] long (identity of each reference set; for CPE). with_cpe=False: the
        detection terms only (validation's loss)."""
        box_logits = outputs["box_logits"].float()
        cls_logits = outputs["cls_logits"].float()
        anchors, strides = outputs["anchors"], outputs["strides"]
        b, a, _ = box_logits.shape
        gt_boxes, gt_mask = targets["boxes"].float(), targets["mask"].bool()
        gt_labels = targets.get("labels", torch.zeros(gt_mask.shape, dtype=torch.long, device=gt_mask.device))

        dist = dfl_expectation(box_logits, self.reg_max)  # grid units
        pred_boxes_grid = dist2bbox(dist, anchors / strides)
        pred_boxes = pred_boxes_grid * strides  # px
        assign = self.assigner(cls_logits.detach().sigmoid(), pred_boxes.detach(), anchors,
                               gt_labels, gt_boxes, gt_mask)
        score_sum = assign.target_scores.sum().clamp(min=1.0)

        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, assign.target_scores, reduction="sum") / score_sum
        fg = assign.fg_mask
        weight = assign.target_scores.sum(-1)[fg]  # [n_fg]
        loss_bbox = ((1.0 - ciou(pred_boxes[fg], assign.target_boxes[fg])) * weight).sum() / score_sum
        target_dist = bbox2dist((anchors / strides).expand(b, a, 2)[fg], (assign.target_boxes / strides)[fg], self.reg_max)
        loss_dfl = (dfl_loss(box_logits[fg].view(-1, 4, self.reg_max), target_dist) * weight).sum() / score_sum

        zero = box_logits.new_zeros(())
        stats = {"num_fg": fg.sum().detach(), "num_gt": gt_mask.sum().detach(), "target_scores_sum": score_sum.detach(),
                 "cpe_positives": zero.detach(), "cpe_proposals": zero.detach()}
        loss_cpe = zero
        if self.use_cpe and with_cpe:
            scores = cls_logits.detach().sigmoid().amax(-1)
            loss_cpe, cpe_stats = self.cpe(outputs, self.embedder, pred_boxes.detach(), scores,
                                           gt_boxes, gt_mask, targets["object_ids"])
            stats.update({k: v.detach() for k, v in cpe_stats.items()})
        terms = {"bbox": loss_bbox, "cls": loss_cls, "dfl": loss_dfl, "cpe": loss_cpe}
        w = self.weights()
        total = sum(w[k] * terms[k] for k in TERMS)
        return LossOutput(total, terms, stats)


def build_criterion(cfg: LossConfig, reg_max: int, embedder: nn.Module, stage: int) -> RefDetLoss:
    """The loss of a stage: CPE only in stage 2. `embedder` is the model's proposal embedder
    (its parameters train with the model); the caller hands it over."""
    return RefDetLoss(cfg, reg_max, embedder, use_cpe=stage == 2)


__all__ = ["LossOutput", "RefDetLoss", "TERMS", "build_criterion"]
