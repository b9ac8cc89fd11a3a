"""The mean of an ROI-aligned feature, as a separable weighted sum (CPE's proposal pooling).

CPE only needs ``roi_align(f, boxes, n, scale, s, aligned=True).mean((2, 3))``: the mean of
bilinear samples on an (n*s) x (n*s) grid inside each box. A bilinear weight is the product
of a row weight and a column weight, and the sample grid is a product of row and column
positions, so that mean is ``sum_yx ay[y] * ax[x] * f[:, y, x]``: two small weight vectors
per box and one matrix product per image. Same numbers as torchvision's kernel (its
sampling rules, border handling included; tested against it), but forward and backward are
matrix products: measured here, torchvision's single-threaded CPU backward took 20 ms for
96 boxes on one 256-channel map, and CPE went from 30 to 8 ms per 160 px smoke step.
"""

from __future__ import annotations

import torch


def _axis_weights(start: torch.Tensor, end: torch.Tensor, size: int, samples: int) -> torch.Tensor:
    """Per box, the mean bilinear weight over `samples` evenly spaced positions in [start, end)
    on an axis of `size` cells: [R] -> [R, size]. torchvision's rules: a position below -1 or
    above `size` contributes nothing; others clamp to the first/last cell. A non-finite
    position (a box from diverged weights) contributes nothing either."""
    r = start.shape[0]
    frac = (torch.arange(samples, device=start.device, dtype=start.dtype) + 0.5) / samples
    pos = start[:, None] + (end - start)[:, None] * frac  # [R, samples]
    inside = (pos >= -1.0) & (pos <= size)  # False for NaN and +-inf
    valid = inside.to(pos.dtype)
    pos = torch.where(inside, pos, torch.zeros_like(pos)).clamp(min=0.0)  # finite indices only
    low = pos.floor().clamp(max=size - 1)
    at_end = low >= size - 1
    high = torch.where(at_end, low, low + 1)
    frac_high = torch.where(at_end, torch.zeros_like(pos), pos - low)
    w = torch.zeros(r, size, device=start.device, dtype=start.dtype)
    w.scatter_add_(1, low.long(), (1 - frac_high) * valid)
    w.scatter_add_(1, high.long(), frac_high * valid)
    return w / samples


def roi_mean(feature: torch.Tensor, boxes: list[torch.Tensor], output_size: int, spatial_scale: float,
             sampling_ratio: int = 1) -> torch.Tensor:
    """``roi_align(feature, boxes, output_size, spatial_scale, sampling_ratio, aligned=True)
    .mean((2, 3))``. feature [B, C, H, W] (any memory format); boxes: per image [n_i, 4] xyxy
    in input px -> [sum n_i, C], rows in the order of `boxes`."""
    if sampling_ratio < 1:
        raise ValueError("roi_mean needs a fixed sampling_ratio >= 1")
    b, c, h, w = feature.shape
    if len(boxes) != b:
        raise ValueError(f"{len(boxes)} box lists for {b} images")
    samples = output_size * sampling_ratio
    counts = [bx.shape[0] for bx in boxes]
    if sum(counts) == 0:
        return feature.new_zeros((0, c))
    xyxy = torch.cat(boxes).to(feature.dtype) * spatial_scale - 0.5  # aligned=True: pixel centres
    ay = _axis_weights(xyxy[:, 1], xyxy[:, 3], h, samples)  # [R, H]
    ax = _axis_weights(xyxy[:, 0], xyxy[:, 2], w, samples)  # [R, W]
    weights = (ay[:, :, None] * ax[:, None, :]).flatten(1)  # [R, H*W]
    # Per image: [n_i, H*W] @ [H*W, C]; for a channels-last map the right operand is the
    # stored layout, no copy.
    return torch.cat([wi @ feature[i].flatten(1).T for i, wi in enumerate(weights.split(counts)) if counts[i]])
