"""Learning-rate schedules as pure functions of the optimizer step, registered by name.

A schedule maps (step, total_steps, base_lr) -> lr.  Being stateless, it resumes exactly from
the step stored in a checkpoint.
"""

from __future__ import annotations

import math

from xraygpt.registry import register


def _warmup(step: int, warmup_steps: int, warmup_lr: float, base_lr: float) -> float:
    return warmup_lr + (base_lr - warmup_lr) * (step + 1) / warmup_steps


@register("lr_schedule", "linear_warmup_cosine")
class LinearWarmupCosine:
    """Linear warm-up from `warmup_lr` to the base LR over `warmup_steps`, then cosine to `min_lr`."""

    def __init__(self, warmup_steps: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0):
        self.warmup_steps = warmup_steps
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr

    def __call__(self, step: int, total_steps: int, base_lr: float) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_lr, base_lr)
        span = max(1, total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


@register("lr_schedule", "constant")
class ConstantWithWarmup:
    """Linear warm-up from `warmup_lr` over `warmup_steps`, then the base LR."""

    def __init__(self, warmup_steps: int = 0, warmup_lr: float = 0.0):
        self.warmup_steps = warmup_steps
        self.warmup_lr = warmup_lr

    def __call__(self, step: int, total_steps: int, base_lr: float) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_lr, base_lr)
        return base_lr
