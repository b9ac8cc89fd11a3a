"""Task-aligned assigner (TOOD / YOLOv8): picks, for every GT box, the top-k anchors by
score^alpha * CIoU^beta among the anchors whose centre lies inside the box."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from refdet.ops.boxes import ciou


@dataclass
class Assignment:
    """target_boxes [B, A, 4] xyxy px; target_scores [B, A, nc] (IoU-aware soft labels);
    fg_mask [B, A] bool; target_gt_idx [B, A] index of the assigned GT box."""

    target_boxes: torch.Tensor
    target_scores: torch.Tensor
    fg_mask: torch.Tensor
    target_gt_idx: torch.Tensor


class TaskAlignedAssigner:
    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps

    @torch.no_grad()
    def __call__(
        self,
        pd_scores: torch.Tensor,
        pd_boxes: torch.Tensor,
        anchors: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> Assignment:
        """pd_scores [B, A, nc] probabilities; pd_boxes [B, A, 4] px; anchors [A, 2] px;
        gt_labels [B, M] long; gt_boxes [B, M, 4] px; gt_mask [B, M] bool (M may be 0)."""
        b, a, nc = pd_scores.shape
        m = gt_boxes.shape[1]
        if m == 0 or not bool(gt_mask.any()):
            return Assignment(
                torch.zeros_like(pd_boxes), torch.zeros_like(pd_scores),
                torch.zeros(b, a, dtype=torch.bool, device=pd_scores.device),
                torch.zeros(b, a, dtype=torch.long, device=pd_scores.device),
            )
        # Anchor centres strictly inside each GT box: [B, M, A].
        lt = anchors[None, None] - gt_boxes[:, :, None, :2]
        rb = gt_boxes[:, :, None, 2:] - anchors[None, None]
        in_gts = torch.cat([lt, rb], -1).amin(-1) > self.eps
        valid = in_gts & gt_mask[:, :, None]

        # Alignment metric: [B, M, A].
        labels = gt_labels.clamp(0, nc - 1)
        scores = pd_scores.gather(2, labels[:, None, :].expand(b, a, m)).transpose(1, 2)
        # torch.where, not a product: padded GT rows are degenerate and their CIoU is NaN.
        overlaps = torch.where(valid, ciou(gt_boxes[:, :, None, :], pd_boxes[:, None, :, :]), 0.0).clamp(min=0)
        align = scores.pow(self.alpha) * overlaps.pow(self.beta) * valid

        # Top-k anchors per GT among the valid ones.
        k = min(self.topk, a)
        topk_idx = align.topk(k, dim=-1).indices
        topk_mask = torch.zeros_like(valid).scatter_(-1, topk_idx, True)
        mask_pos = topk_mask & valid

        # An anchor claimed by several GT boxes goes to the one it overlaps most.
        multi = mask_pos.sum(1) > 1  # [B, A]
        if bool(multi.any()):
            best = overlaps.argmax(1)  # [B, A]
            best_mask = torch.zeros_like(mask_pos).scatter_(1, best[:, None], True)
            mask_pos = torch.where(multi[:, None], best_mask, mask_pos) & valid
        fg_mask = mask_pos.any(1)
        target_gt_idx = mask_pos.float().argmax(1)  # [B, A]

        batch_idx = torch.arange(b, device=gt_boxes.device)[:, None]
        target_boxes = gt_boxes[batch_idx, target_gt_idx]
        target_labels = labels[batch_idx, target_gt_idx]
        target_scores = torch.zeros_like(pd_scores)
        target_scores.scatter_(2, target_labels[..., None], 1.0)
        target_scores = target_scores * fg_mask[..., None]

        # Soft labels: alignment normalised so each GT's best anchor gets that anchor's IoU.
        align = align * mask_pos
        pos_align = align.amax(-1, keepdim=True)
        pos_overlap = (overlaps * mask_pos).amax(-1, keepdim=True)
        norm = (align * pos_overlap / (pos_align + self.eps)).amax(1)  # [B, A]
        target_scores = target_scores * norm[..., None]
        return Assignment(target_boxes, target_scores, fg_mask, target_gt_idx)
