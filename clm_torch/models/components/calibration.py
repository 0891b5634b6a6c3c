"""Post-hoc probability calibration fitted on validation logits (no autograd: works in inference mode)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_platt(logits: torch.Tensor, y: torch.Tensor, *, iters: int = 100, l2: float = 1e-6) -> tuple[float, float]:
    """Platt scaling: find (a, b) minimising the log loss of sigmoid(a · logit + b).

    As Lin, Lin and Weng (2007), "A note on Platt's probabilistic outputs": Platt's smoothed targets
    (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0, so that separable or saturated logits
    cannot drive (a, b) to infinity, and Newton's method with a backtracking line search on the
    log loss, in float64, so that a step never makes the fit worse (a full Newton step from
    saturated logits can overshoot by orders of magnitude).

    Args:
        logits: (n,) uncalibrated logits.
        y: (n,) 0/1 labels.
    Returns:
        (a, b) with a >= 0: a calibration keeps the model's ranking, so logits anti-correlated with
        the labels give (0, the base rate's logit); (1, 0) when there is nothing to fit (one class only).
    """
    x = logits.detach().double().flatten().cpu()
    t = y.detach().double().flatten().cpu()
    if x.numel() < 2 or t.min() == t.max():
        return 1.0, 0.0
    n_pos = float(t.sum())
    n_neg = float(t.numel()) - n_pos
    t = torch.where(t > 0.5, torch.tensor((n_pos + 1) / (n_pos + 2), dtype=torch.float64),
                    torch.tensor(1 / (n_neg + 2), dtype=torch.float64))
    X = torch.stack([x, torch.ones_like(x)], dim=1)
    eye = torch.eye(2, dtype=torch.float64)

    def loss(w: torch.Tensor) -> float:
        z = X @ w  # t·softplus(−z) + (1 − t)·softplus(z), without overflow
        return float((t * F.softplus(-z) + (1 - t) * F.softplus(z)).sum() + 0.5 * l2 * (w @ w))

    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    f = loss(w)
    for _ in range(iters):
        p = torch.sigmoid(X @ w)
        g = X.T @ (p - t) + l2 * w
        h = (X * (p * (1 - p))[:, None]).T @ X + (l2 + 1e-12) * eye
        step = torch.linalg.solve(h, g)
        size = 1.0
        while size >= 1e-10:  # backtracking: halve the step until the loss decreases enough
            w_new = w - size * step
            f_new = loss(w_new)
            if f_new <= f - 1e-4 * size * float(g @ step):
                break
            size /= 2
        else:
            break  # no step decreases the loss: at the minimum to machine precision
        converged = (size * step).abs().max() < 1e-10
        w, f = w_new, f_new
        if converged:
            break
    if not torch.isfinite(w).all():
        return 1.0, 0.0
    if w[0] < 0:  # logits that rank churners lower (a model with no signal yet): a calibration must not
        # reverse the model's ranking, so the best a >= 0 is a = 0, every probability the base rate
        m = float(t.mean())
        return 0.0, float(np.log(m / (1 - m)))
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
