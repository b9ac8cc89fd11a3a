"""Evaluation metrics: the official ST-IoU, AP@0.5 and recall@0.5.

ST-IoU (AeroEyes, per video):
    sum over frames in (GT frames AND predicted frames) of IoU(gt_f, pred_f)
    / |GT frames OR predicted frames|
A predicted frame without GT, or a GT frame without a prediction, adds 1 to the denominator
and 0 to the numerator. One box per frame: the caller passes the top-scoring box above the
confidence threshold (see `top_box`). When a video has neither GT nor predicted frames the
score is defined as 1.0 (nothing to find, nothing falsely found). The dataset score is the
mean over videos. Boxes are xyxy, any one coordinate system per video.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Box = Sequence[float]

# The metric names of DESIGN.md, one place: console, metrics.jsonl, TensorBoard, Tune, the
# space's search.metric and the report all use these.
VAL_METRICS = ("val/st_iou", "val/ap50", "val/recall", "val/loss")  # val/loss: unweighted box + class + DFL
LOSS_TERMS = ("bbox", "cls", "dfl", "cpe")  # the criterion's terms, unweighted
TRAIN_METRICS = ("train/loss", *(f"train/loss_{t}" for t in LOSS_TERMS))
SEARCHABLE_METRICS = VAL_METRICS + TRAIN_METRICS
HEALTH_METRICS = ("health/grad_norm_pre_max", "health/grad_norm_post_max", "health/clip_ratio_max",
                  "health/nonfinite_steps", "health/cpe_zero_frac", "health/mem_rss_gb", "health/mem_rss_growth",
                  "health/mem_cuda_peak_gb", "health/fatal", "health/stop_reason")


def lower_is_better(name: str) -> bool:
    """Losses are minimised; ST-IoU, AP and recall maximised."""
    return name == "val/loss" or name.startswith("train/loss")


def box_iou(a: Box, b: Box) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def st_iou(gt: Mapping[int, Box], pred: Mapping[int, Box]) -> float:
    """gt, pred: frame -> box (at most one box per frame)."""
    union = set(gt) | set(pred)
    if not union:
        return 1.0
    inter = sum(box_iou(gt[f], pred[f]) for f in set(gt) & set(pred))
    return inter / len(union)


def mean_st_iou(videos: Iterable[tuple[Mapping[int, Box], Mapping[int, Box]]]) -> float:
    scores = [st_iou(g, p) for g, p in videos]
    return float(np.mean(scores)) if scores else 0.0


def top_box(boxes: Sequence[Box], scores: Sequence[float], conf_threshold: float) -> Box | None:
    """The highest-scoring box at or above the threshold, or None."""
    best, best_s = None, -1.0
    for b, s in zip(boxes, scores):
        if s >= conf_threshold and s > best_s:
            best, best_s = b, s
    return best


def ap50(predictions: Sequence[tuple[Sequence[Box], Sequence[float]]], ground_truth: Sequence[Sequence[Box]],
         iou_threshold: float = 0.5) -> float:
    """Average precision at IoU 0.5 over a set of images (all-point interpolation).

    predictions[i] = (boxes, scores) of image i; ground_truth[i] = GT boxes of image i.
    Predictions are ranked across images by score, but each is matched only to the GT boxes
    of its own image (greedy, each GT box matched at most once). No GT at all: 0.0.
    """
    n_gt = sum(len(g) for g in ground_truth)
    if n_gt == 0:
        return 0.0
    flat = [(s, i, b) for i, (boxes, scores) in enumerate(predictions) for b, s in zip(boxes, scores)]
    flat.sort(key=lambda t: -t[0])
    used = [np.zeros(len(g), bool) for g in ground_truth]
    tp = np.zeros(len(flat))
    for k, (_, i, b) in enumerate(flat):
        gts = ground_truth[i]
        if not len(gts):
            continue
        ious = [box_iou(b, g) for g in gts]
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold and not used[i][j]:
            used[i][j] = True
            tp[k] = 1
    if not len(flat):
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(flat) + 1)
    # All-point interpolation: precision envelope, area under the recall steps.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def recall50(predictions: Sequence[Sequence[Box]], ground_truth: Sequence[Sequence[Box]],
             iou_threshold: float = 0.5) -> float:
    """Share of GT boxes matched (IoU >= 0.5) by a prediction of the same image. No GT: 0.0."""
    n_gt = hit = 0
    for preds, gts in zip(predictions, ground_truth):
        for g in gts:
            n_gt += 1
            hit += any(box_iou(p, g) >= iou_threshold for p in preds)
    return hit / n_gt if n_gt else 0.0
