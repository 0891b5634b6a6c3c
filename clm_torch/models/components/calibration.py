"""Post-hoc probability calibration fitted on validation logits (no autograd: works in inference mode)."""

from __future__ import annotations

import torch


def fit_platt(logits: torch.Tensor, y: torch.Tensor, *, iters: int = 50, l2: float = 1e-6) -> tuple[float, float]:
    """Platt scaling: find (a, b) minimising the log loss of sigmoid(a · logit + b).

    Newton's method on the 2-parameter logistic regression, in float64.

    Args:
        logits: (n,) uncalibrated logits.
        y: (n,) 0/1 labels.
    Returns:
        (a, b); (1, 0) when there is nothing to fit (one class only).
    """
    x = logits.detach().double().flatten().cpu()
    t = y.detach().double().flatten().cpu()
    if x.numel() < 2 or t.min() == t.max():
        return 1.0, 0.0
    X = torch.stack([x, torch.ones_like(x)], dim=1)
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(X @ w)
        g = X.T @ (p - t) + l2 * w
        h = (X * (p * (1 - p))[:, None]).T @ X + l2 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(h, g)
        w = w - step
        if step.abs().max() < 1e-10:
            break
    if not torch.isfinite(w).all():
        return 1.0, 0.0
    return float(w[0]), float(w[1])


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, *, iters: int = 50) -> float:
    """Temperature scaling: the T > 0 minimising the log loss of sigmoid(logit / T) (Newton on log T)."""
    x = logits.detach().double().flatten().cpu()
    t = y.detach().double().flatten().cpu()
    if x.numel() < 2 or t.min() == t.max():
        return 1.0
    s = torch.tensor(1.0, dtype=torch.float64)  # s = 1/T
    for _ in range(iters):
        p = torch.sigmoid(s * x)
        g = ((p - t) * x).sum()
        h = (p * (1 - p) * x * x).sum() + 1e-9
        s_new = torch.clamp(s - g / h, 1e-3, 1e3)
        if abs(float(s_new - s)) < 1e-10:
            s = s_new
            break
        s = s_new
    return float(1.0 / s)
