"""Plain nn.Modules for mixed-type tables: numeric and categorical embeddings, MLPs, ensembles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class PeriodicNumericEmbedding(nn.Module):
    """PLR numeric embeddings (Gorishniy et al. 2022, "On Embeddings for Numerical Features").

    Each numeric feature x_j becomes ReLU(W_j [sin(2π c_j x_j), cos(2π c_j x_j)] + b_j), with
    learned frequencies c_j ~ N(0, sigma). A learned per-feature "missing" token replaces the
    embedding where the value is not observed.

    Shapes: ``x`` (batch, n_num), ``mask`` (batch, n_num) bool → (batch, n_num, d_embed).
    """

    def __init__(self, n_num: int, d_embed: int, n_frequencies: int = 16, sigma: float = 0.1,
                 lite: bool = False) -> None:
        super().__init__()
        self.n_num = n_num
        self.freq = nn.Parameter(torch.randn(n_num, n_frequencies) * sigma)
        self.lite = lite
        if lite:  # one linear layer shared by all features (PLR-lite)
            self.linear = nn.Linear(2 * n_frequencies, d_embed)
        else:
            bound = 1 / math.sqrt(2 * n_frequencies)
            self.weight = nn.Parameter(torch.empty(n_num, 2 * n_frequencies, d_embed).uniform_(-bound, bound))
            self.bias = nn.Parameter(torch.empty(n_num, d_embed).uniform_(-bound, bound))
        self.missing = nn.Parameter(torch.randn(n_num, d_embed) * 0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        v = 2 * math.pi * self.freq[None] * x[..., None]  # (B, F, K)
        v = torch.cat([torch.sin(v), torch.cos(v)], dim=-1)  # (B, F, 2K)
        if self.lite:
            e = self.linear(v)
        else:
            e = torch.einsum("bfk,fkd->bfd", v, self.weight) + self.bias
        e = e.relu_()  # e is this call's own tensor (and ReLU's gradient needs only its output)
        return torch.where(mask[..., None], e, self.missing[None].to(e.dtype))


class CategoricalEmbedding(nn.Module):
    """One embedding table for all categorical columns, with per-column offsets.

    Index 0 of every column is ``<unk>/<missing>`` and has its own learned vector per column.
    Shapes: ``cat`` (batch, n_cat) int64 → (batch, n_cat, d_embed).
    """

    def __init__(self, cardinalities: Sequence[int], d_embed: int) -> None:
        super().__init__()
        card = torch.as_tensor(list(cardinalities), dtype=torch.long)
        self.register_buffer("offsets", torch.cat([torch.zeros(1, dtype=torch.long), card.cumsum(0)[:-1]]),
                             persistent=False)
        self.embed = nn.Embedding(int(card.sum()) if len(card) else 1, d_embed)
        nn.init.normal_(self.embed.weight, std=d_embed ** -0.5)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        return self.embed(cat + self.offsets[None])


class FeatureTokenizer(nn.Module):
    """Numeric + categorical inputs → one flat vector (batch, (n_num + n_cat) · d_embed)."""

    def __init__(self, n_num: int, cat_cardinalities: Sequence[int], d_embed: int, n_frequencies: int = 16,
                 sigma: float = 0.1, plr_lite: bool = False) -> None:
        super().__init__()
        self.n_num, self.n_cat = n_num, len(cat_cardinalities)
        self.num = PeriodicNumericEmbedding(n_num, d_embed, n_frequencies, sigma, lite=plr_lite) if n_num else None
        self.cat = CategoricalEmbedding(cat_cardinalities, d_embed) if self.n_cat else None
        self.out_dim = (self.n_num + self.n_cat) * d_embed

    def forward(self, num: torch.Tensor, num_mask: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.num is not None:
            parts.append(self.num(num, num_mask))
        if self.cat is not None:
            parts.append(self.cat(cat))
        return torch.cat(parts, dim=1).flatten(1)


class EnsembleLinear(nn.Module):
    """k independent linear layers applied in one batched matmul.

    Shapes: (k, batch, d_in) → (k, batch, d_out).
    """

    def __init__(self, k: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(k, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """k independent MLPs (a batched deep ensemble) on a shared input.

    Shapes: ``x`` (batch, d_in) → (k, batch, d_out). With k = 1 this is a plain MLP.
    """

    def __init__(self, d_in: int, hidden: Sequence[int], d_out: int, k: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.k = k
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [EnsembleLinear(k, d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(EnsembleLinear(k, d, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(0).expand(self.k, -1, -1))


class MLP(nn.Module):
    """Linear → activation → dropout blocks, then a linear output. (batch, d_in) → (batch, d_out)."""

    def __init__(self, d_in: int, hidden: Sequence[int], d_out: int, dropout: float = 0.0,
                 activation: type[nn.Module] = nn.ReLU, layer_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [nn.Linear(d, h)]
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers += [activation(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FusedFirstLayer:
    """Inference-time fusion of the categorical embeddings into the first layer of an ensemble head.

    The first layer of :class:`EnsembleMLP` is linear in the tokenizer's output, and the
    categorical part of that output is a table lookup, so each (column, category) adds a fixed
    vector to every member's first pre-activation: ``embedding @ weight_block``. This class
    precomputes those vectors once (the first column's rows also carry the layer's bias), as
    ``table`` (sum of cardinalities, k · d_out). The forward then replaces the
    ``n_cat · d_embed · k · d_out`` multiply-adds per row by one ``embedding_bag`` sum of ``n_cat``
    rows, and the numeric (PLR, non-linear) and extra inputs go through one flat GEMM into all k
    members at once. Exact up to float rounding; it is a snapshot of the weights, for inference only.

    Shapes: ``num`` (B, n_num), ``num_mask`` (B, n_num), ``cat`` (B, n_cat), ``extra`` (B, d_extra)
    or None → the head's output (k, B, d_out_of_head).
    """

    def __init__(self, tokenizer: FeatureTokenizer, head: EnsembleMLP) -> None:
        first = head.net[0]
        k, d_in, h = first.weight.shape
        d = tokenizer.out_dim // max(tokenizer.n_num + tokenizer.n_cat, 1)
        self.tokenizer, self.head, self.k, self.h = tokenizer, head, k, h
        n_num_in, n_cat_in = tokenizer.n_num * d, tokenizer.n_cat * d
        w = first.weight.detach()
        flat = w.permute(1, 0, 2).reshape(d_in, k * h)  # input → all members' pre-activations
        dense = torch.cat([flat[:n_num_in], flat[n_num_in + n_cat_in:]])  # numeric + extra rows
        self.w_dense = dense.contiguous() if dense.shape[0] else None
        self.bias = first.bias.detach().reshape(1, k * h)
        self.table = self.offsets = None
        if tokenizer.cat is not None:
            emb = tokenizer.cat.embed.weight.detach()  # (sum card, d)
            self.offsets = tokenizer.cat.offsets
            bounds = [*self.offsets.tolist(), emb.shape[0]]
            parts = [emb[bounds[j]: bounds[j + 1]] @ flat[n_num_in + j * d: n_num_in + (j + 1) * d]
                     for j in range(tokenizer.n_cat)]
            parts[0] = parts[0] + self.bias  # every row looks up exactly one entry of column 0
            self.table = torch.cat(parts).contiguous()

    @staticmethod
    def table_size(tokenizer: FeatureTokenizer, head: EnsembleMLP) -> int:
        """Floats the fused table would hold (to decide whether fusing is worth the memory)."""
        k, _, h = head.net[0].weight.shape
        n_rows = tokenizer.cat.embed.weight.shape[0] if tokenizer.cat is not None else 0
        return n_rows * k * h

    def __call__(self, num: torch.Tensor, num_mask: torch.Tensor, cat: torch.Tensor,
                 extra: torch.Tensor | None = None) -> torch.Tensor:
        dense = []
        if self.tokenizer.num is not None:
            dense.append(self.tokenizer.num(num, num_mask).flatten(1))
        if extra is not None and extra.shape[1]:
            dense.append(extra)
        if self.table is not None:
            pre = torch.nn.functional.embedding_bag(cat + self.offsets[None], self.table, mode="sum")
        else:
            pre = self.bias.expand(num.shape[0], -1).clone()  # written in place below
        if dense:
            pre = torch.addmm(pre, torch.cat(dense, dim=1) if len(dense) > 1 else dense[0], self.w_dense)
        return self._rest(pre.view(-1, self.k, self.h).transpose(0, 1))  # (k, B, h)

    def _rest(self, x: torch.Tensor) -> torch.Tensor:
        """The head's layers after the first, for inference: the activations are fresh tensors of this
        call, so ReLU works in place; dropout is the identity in eval mode; a member's read-out to one
        output is a multiply and a sum (a batched product with one column runs at a fraction of the
        speed of the other layers' products on CPU)."""
        for layer in self.head.net[1:]:
            if isinstance(layer, nn.ReLU):
                x = x.relu_()
            elif isinstance(layer, nn.Dropout):
                continue
            elif isinstance(layer, EnsembleLinear) and layer.weight.shape[2] == 1:
                x = (x * layer.weight.transpose(1, 2)).sum(-1, keepdim=True) + layer.bias
            else:
                x = layer(x)
        return x
