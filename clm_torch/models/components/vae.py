"""Plain nn.Modules of the InfoGapVAE: a masked feature embedding, a Gaussian encoder, a mixed-type
decoder with one likelihood head per feature type, and the ELBO pieces.

Shapes use ``B`` rows, ``n_num`` numeric and ``n_cat`` categorical columns (the last ``n_binary``
of them binary), ``F = n_num + n_cat`` and latent size ``L``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clm_torch.models.components.tabular import MLP
from clm_torch.models.components.keyed import pool_shape, pooled

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}
NUMERIC_LIKELIHOODS = ("gaussian", "student_t")
LOG_2PI = math.log(2 * math.pi)


def activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MaskedFeatureEmbedding(nn.Module):
    """Per-feature embeddings with a learned "missing" token per feature.

    * numeric j, observed: ``x_j · w_j + b_j`` (a linear embedding keeps the value exact, which
      the decoder needs for near-deterministic relations such as total ≈ tenure × monthly);
      unobserved: the learned token ``m_j``;
    * categorical j: one embedding row per vocabulary entry; index 0 (``<unk>/<missing>``) is
      that column's learned missing token. Unobserved cells must arrive as index 0.

    Shapes: ``num`` (B, n_num) float, ``num_mask`` (B, n_num) bool, ``cat`` (B, n_cat) long →
    (B, F, d_embed).
    """

    def __init__(self, n_num: int, cat_cardinalities: Sequence[int], d_embed: int) -> None:
        super().__init__()
        self.n_num, self.n_cat = n_num, len(cat_cardinalities)
        self.num_weight = nn.Parameter(torch.randn(n_num, d_embed) / math.sqrt(d_embed))
        self.num_bias = nn.Parameter(torch.zeros(n_num, d_embed))
        self.num_missing = nn.Parameter(torch.randn(n_num, d_embed) * 0.02)
        card = torch.as_tensor([int(c) for c in cat_cardinalities], dtype=torch.long)
        self.register_buffer("cat_offsets", torch.cat([torch.zeros(1, dtype=torch.long), card.cumsum(0)[:-1]]),
                             persistent=False)
        self.cat_embed = nn.Embedding(max(int(card.sum()), 1), d_embed)
        nn.init.normal_(self.cat_embed.weight, std=d_embed ** -0.5)

    def forward(self, num: torch.Tensor, num_mask: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.n_num:
            e = num[..., None] * self.num_weight + self.num_bias
            parts.append(torch.where(num_mask[..., None], e, self.num_missing.to(e.dtype)))
        if self.n_cat:
            parts.append(self.cat_embed(cat + self.cat_offsets))
        return torch.cat(parts, dim=1)


class GaussianEncoder(nn.Module):
    """q(z | x_obs): masked embeddings, flattened, → MLP → (mu, logvar), each (B, L).

    The first linear layer on the concatenated embeddings is ``Σ_j W_j e_j`` — a sum over the
    features of per-feature maps, i.e. EDDI's permutation-invariant set encoder with a
    feature-specific ``h`` in which a missing feature contributes its learned token instead of
    nothing — so this is at least as expressive as the PNP encoder for a fixed set of columns.
    """

    def __init__(self, n_num: int, cat_cardinalities: Sequence[int], d_embed: int, hidden: Sequence[int],
                 latent_dim: int, dropout: float = 0.0, act: str = "silu") -> None:
        super().__init__()
        self.embed = MaskedFeatureEmbedding(n_num, cat_cardinalities, d_embed)
        n_features = n_num + len(cat_cardinalities)
        self.net = MLP(n_features * d_embed, list(hidden), 2 * latent_dim, dropout=dropout, activation=activation(act))
        self.latent_dim = latent_dim

    def forward(self, num: torch.Tensor, num_mask: torch.Tensor, cat: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(num, num_mask, cat).flatten(1)
        mu, logvar = self.net(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)


class MixedDecoder(nn.Module):
    """p(x | z): an MLP trunk and one likelihood head per feature type.

    * numeric: location and log-scale per column (heteroscedastic Gaussian or Student-t);
    * categorical: logits over the known classes (vocabulary indices 1..C-1; ``<unk>`` is
      never predicted);
    * binary (categoricals with exactly two known values): one Bernoulli logit for "index 2".

    Output dict: ``num_loc`` / ``num_log_scale`` (..., n_num), ``cat_logits`` a list with one
    (..., C_j - 1) tensor per softmax column, ``bin_logits`` (..., n_bin).
    """

    def __init__(self, latent_dim: int, n_num: int, cat_cardinalities: Sequence[int], n_binary: int,
                 hidden: Sequence[int], dropout: float = 0.0, act: str = "silu", min_log_scale: float = -4.0) -> None:
        super().__init__()
        card = [int(c) for c in cat_cardinalities]
        n_cat = len(card)
        # binary head only where the column really has two known values; else a softmax head
        self.bin_cols = [j for j in range(n_cat - n_binary, n_cat) if card[j] == 3]
        self.soft_cols = [j for j in range(n_cat) if j not in self.bin_cols and card[j] > 1]
        self.soft_sizes = [card[j] - 1 for j in self.soft_cols]
        self.n_num = n_num
        d_out = 2 * n_num + sum(self.soft_sizes) + len(self.bin_cols)
        d_trunk = list(hidden)[-1] if hidden else latent_dim
        self.trunk = MLP(latent_dim, list(hidden)[:-1], d_trunk, dropout=dropout, activation=activation(act)) \
            if hidden else nn.Identity()
        self.act = activation(act)() if hidden else nn.Identity()
        self.out = nn.Linear(d_trunk, max(d_out, 1))
        self.min_log_scale = float(min_log_scale)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        h = self.out(self.act(self.trunk(z)))
        i = 0
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        out["num_loc"] = h[..., i: i + self.n_num]
        i += self.n_num
        # soft floor on the scale: the likelihood cannot become a spike on one value
        out["num_log_scale"] = self.min_log_scale + F.softplus(h[..., i: i + self.n_num] - self.min_log_scale)
        i += self.n_num
        logits = []
        for s in self.soft_sizes:
            logits.append(h[..., i: i + s])
            i += s
        out["cat_logits"] = logits
        out["bin_logits"] = h[..., i: i + len(self.bin_cols)]
        return out


# ----------------------------------------------------------------------------- likelihoods


def numeric_nll(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, likelihood: str = "gaussian",
                df: float = 4.0) -> torch.Tensor:
    """Elementwise negative log density of ``x`` under N(loc, e^log_scale) or Student-t(df, loc, e^log_scale)."""
    r = (x - loc) * torch.exp(-log_scale)
    if likelihood == "gaussian":
        return 0.5 * LOG_2PI + log_scale + 0.5 * r * r
    if likelihood == "student_t":
        const = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        return -const + log_scale + (df + 1) / 2 * torch.log1p(r * r / df)
    raise ValueError(f"unknown numeric likelihood {likelihood!r}; use one of {NUMERIC_LIKELIHOODS}")


def numeric_sample(loc: torch.Tensor, log_scale: torch.Tensor, likelihood: str = "gaussian", df: float = 4.0,
                   generator: torch.Generator | None = None, *, slots: torch.Tensor | None = None) -> torch.Tensor:
    """One draw from each numeric predictive. ``slots`` (B,): for (S, B, n) parameters, row b's standard
    draws are slot slots[b] of a pool drawn from ``generator`` (``components/keyed.py``), so they do not
    depend on the other rows (inference); otherwise fresh draws. With a ``generator``, the Student-t's
    chi-square draws are seeded from it too."""
    shape = pool_shape(tuple(loc.shape)) if slots is not None else loc.shape
    eps = torch.randn(shape, generator=generator, device=loc.device, dtype=loc.dtype)
    if likelihood == "student_t":
        if generator is None:
            chi2 = 2 * torch._standard_gamma(torch.full(shape, df / 2, device=loc.device, dtype=loc.dtype))
        else:  # torch's gamma sampler takes no generator
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            chi2 = torch.as_tensor(np.random.default_rng(seed).chisquare(df, size=tuple(shape)), device=loc.device,
                                   dtype=loc.dtype)
        eps = eps * torch.sqrt(df / chi2.clamp_min(1e-6))
    if slots is not None:
        eps = pooled(eps, slots)
    return loc + torch.exp(log_scale) * eps


def numeric_variance(log_scale: torch.Tensor, likelihood: str = "gaussian", df: float = 4.0) -> torch.Tensor:
    var = torch.exp(2 * log_scale)
    return var * (df / (df - 2)) if likelihood == "student_t" and df > 2 else var


def numeric_entropy(log_scale: torch.Tensor, likelihood: str = "gaussian", df: float = 4.0) -> torch.Tensor:
    """Differential entropy (nats) of each numeric predictive, in encoded (standardised) units."""
    if likelihood == "gaussian":
        return 0.5 * (1 + LOG_2PI) + log_scale
    h = ((df + 1) / 2 * (torch.digamma(torch.tensor((df + 1) / 2)) - torch.digamma(torch.tensor(df / 2)))
         + 0.5 * math.log(df) + math.lgamma(0.5) + math.lgamma(df / 2) - math.lgamma((df + 1) / 2))
    return log_scale + float(h)


def cell_nll(out: dict[str, torch.Tensor | list[torch.Tensor]], num: torch.Tensor, cat: torch.Tensor,
             decoder: MixedDecoder, likelihood: str = "gaussian", df: float = 4.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell negative log-likelihoods of the data under the decoder output.

    Args:
        out: decoder output for a batch (leading dims ``...`` = e.g. (S, B) or (B,)).
        num: (..., n_num) encoded numerics; cat: (..., n_cat) vocabulary indices.

    Returns:
        ``(nll_num (..., n_num), nll_cat (..., n_cat))``. Categorical cells with index 0 (unknown)
        and columns without a head get 0 — the caller masks unobserved cells anyway.
    """
    nll_num = numeric_nll(num, out["num_loc"], out["num_log_scale"], likelihood, df)
    nll_cat = torch.zeros(cat.shape, dtype=nll_num.dtype, device=nll_num.device)
    for j, logits in zip(decoder.soft_cols, out["cat_logits"]):
        t = (cat[..., j] - 1).clamp_min(0)
        nll_cat[..., j] = F.cross_entropy(logits.flatten(0, -2), t.flatten(), reduction="none").view(t.shape)
    if decoder.bin_cols:
        idx = torch.as_tensor(decoder.bin_cols, device=cat.device)
        t = (cat.index_select(-1, idx) == 2).to(nll_num.dtype)
        nll_cat[..., decoder.bin_cols] = F.binary_cross_entropy_with_logits(out["bin_logits"], t, reduction="none")
    return nll_num, nll_cat


