"""Box utilities. Boxes are xyxy in pixels unless a name says otherwise."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, complete_box_iou_loss


def dfl_expectation(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """[..., 4*reg_max] DFL logits -> [..., 4] expected distances (in grid cells)."""
    shape = box_logits.shape[:-1]
    probs = box_logits.view(*shape, 4, reg_max).softmax(-1)
    bins = torch.arange(reg_max, device=box_logits.device, dtype=probs.dtype)
    return probs @ bins


def dist2bbox(dist: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """ltrb distances [..., 4] around anchor points [..., 2] -> xyxy [..., 4] (same units)."""
    lt, rb = dist.chunk(2, -1)
    return torch.cat([anchors - lt, anchors + rb], -1)


def bbox2dist(anchors: torch.Tensor, boxes: torch.Tensor, reg_max: int) -> torch.Tensor:
    """xyxy boxes -> ltrb distances from the anchors, clamped to the DFL range [0, reg_max-1)."""
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat([anchors - x1y1, x2y2 - anchors], -1).clamp_(0, reg_max - 1 - 0.01)


def decode_boxes(box_logits: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Head outputs -> xyxy px. box_logits [B, A, 4*reg_max], anchors [A, 2] px, strides [A, 1]."""
    dist = dfl_expectation(box_logits, reg_max)
    return dist2bbox(dist, anchors / strides) * strides


def ciou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Complete IoU, elementwise with broadcasting: [..., 4] x [..., 4] -> [...]."""
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    return 1.0 - complete_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7)


def iou_elementwise(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Plain IoU, elementwise with broadcasting."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(-1)
    return inter / (area1 + area2 - inter + 1e-9)


@torch.no_grad()
def postprocess(
    outputs: dict, reg_max: int, conf_threshold: float = 0.25, iou_threshold: float = 0.6, max_det: int = 100
) -> list[dict[str, torch.Tensor]]:
    """Model outputs -> per image {"boxes" [n, 4] xyxy px, "scores" [n], "labels" [n]},
    sorted by score, after a confidence threshold and class-wise NMS (torchvision)."""
    boxes = decode_boxes(outputs["box_logits"].float(), outputs["anchors"], outputs["strides"], reg_max)
    scores_all = outputs["cls_logits"].float().sigmoid()
    results = []
    for b in range(boxes.shape[0]):
        scores, labels = scores_all[b].max(-1)
        keep = scores > conf_threshold
        bx, sc, lb = boxes[b][keep], scores[keep], labels[keep]
        if sc.numel() > max_det * 10:
            top = sc.topk(max_det * 10).indices
            bx, sc, lb = bx[top], sc[top], lb[top]
        keep = batched_nms(bx, sc, lb, iou_threshold)[:max_det]
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]})
    return results
