"""Contrastive proposal encoding (CPE): a supervised contrastive loss over proposal features.

Proposals per query image are its top-scoring predicted boxes (detached) and jittered copies
of its GT box. Each is ROI-aligned from ``fused_features`` (the reference-conditioned P3/P4/P5)
and projected to a unit embedding. A proposal whose IoU with the image's GT box reaches
``cpe_iou_threshold`` is labelled with the identity of the object the references show;
every other proposal is background. The reference prototypes, projected by the same MLP,
join the set labelled with their object's identity, so every positive proposal has at least
one positive partner and gradients reach the reference path.

Anchors are the positive proposals; background embeddings act only as negatives. With no
positive proposal in the batch the loss is exactly 0 and ``stats["cpe_positives"] == 0``
says why; missing features raise, they never read as a zero loss.
"""

from __future__ import annotations

import torch
from torch import nn

from refdet.config import LossConfig
from refdet.ops.boxes import iou_elementwise


def jitter_boxes(boxes: torch.Tensor, n: int, scale: float, img_size: tuple[int, int]) -> torch.Tensor:
    """[M, 4] -> [M*n, 4] boxes with centre shifts and size changes of about `scale`."""
    if boxes.numel() == 0 or n == 0:
        return boxes.new_zeros((0, 4))
    b = boxes.repeat_interleave(n, 0)
    wh = (b[:, 2:] - b[:, :2]).clamp(min=1.0)
    ctr = (b[:, 2:] + b[:, :2]) / 2
    ctr = ctr + (torch.rand_like(ctr) * 2 - 1) * scale * wh
    wh = wh * torch.exp((torch.rand_like(wh) * 2 - 1) * scale)
    return clip_to_image(torch.cat([ctr - wh / 2, ctr + wh / 2], 1), img_size)


def clip_to_image(boxes: torch.Tensor, img_size: tuple[int, int]) -> torch.Tensor:
    """[..., 4] xyxy clamped to an image of (h, w) px."""
    h, w = img_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


class CPELoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(
        self,
        outputs: dict,
        embedder: nn.Module,
        pred_boxes: torch.Tensor,
        pred_scores: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_mask: torch.Tensor,
        object_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred_boxes [B, A, 4] px and pred_scores [B, A] (both detached); gt_boxes [B, M, 4];
        gt_mask [B, M]; object_ids [N] identity of each reference set.
        Returns (loss, stats) with stats cpe_positives and cpe_proposals (0-dim tensors)."""
        if "fused_features" not in outputs or "prototypes" not in outputs:
            raise KeyError("CPE needs 'fused_features' and 'prototypes' in the model outputs")
        fused = outputs["fused_features"]
        ref_index = outputs["ref_index"]
        h, w = fused[0].shape[2] * 8, fused[0].shape[3] * 8
        cfg = self.cfg
        k = min(cfg.cpe_num_proposals, pred_scores.shape[1])
        top = pred_scores.topk(k, dim=1).indices  # [B, k]
        preds = pred_boxes.gather(1, top[..., None].expand(-1, -1, 4))
        # Diverged weights give NaN/inf/huge boxes: keep every proposal finite and inside the
        # image, so its IoU label and pooled feature mean something.
        preds = clip_to_image(torch.nan_to_num(preds, nan=0.0, posinf=0.0, neginf=0.0), (h, w))
        boxes, labels = [], []
        img_labels = object_ids[ref_index]  # [B]
        for b in range(pred_boxes.shape[0]):
            gts = gt_boxes[b][gt_mask[b]]
            props = torch.cat([preds[b], jitter_boxes(gts, cfg.cpe_num_jitter, cfg.cpe_jitter, (h, w))])
            if gts.shape[0]:
                best_iou = iou_elementwise(props[:, None], gts[None]).amax(1)
                lab = torch.where(best_iou >= cfg.cpe_iou_threshold, img_labels[b], -1)
            else:
                lab = torch.full((props.shape[0],), -1, dtype=torch.long, device=props.device)
            boxes.append(props.detach())
            labels.append(lab)
        prop_labels = torch.cat(labels)
        emb = embedder(torch.cat([embedder.pool(fused, boxes), torch.cat(outputs["prototypes"], 1)]))
        all_labels = torch.cat([prop_labels, object_ids])
        loss = supcon(emb, all_labels, anchor_mask=torch.cat([prop_labels >= 0, torch.zeros_like(object_ids, dtype=torch.bool)]),
                      temperature=cfg.cpe_temperature)
        stats = {
            "cpe_positives": (prop_labels >= 0).sum(),
            "cpe_proposals": torch.tensor(prop_labels.numel(), device=prop_labels.device),
        }
        return loss, stats


def supcon(emb: torch.Tensor, labels: torch.Tensor, anchor_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over unit embeddings [P, D].
    Label -1 is background (never a positive). Only rows in anchor_mask that have at least one
    positive partner count; with none, the result is exactly 0."""
    p = emb.shape[0]
    eye = torch.eye(p, dtype=torch.bool, device=emb.device)
    logits = (emb @ emb.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & ~eye
    n_pos = pos.sum(1)
    valid = anchor_mask & (n_pos > 0)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1) / n_pos.clamp(min=1)
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1)