def own_cell_nll(out: dict[str, torch.Tensor | list[torch.Tensor]], num: torch.Tensor, cat: torch.Tensor,
                 decoder: MixedDecoder, likelihood: str = "gaussian", df: float = 4.0) -> torch.Tensor:
    """:func:`cell_nll` of each copy's own feature only, for a stack of F = n_num + n_cat copies of a batch.

    ``out``: decoder output (S, F·B, ·) for the stack, copy j (rows j·B … (j+1)·B − 1) having feature j
    hidden; ``num`` (B, n_num), ``cat`` (B, n_cat): the batch itself. Returns (S, B, F): the NLL of
    feature j under copy j's output, i.e. the diagonal of :func:`cell_nll`'s (S, F, B, F) without the
    other F − 1 cells of every row (0 where :func:`cell_nll` gives 0).
    """
    n_num, n_cat = num.shape[-1], cat.shape[-1]
    F_, B = n_num + n_cat, num.shape[0]
    S = out["num_loc"].shape[0]
    res = out["num_loc"].new_zeros(S, B, F_)
    if n_num:
        loc = out["num_loc"].unflatten(1, (F_, B))[:, :n_num].diagonal(dim1=1, dim2=3)  # (S, B, n_num)
        log_scale = out["num_log_scale"].unflatten(1, (F_, B))[:, :n_num].diagonal(dim1=1, dim2=3)
        res[..., :n_num] = numeric_nll(num.to(loc.dtype), loc, log_scale, likelihood, df)
    for j, logits in zip(decoder.soft_cols, out["cat_logits"]):
        f = n_num + j
        t = (cat[:, j] - 1).clamp_min(0).expand(S, B)
        res[..., f] = F.cross_entropy(logits[:, f * B: (f + 1) * B].flatten(0, 1), t.flatten(),
                                      reduction="none").view(S, B)
    for k, j in enumerate(decoder.bin_cols):
        f = n_num + j
        t = (cat[:, j] == 2).to(res.dtype).expand(S, B)
        res[..., f] = F.binary_cross_entropy_with_logits(out["bin_logits"][:, f * B: (f + 1) * B, k], t,
                                                         reduction="none")
    return res


