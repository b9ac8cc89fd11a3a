"""Query augmentation as batched tensor ops on the training device.

The sampler (CPU, in the loader workers) draws every random number -- the letterbox/jitter/
flip matrix and the colour gains, with the same generator calls as the CPU path, so boxes
and batches stay a pure function of (seed, epoch, index) -- and ships the cached frames
unwarped on a padded uint8 canvas. The device then warps them (`F.affine_grid` +
`F.grid_sample`, bilinear, constant border like cv2.warpAffine's) and applies the HSV jitter.
On a GPU this takes the per-image warp and colour work off the CPU side entirely.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD = 114  # the letterbox border value (as YOLO's)


def theta_for(m: np.ndarray, canvas_hw: tuple[int, int], size: int) -> np.ndarray:
    """The affine_grid theta (output -> input, normalised, align_corners=False) of the pixel
    affine `m` (2x3, cached frame px -> output px, cv2's convention: pixel centres at
    integers) for a frame on the top-left of a canvas of `canvas_hw`."""
    h, w = canvas_hw
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    # output normalised u -> output px x = (size * u + size - 1) / 2
    out_from_norm = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])
    # input px x -> normalised u = (2x + 1) / W - 1
    norm_from_in = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    return (norm_from_in @ inv @ out_from_norm)[:2].astype(np.float32)


def warp_batch(canvas: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] canvas, theta [B, 2, 3] -> float [B, 3, size, size] in [0, 1]."""
    x = canvas.float().sub_(PAD)  # sample around the border value: outside the frame is PAD
    grid = F.affine_grid(theta.float(), [x.shape[0], 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.add_(PAD).clamp_(0, 255).div_(255)


def hsv_jitter_batch(img: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """YOLO's colour jitter on a batch: hue x g0 (mod 1), saturation x g1, value x g2, per
    image (gains [B, 3]; 1, 1, 1 leaves an image as it is). img float [B, 3, H, W] in [0, 1]."""
    g = gains.to(img.dtype).view(-1, 3, 1, 1)
    r, gr, b = img.unbind(1)
    v, _ = img.max(1)
    mn, _ = img.min(1)
    c = v - mn
    s = torch.where(v > 0, c / v.clamp_min(1e-8), torch.zeros_like(v))
    cz = c.clamp_min(1e-8)
    h = torch.where(v == r, (gr - b) / cz, torch.where(v == gr, 2 + (b - r) / cz, 4 + (r - gr) / cz))
    h = torch.where(c > 0, (h / 6) % 1.0, torch.zeros_like(h))
    h = (h * g[:, 0]) % 1.0
    s = (s * g[:, 1]).clamp_(0, 1)
    v = (v * g[:, 2]).clamp_(0, 1)
    # HSV -> RGB: channel c = v - v s clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 h) mod 6, n = 5, 3, 1
    n = torch.tensor([5.0, 3.0, 1.0], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    kk = (n + h.unsqueeze(1) * 6) % 6
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * torch.clamp(torch.minimum(kk, 4 - kk), 0, 1)


def queries_on_device(batch: dict, device: torch.device, size: int, non_blocking: bool) -> torch.Tensor:
    """The batch's query images as the model takes them: float [B, 3, size, size] in [0, 1]."""
    canvas = batch["query"].to(device, non_blocking=non_blocking)
    if "query_theta" not in batch:  # warped on the CPU already
        return canvas.float().div_(255)
    img = warp_batch(canvas, batch["query_theta"].to(device, non_blocking=non_blocking), size)
    if bool((batch["query_hsv"] == 1).all()):  # validation, or no augmentation: nothing to jitter
        return img  # (checked on the host copy: no device sync)
    return hsv_jitter_batch(img, batch["query_hsv"].to(device, non_blocking=non_blocking))
