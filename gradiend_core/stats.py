"""Small statistics shared by training, evaluation and comparison."""

from __future__ import annotations

import torch

# An encoding at or beyond ±TERNARY_THRESHOLD counts as that class; in between as neutral.
TERNARY_THRESHOLD = 0.5


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation in float64; 0.0 when either side is constant or has < 2 values."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    denom = xc.norm() * yc.norm()
    return 0.0 if denom == 0 else float((xc @ yc) / denom)


def ternary(values: torch.Tensor) -> torch.Tensor:
    """Map encodings to {-1, 0, +1} with the ±TERNARY_THRESHOLD cut (neutral-aware accuracy)."""
    return torch.where(
        values >= TERNARY_THRESHOLD, 1, torch.where(values <= -TERNARY_THRESHOLD, -1, 0)
    )