def category_probs(out: dict[str, torch.Tensor | list[torch.Tensor]], decoder: MixedDecoder, n_cat: int,
                   max_card: int) -> torch.Tensor:
    """Class probabilities (..., n_cat, max_card) over vocabulary indices (index 0 gets 0)."""
    lead = out["num_loc"].shape[:-1]
    p = out["num_loc"].new_zeros(*lead, n_cat, max_card)
    for j, logits in zip(decoder.soft_cols, out["cat_logits"]):
        p[..., j, 1: 1 + logits.shape[-1]] = torch.softmax(logits, dim=-1)
    for k, j in enumerate(decoder.bin_cols):
        q = torch.sigmoid(out["bin_logits"][..., k])
        p[..., j, 1] = 1 - q
        p[..., j, 2] = q
    return p


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, mu0: torch.Tensor | None = None,
                logvar0: torch.Tensor | None = None) -> torch.Tensor:
    """Per-dimension KL(N(mu, e^logvar) || N(mu0, e^logvar0)) (standard normal by default), shape of ``mu``."""
    if mu0 is None:
        return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar)
    return 0.5 * (logvar0 - logvar + (torch.exp(logvar) + (mu - mu0) ** 2) * torch.exp(-logvar0) - 1.0)


def free_bits_kl(kl_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Batch-averaged KL per dimension, each floored at ``free_bits`` nats (Kingma et al. 2016).

    ``kl_dim`` (B, L) → scalar Σ_d max(free_bits, mean_b kl[b, d]). The floor stops the optimiser
    from pushing a dimension's KL (and its information) all the way to zero.
    """
    per_dim = kl_dim.mean(0)
    if free_bits > 0:
        per_dim = torch.clamp(per_dim, min=free_bits)
    return per_dim.sum()


class ImputationScore(nn.Module):
    """Running imputation error on artificially hidden cells, in encoded units.

    ``update`` takes point predictions and the hidden masks of a batch; ``compute`` returns
    ``(rmse, acc)``: the RMSE of the numeric predictions (standardised units, so ≈ NRMSE when no
    log transform is used) averaged over numeric columns, and the accuracy averaged over
    categorical columns (columns without hidden cells are skipped; NaN when there are none).
    Sums are plain buffers; under DDP the caller sums them over the ranks before ``compute``.
    """

    def __init__(self, n_num: int, n_cat: int) -> None:
        super().__init__()
        self.register_buffer("sq_err", torch.zeros(n_num, dtype=torch.float64), persistent=False)
        self.register_buffer("n_num", torch.zeros(n_num, dtype=torch.float64), persistent=False)
        self.register_buffer("correct", torch.zeros(n_cat, dtype=torch.float64), persistent=False)
        self.register_buffer("n_cat", torch.zeros(n_cat, dtype=torch.float64), persistent=False)

    def reset(self) -> None:
        for b in (self.sq_err, self.n_num, self.correct, self.n_cat):
            b.zero_()

    @torch.no_grad()
    def update(self, num_pred: torch.Tensor, num: torch.Tensor, num_hidden: torch.Tensor, cat_pred: torch.Tensor,
               cat: torch.Tensor, cat_hidden: torch.Tensor) -> None:
        h = num_hidden.double()
        self.sq_err += (((num_pred.double() - num.double()) ** 2) * h).sum(0)
        self.n_num += h.sum(0)
        hc = cat_hidden.double()
        self.correct += ((cat_pred == cat).double() * hc).sum(0)
        self.n_cat += hc.sum(0)

    def compute(self) -> tuple[float, float]:
        m = self.n_num > 0
        rmse = float(torch.sqrt(self.sq_err[m] / self.n_num[m]).mean()) if m.any() else float("nan")
        c = self.n_cat > 0
        acc = float((self.correct[c] / self.n_cat[c]).mean()) if c.any() else float("nan")
        return rmse, acc
