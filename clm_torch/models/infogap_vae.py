"""InfoGapVAE: a VAE that measures and closes the information gap in customer data.

The model learns what a customer is from what is known about them (a partial VAE, Ma et al.
2019, "EDDI"), fills in what is not known, and says where the gap is and how large it is.

Model
-----
* **Input**: the encoded batch of :class:`~clm_torch.data.encoding.FeatureEncoder` (``num``,
  ``num_mask``, ``cat``, ``cat_mask``). NaN numerics, NaN / ``<missing>`` / unseen categories are
  unobserved; an imputed value is never fed back as observed.
* **Encoder** q(z | x_obs): per-feature embeddings with a learned "missing" token per feature
  (numerics ``x·w_j + b_j``, categoricals a vocabulary row, index 0 being that column's missing
  token), concatenated and passed through an MLP to (mu, logvar). Why not EDDI's
  permutation-invariant set encoder: our columns are a fixed set, and the first linear layer on
  the concatenation, ``Σ_j W_j e_j``, *is* a set encoder with a feature-specific map in which a
  missing feature contributes its learned token instead of nothing — equally pattern-agnostic,
  and a linear value embedding keeps numeric values exact, which near-deterministic relations
  such as Telco's total ≈ tenure × monthly need.
* **Decoder** p(x | z): an MLP trunk, then heteroscedastic Gaussian (or Student-t, for heavy
  tails) heads for numerics — in the encoder's space, i.e. after its log1p of skewed
  non-negative columns, so money and counts get a log-normal-like likelihood — a softmax per
  categorical and a Bernoulli per binary column (two known values).
* **Objective**: the masked ELBO. Reconstruction counts only observed cells. During training an
  extra fraction of every row's observed cells, drawn per row from ``U[hide_rate_min,
  hide_rate_max]``, is hidden from the encoder but still reconstructed, so imputation is what the
  model learns. The KL weight is ``beta`` after a linear warm-up over ``kl_warmup_epochs``, and
  each latent dimension's batch-mean KL is floored at ``free_bits`` nats (against collapse).

Monitor
-------
``val/loss`` = the negative masked ELBO (β = 1, no free bits) on the validation split, where a
fixed, seeded ``val_hide_rate`` of each row's observed cells is hidden from the encoder but still
scored. Any q gives a valid bound, so this is still a negative ELBO of the observed data; the
hidden part makes it track imputation quality too. ``val/impute_nrmse`` and ``val/impute_acc``
report the point imputations of those hidden cells.

API on raw DataFrames (all chunked; all work on ``InfoGapVAE.load_from_checkpoint(path)``):
:meth:`encode`, :meth:`impute`, :meth:`information_gap`, :meth:`next_best_question`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.schema import SchemaError, missing_cells, to_numeric_strict, yes_no_side
from clm_torch.models.base import CLMModule
from clm_torch.models.components.keyed import pool_shape, pooled, row_slots
from clm_torch.models.components.vae import (
    NUMERIC_LIKELIHOODS,
    GaussianEncoder,
    ImputationScore,
    MixedDecoder,
    category_probs,
    cell_nll,
    free_bits_kl,
    gaussian_kl,
    numeric_entropy,
    numeric_sample,
    numeric_variance,
    own_cell_nll,
)
from clm_torch.utils.privacy import ID_MODES, id_labels
from clm_torch.utils.progress import chunks

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]
_FEATURE_KEYS = ("num", "num_mask", "cat", "cat_mask")
_FEATURE_INFO_ROWS = 4096  # validation rows per epoch that measure the completeness weights


def _new_acc() -> dict[str, Any]:
    """An evaluation epoch's accumulators (see ``InfoGapVAE._eval_step``)."""
    return {"mu": [], "mu_sum": 0, "mu_sq": 0, "n": 0, "fi_sum": 0, "fi_n": 0, "rows": []}


def _observed_only(batch: Mapping[str, torch.Tensor], num_mask: torch.Tensor, cat_mask: torch.Tensor) -> Batch:
    """The batch with everything outside the masks blanked (numerics 0, categories index 0)."""
    return {"num": torch.where(num_mask, batch["num"], torch.zeros_like(batch["num"])), "num_mask": num_mask,
            "cat": torch.where(cat_mask, batch["cat"], torch.zeros_like(batch["cat"])), "cat_mask": cat_mask}


def _logmeanexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


class InfoGapVAE(CLMModule):
    """Partial VAE for mixed-type customer tables with any pattern of missing cells.

    Args:
        n_num, cat_cardinalities, n_binary: input sizes (from the DataModule / encoder).
        pos_rate: accepted (and ignored) so the model can be built from a supervised DataModule.
        latent_dim: size of the Gaussian latent z.
        d_embed: embedding size per feature in the encoder.
        encoder_hidden, decoder_hidden: hidden layer sizes of the encoder and decoder MLPs.
        activation: ``silu`` | ``relu`` | ``gelu`` | ``tanh``.
        dropout: dropout in both MLPs.
        numeric_likelihood: ``gaussian`` or ``student_t`` (heavy-tailed, ``student_df`` degrees).
        student_df: degrees of freedom of the Student-t likelihood.
        min_log_scale: soft floor of the numeric log-scale (encoded units).
        nll_balance: β-NLL exponent (Seitzer et al. 2022) of the training loss: each numeric
            cell's NLL is weighted by stop_grad(σ^(2·nll_balance)). 0 = the plain likelihood,
            whose mean-gradient grows as 1/σ² and lets a few precisely copied numerics drown the
            categorical terms; 0.5 tempers that. Logged NLL terms are always unweighted.
        beta: KL weight after warm-up.
        kl_warmup_epochs: epochs over which the KL weight rises linearly from 0 to ``beta``.
        free_bits: floor (nats) on each latent dimension's batch-mean KL in the training loss
            (standard normal prior only).
        prior_components: 0 = the standard normal prior N(0, I). K >= 2 = a learned mixture of K
            diagonal Gaussians (VaDE, Jiang et al. 2017): the latent is shaped into K clusters and
            :meth:`segments` assigns each customer to one. The mixture is initialised by k-means
            on the training posteriors at the end of the KL warm-up (until then the prior is
            N(0, I)); its KL term is the closed-form bound −H[q] − log Σ_k π_k exp E_q[log N_k(z)].
        hide_rate_min, hide_rate_max: range of the per-row rate at which observed cells are hidden
            from the encoder during training (they are still reconstructed).
        single_hide_prob: share of training rows that instead hide exactly one observed cell
            (trains the leave-one-out conditionals behind :meth:`information_gap`).
        hidden_weight: weight of the hidden cells' NLL in the training loss relative to the cells
            the encoder saw (1 = the plain masked ELBO; > 1 stresses imputation over autoencoding).
        val_hide_rate: fixed rate of hidden observed cells in validation/test (seeded per batch).
        n_samples: latent samples used by :meth:`impute` and the other API methods by default.
        importance_impute: weight those samples by p(x_obs | z) p(z) / q(z | x_obs) in
            :meth:`impute` (see :meth:`impute_batch`).
        lr, weight_decay, scheduler: optimiser (AdamW; ``none`` | ``cosine``).
        nan_policy: ``raise`` or ``skip`` on a non-finite training loss.
        projector_ids: customer ids in TensorBoard's projector metadata: ``hashed`` (salted
            SHA-256, the default), ``raw`` (opt in) or ``none`` (see :mod:`clm_torch.utils.privacy`).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        n_num: int,
        cat_cardinalities: Sequence[int],
        n_binary: int = 0,
        pos_rate: float | None = None,
        latent_dim: int = 16,
        d_embed: int = 16,
        encoder_hidden: Sequence[int] = (256, 256),
        decoder_hidden: Sequence[int] = (256, 256),
        activation: str = "silu",
        dropout: float = 0.0,
        numeric_likelihood: str = "gaussian",
        student_df: float = 4.0,
        min_log_scale: float = -4.0,
        nll_balance: float = 0.0,
        beta: float = 1.0,
        kl_warmup_epochs: int = 10,
        free_bits: float = 0.05,
        prior_components: int = 0,
        hide_rate_min: float = 0.0,
        hide_rate_max: float = 0.5,
        single_hide_prob: float = 0.0,
        hidden_weight: float = 1.0,
        val_hide_rate: float = 0.25,
        n_samples: int = 16,
        importance_impute: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        nan_policy: str = "raise",
        projector_ids: str = "hashed",
    ) -> None:
        super().__init__()
        if projector_ids not in ID_MODES:
            raise ValueError(f"model.projector_ids must be one of {ID_MODES}, not {projector_ids!r}")
        if numeric_likelihood not in NUMERIC_LIKELIHOODS:
            raise ValueError(f"model.numeric_likelihood must be one of {NUMERIC_LIKELIHOODS}, "
                             f"not {numeric_likelihood!r}")
        if not 0.0 <= hide_rate_min <= hide_rate_max < 1.0:
            raise ValueError(f"need 0 <= hide_rate_min <= hide_rate_max < 1, got {hide_rate_min}, {hide_rate_max}")
        if n_num + len(cat_cardinalities) == 0:
            raise ValueError("the VAE needs at least one feature column")
        if int(prior_components) == 1 or int(prior_components) < 0:
            raise ValueError(f"model.prior_components must be 0 (N(0, I)) or >= 2, got {prior_components}")
        self.save_hyperparameters()
        self.n_num, self.n_cat = int(n_num), len(cat_cardinalities)
        self.cardinalities = [int(c) for c in cat_cardinalities]
        self.max_card = max(self.cardinalities, default=1)
        self.vae_encoder = GaussianEncoder(n_num, self.cardinalities, d_embed, encoder_hidden, latent_dim, dropout,
                                           activation)
        self.decoder = MixedDecoder(latent_dim, n_num, self.cardinalities, n_binary, decoder_hidden, dropout,
                                    activation, min_log_scale)
        self.n_components = int(prior_components)
        if self.n_components:  # mixture prior; N(0, I) until prior_ready (set by the k-means initialisation)
            self.prior_logits = torch.nn.Parameter(torch.zeros(self.n_components))
            self.prior_mu = torch.nn.Parameter(torch.zeros(self.n_components, latent_dim))
            self.prior_logvar = torch.nn.Parameter(torch.zeros(self.n_components, latent_dim))
            self.register_buffer("prior_ready", torch.tensor(False))
        # the buffer is the saved truth; this Python copy keeps the training step free of host syncs
        self._prior_on = False
        self.register_load_state_dict_post_hook(InfoGapVAE._sync_prior_flag)
        # completeness weights: what each feature tells about z (nats; see _feature_info_sums)
        self.register_buffer("feature_info", torch.full((self.n_num + self.n_cat,), float("nan")))
        self.register_load_state_dict_pre_hook(InfoGapVAE._upgrade_state)
        self.scores = torch.nn.ModuleDict({s: ImputationScore(self.n_num, self.n_cat) for s in ("val", "test")})
        self._acc: dict[str, Any] = {}
        self.encoder: FeatureEncoder | None = None

    def _on_preprocessing(self) -> None:
        self.encoder = FeatureEncoder.from_state_dict(self.preprocessing["encoder"])
        if self.encoder.n_num != self.n_num or self.encoder.cardinalities != self.cardinalities:
            raise SchemaError(f"the preprocessing does not fit the model: encoder has n_num={self.encoder.n_num}, "
                              f"cardinalities={self.encoder.cardinalities}; the model was built for "
                              f"n_num={self.n_num}, cardinalities={self.cardinalities}")

    # ------------------------------------------------------------------ core
    @property
    def _lik(self) -> tuple[str, float]:
        return self.hparams.numeric_likelihood, float(self.hparams.student_df)

    def _encode(self, b: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder on an already blanked batch; a row with nothing observed gets the prior N(0, I)
        exactly (the optimal q without data), whatever the network would extrapolate."""
        mu, logvar = self.vae_encoder(b["num"].float(), b["num_mask"], b["cat"])
        empty = ~(b["num_mask"].any(1) | b["cat_mask"].any(1))
        if empty.any():
            mu = torch.where(empty[:, None], torch.zeros_like(mu), mu)
            logvar = torch.where(empty[:, None], torch.zeros_like(logvar), logvar)
        return mu, logvar

    def posterior(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | observed cells of ``batch``): ``(mu, logvar)``, each (B, L)."""
        return self._encode(_observed_only(batch, batch["num_mask"], batch["cat_mask"]))

    def decode(self, z: torch.Tensor) -> dict[str, Any]:
        """p(x | z) parameters for z (..., L); see :class:`MixedDecoder`."""
        return self.decoder(z)

    # ------------------------------------------------------------------ prior
    @property
    def mixture_prior(self) -> bool:
        """True once the learned mixture prior is initialised and in use."""
        return self._prior_on

    @staticmethod
    def _upgrade_state(module: torch.nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        """A checkpoint from before ``feature_info`` (its ``ref_info`` measured the posterior's width,
        which does not grow with the cells observed) loads with the weights unknown: completeness is
        then measured on the frame being scored."""
        state_dict.pop(prefix + "ref_info", None)
        state_dict.setdefault(prefix + "feature_info", torch.full_like(module.feature_info, float("nan")))

    @staticmethod
    def _sync_prior_flag(module: torch.nn.Module, incompatible_keys: Any) -> None:
        module._prior_on = module.n_components > 0 and bool(module.prior_ready)

    def _component_scores(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """(B, K): log π_k + E_{q(z)}[log N(z; μ_k, σ_k²)] for q = N(mu, e^logvar)."""
        lv = self.prior_logvar
        e = -0.5 * (math.log(2 * math.pi) + lv[None]
                    + (torch.exp(logvar)[:, None] + (mu[:, None] - self.prior_mu[None]) ** 2) * torch.exp(-lv)[None]
                    ).sum(-1)
        return torch.log_softmax(self.prior_logits, 0)[None] + e

    def kl_rows(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """(B,) KL(q(z | x) || p(z)) for the standard normal prior; for the mixture its closed-form
        upper bound −H[q] − log Σ_k π_k exp E_q[log N_k(z)] (exact when one component dominates)."""
        if not self.mixture_prior:
            return gaussian_kl(mu, logvar).sum(-1)
        neg_entropy = -0.5 * (math.log(2 * math.pi) + 1.0 + logvar).sum(-1)
        return neg_entropy - torch.logsumexp(self._component_scores(mu, logvar), -1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z (..., L) → (...)."""
        c = -0.5 * z.shape[-1] * math.log(2 * math.pi)
        if not self.mixture_prior:
            return c - 0.5 * (z * z).sum(-1)
        lv = self.prior_logvar
        comp = c - 0.5 * (lv + (z[..., None, :] - self.prior_mu) ** 2 * torch.exp(-lv)).sum(-1)  # (..., K)
        return torch.logsumexp(torch.log_softmax(self.prior_logits, 0) + comp, -1)

    @torch.no_grad()
    def init_prior(self, batches: Any) -> None:
        """Initialise the mixture prior from the posteriors of ``batches`` (encoded, observed cells):
        k-means centres, per-cluster variances (spread of the means + mean posterior variance), and
        the cluster shares as weights. Called at the end of the KL warm-up."""
        from clm_torch.lifecycle.segments import kmeans

        was_training = self.training
        self.eval()
        mus, variances = [], []
        for b in batches:
            b = {k: v.to(self.device) for k, v in b.items() if k in _FEATURE_KEYS}
            mu, logvar = self.posterior(b)
            mus.append(mu.float().cpu())
            variances.append(torch.exp(logvar).float().cpu())
        self.train(was_training)
        mu, var = torch.cat(mus), torch.cat(variances)
        k = self.n_components
        if len(mu) < k:
            raise ValueError(f"model.prior_components={k} needs at least {k} training rows, got {len(mu)}")
        km = kmeans(mu, k, seed=0, n_init=4)
        lab = km.labels
        counts = torch.bincount(lab, minlength=k).float().clamp_min(1.0)
        centres = km.centers.float()
        spread = torch.zeros(k, mu.shape[1]).index_add_(0, lab, (mu - centres[lab]) ** 2 + var) / counts[:, None]
        self.prior_mu.data.copy_(centres.to(self.prior_mu))
        self.prior_logvar.data.copy_(torch.log(spread.clamp_min(1e-4)).to(self.prior_logvar))
        self.prior_logits.data.copy_(torch.log(counts / counts.sum()).to(self.prior_logits))
        self.prior_ready.fill_(True)
        self._prior_on = True
        log.info("InfoGapVAE: mixture prior initialised by k-means on %d posteriors: shares %s", len(mu),
                 [round(float(c), 3) for c in counts / counts.sum()])

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (B, L) of an encoded batch."""
        return self.posterior(batch)

    def _sample_z(self, mu: torch.Tensor, logvar: torch.Tensor, n: int | None = None,
                  generator: torch.Generator | None = None, *, slots: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` (or one) reparameterised draws of z for every row. ``slots`` (B,) (inference): row b's
        standard-normal draws are slot slots[b] (a hash of its encoded values) of a pool drawn from
        ``generator`` (``components/keyed.py``), so they do not depend on the other rows of the batch,
        their order or the batch size (the results then agree up to float rounding, which BLAS may do
        differently by batch size), and their Monte Carlo error is independent between rows;
        otherwise fresh draws per row (training)."""
        shape = mu.shape if n is None else (n, *mu.shape)
        if slots is not None:
            eps = pooled(torch.randn(pool_shape(tuple(shape)), generator=generator, device=mu.device,
                                     dtype=mu.dtype), slots)
        else:
            eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def _hide_masks(self, batch: Mapping[str, torch.Tensor], lo: float, hi: float,
                    generator: torch.Generator | None = None, single: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra hidden cells among the observed ones: at a per-row rate drawn from U[lo, hi], or,
        for a ``single`` share of the rows, exactly one observed cell (leave-one-out rows)."""
        num_mask, cat_mask = batch["num_mask"], batch["cat_mask"]
        n = len(num_mask)
        dev = num_mask.device
        rate = lo + (hi - lo) * torch.rand(n, 1, generator=generator, device=dev)
        u_num = torch.rand(num_mask.shape, generator=generator, device=dev)
        u_cat = torch.rand(cat_mask.shape, generator=generator, device=dev)
        h_num = num_mask & (u_num < rate)
        h_cat = cat_mask & (u_cat < rate)
        if single > 0:
            obs = torch.cat([num_mask, cat_mask], 1)
            u = torch.where(obs, torch.cat([u_num, u_cat], 1), torch.full_like(obs, 2.0, dtype=u_num.dtype))
            one = F.one_hot(u.argmin(1), obs.shape[1]).bool() & obs  # a random observed cell
            pick = torch.rand(n, 1, generator=generator, device=dev) < single
            h_num = torch.where(pick, one[:, : num_mask.shape[1]], h_num)
            h_cat = torch.where(pick, one[:, num_mask.shape[1]:], h_cat)
        return h_num, h_cat

    def elbo_terms(self, batch: Mapping[str, torch.Tensor], hide_num: torch.Tensor, hide_cat: torch.Tensor,
                   z: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Masked ELBO pieces for one batch.

        The encoder sees the observed cells minus ``hide_*``; the reconstruction covers every
        observed cell (hidden ones included).

        Returns:
            ``mu``, ``logvar``, ``kl_dim`` (B, L); ``nll_num`` (B, n_num) and ``nll_cat`` (B, n_cat)
            already multiplied by the observation mask; ``rec`` (B,) their row sums; ``z`` (B, L).
        """
        num_mask, cat_mask = batch["num_mask"], batch["cat_mask"]
        enc_in = _observed_only(batch, num_mask & ~hide_num, cat_mask & ~hide_cat)
        mu, logvar = self._encode(enc_in)
        if z is None:
            z = self._sample_z(mu, logvar, generator=generator)
        out = self.decode(z)
        lik, df = self._lik
        nll_num, nll_cat = cell_nll(out, batch["num"].float(), batch["cat"], self.decoder, lik, df)
        nll_num = nll_num * num_mask
        nll_cat = nll_cat * cat_mask
        kl_dim = gaussian_kl(mu, logvar)
        kl = self.kl_rows(mu, logvar) if self.mixture_prior else kl_dim.sum(1)
        return {"mu": mu, "logvar": logvar, "z": z, "out": out, "kl_dim": kl_dim, "kl": kl,
                "nll_num": nll_num, "nll_cat": nll_cat, "rec": nll_num.sum(1) + nll_cat.sum(1)}

    def kl_weight(self) -> float:
        """β times the linear warm-up factor at the current (fractional) epoch."""
        warm = int(self.hparams.kl_warmup_epochs)
        beta = float(self.hparams.beta)
        if warm <= 0 or self._trainer is None:
            return beta
        nb = self.trainer.num_training_batches
        frac = self.global_step / nb if isinstance(nb, int) and nb > 0 else float(self.current_epoch)
        return beta * min(1.0, frac / warm)

    # ------------------------------------------------------------------ steps
    def model_step(self, batch: Mapping[str, torch.Tensor], stage: str, batch_idx: int = 0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and ELBO terms. Training: random hiding, β-warm-up and free bits. Evaluation:
        seeded hiding at ``val_hide_rate`` and the plain negative ELBO (β = 1)."""
        if stage == "train":
            h_num, h_cat = self._hide_masks(batch, self.hparams.hide_rate_min, self.hparams.hide_rate_max,
                                            single=float(self.hparams.get("single_hide_prob", 0.0)))
            t = self.elbo_terms(batch, h_num, h_cat)
            if self.mixture_prior:
                kl_term = t["kl"].mean()
            else:
                kl_term = free_bits_kl(t["kl_dim"], float(self.hparams.free_bits))
            rec = t["rec"]
            bal = float(self.hparams.get("nll_balance", 0.0))
            hw = float(self.hparams.get("hidden_weight", 1.0))
            if bal > 0 or hw != 1.0:
                # β-NLL: numeric cells weighted by stop_grad(σ^(2·bal)); hidden cells by hidden_weight
                w_num = torch.exp(2 * bal * t["out"]["num_log_scale"].detach()) if bal > 0 else 1.0
                w_num = w_num * (1.0 + (hw - 1.0) * h_num)
                w_cat = 1.0 + (hw - 1.0) * h_cat
                rec = (t["nll_num"] * w_num).sum(1) + (t["nll_cat"] * w_cat).sum(1)
            loss = rec.mean() + self.kl_weight() * kl_term
            if self.n_components and not self.mixture_prior and self._trainer is not None \
                    and self._trainer.world_size > 1:
                # DDP needs a gradient for every parameter; the mixture prior joins the loss after the warm-up
                loss = loss + 0.0 * (self.prior_logits.sum() + self.prior_mu.sum() + self.prior_logvar.sum())
        else:
            g = torch.Generator(device=batch["num"].device).manual_seed(104729 + batch_idx)
            r = float(self.hparams.val_hide_rate)
            h_num, h_cat = self._hide_masks(batch, r, r, generator=g)
            t = self.elbo_terms(batch, h_num, h_cat, generator=g)
            loss = (t["rec"] + t["kl"]).mean()
        t["hide_num"], t["hide_cat"] = h_num, h_cat
        return loss, t

    def _log_terms(self, stage: str, loss: torch.Tensor, t: dict[str, torch.Tensor], n: int) -> None:
        kw = dict(on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/loss", loss, prog_bar=True, **kw)
        self.log(f"{stage}/nll", t["rec"].mean(), **kw)
        self.log(f"{stage}/nll_num", t["nll_num"].sum(1).mean(), **kw)
        self.log(f"{stage}/nll_cat", t["nll_cat"].sum(1).mean(), **kw)
        self.log(f"{stage}/kl", t["kl"].mean(), **kw)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        loss, t = self.model_step(batch, "train", batch_idx)
        # the loss, the other ELBO terms and the KL of every latent dimension, in one tensor, logged as
        # epoch means (see add_train_terms)
        self.add_train_terms(torch.cat([torch.stack([loss, t["rec"].mean(), t["nll_num"].sum(1).mean(),
                                                     t["nll_cat"].sum(1).mean(), t["kl"].mean()]),
                                        t["kl_dim"].mean(0)]), len(batch["num"]))
        return self.guard_loss(loss, batch_idx)

    def on_train_epoch_end(self) -> None:
        """Epoch means of the loss, the ELBO terms, the KL weight and the KL per latent dimension
        (collapse shows); at the end of the KL warm-up, the mixture prior's k-means initialisation."""
        if (self.n_components and not self.mixture_prior
                and self.current_epoch + 1 >= max(int(self.hparams.kl_warmup_epochs), 1)):
            self.init_prior(self.trainer.train_dataloader)
            if self.trainer.world_size > 1:  # every rank starts from rank 0's mixture
                for p in (self.prior_mu, self.prior_logvar, self.prior_logits):
                    p.data.copy_(self.trainer.strategy.broadcast(p.data, src=0))
        super().on_train_epoch_end()

    def log_train_means(self, means: torch.Tensor) -> None:
        super().log_train_means(means)  # train/loss
        m = means[1:].cpu().tolist()
        kl_dim = m[4:]  # KL of each dimension against N(0, 1) (with a mixture prior: a collapse check only)
        values = {"train/nll": m[0], "train/nll_num": m[1], "train/nll_cat": m[2], "train/kl": m[3],
                  "train/beta": self.kl_weight(), **{f"train/kl_dim_{i}": v for i, v in enumerate(kl_dim)}}
        self.log_dict(values, on_step=False, on_epoch=True, sync_dist=True)

    @torch.no_grad()
    def _eval_step(self, batch: Batch, batch_idx: int, stage: str) -> None:
        loss, t = self.model_step(batch, stage, batch_idx)
        self._log_terms(stage, loss, t, len(batch["num"]))
        # point imputations of the hidden cells at the posterior mean
        out = self.decode(t["mu"])
        cat_pred = category_probs(out, self.decoder, self.n_cat, self.max_card).argmax(-1)
        self.scores[stage].update(out["num_loc"], batch["num"], t["hide_num"], cat_pred, batch["cat"], t["hide_cat"])
        acc = self._acc.setdefault(stage, _new_acc())
        mu = self.posterior(batch)[0]  # everything observed: for active units and the projector
        acc["mu_sum"] = acc["mu_sum"] + mu.sum(0).double()
        acc["mu_sq"] = acc["mu_sq"] + (mu.double() ** 2).sum(0)
        acc["n"] += len(mu)
        if stage == "val" and acc["fi_n"] < _FEATURE_INFO_ROWS:  # the completeness weights, on a sample
            rows = {k: v[: _FEATURE_INFO_ROWS - acc["fi_n"]] for k, v in batch.items() if k in _FEATURE_KEYS}
            acc["fi_sum"] = acc["fi_sum"] + self._feature_info_sums(rows).cpu()
            acc["fi_n"] += len(rows["num"])
        if stage == "test":
            acc["mu"].append(mu.cpu())
            if "row" in batch:
                acc["rows"].append(batch["row"].cpu())

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _eval_sums(self, stage: str, acc: dict[str, Any]) -> dict[str, torch.Tensor]:
        """This epoch's imputation-score buffers, posterior-mean moments and information sums, summed
        over the DDP ranks (one collective; each rank holds its own rows)."""
        score, d = self.scores[stage], int(self.hparams.latent_dim)
        dev = score.sq_err.device
        zeros = torch.zeros(d, dtype=torch.float64, device=dev)
        parts = {"sq_err": score.sq_err, "n_num": score.n_num, "correct": score.correct, "n_cat": score.n_cat,
                 "mu_sum": torch.as_tensor(acc["mu_sum"], dtype=torch.float64, device=dev) + zeros,
                 "mu_sq": torch.as_tensor(acc["mu_sq"], dtype=torch.float64, device=dev) + zeros,
                 "n": torch.tensor([acc["n"]], dtype=torch.float64, device=dev),
                 "fi_sum": (torch.as_tensor(acc["fi_sum"], dtype=torch.float64)
                            + torch.zeros(self.n_num + self.n_cat, dtype=torch.float64)).to(dev),
                 "fi_n": torch.tensor([float(acc["fi_n"])], dtype=torch.float64, device=dev)}
        flat = torch.cat([v.reshape(-1) for v in parts.values()])
        if self._trainer is not None and self._trainer.world_size > 1:
            flat = self._trainer.strategy.reduce(flat, reduce_op="sum")
        return dict(zip(parts, torch.split(flat, [v.numel() for v in parts.values()])))

    def _eval_epoch_end(self, stage: str) -> None:
        acc = self._acc.pop(stage, None) or _new_acc()
        sums = self._eval_sums(stage, acc)
        score = self.scores[stage]
        for key in ("sq_err", "n_num", "correct", "n_cat"):
            getattr(score, key).copy_(sums[key])
        rmse, acc_ = score.compute()
        score.reset()
        self.log(f"{stage}/impute_nrmse", rmse, sync_dist=True)  # the same on every rank: sync is a no-op
        self.log(f"{stage}/impute_acc", acc_, sync_dist=True)
        n = float(sums["n"])
        if n == 0:
            return
        var = sums["mu_sq"] / n - (sums["mu_sum"] / n) ** 2
        self.log(f"{stage}/active_units", float((var > 0.01).sum()), sync_dist=True)
        if stage == "val" and not self.trainer.sanity_checking and float(sums["fi_n"][0]) > 0:
            self.feature_info.copy_((sums["fi_sum"] / sums["fi_n"][0]).to(self.feature_info))
        if stage == "test":
            mu = torch.cat(acc["mu"]) if acc["mu"] else torch.zeros(0, int(self.hparams.latent_dim))
            self._add_embedding(*self._gather_test_latents(mu, torch.cat(acc["rows"]) if acc["rows"] else None))

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _gather_test_latents(self, mu: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                         torch.Tensor | None]:
        """Every rank's test latents and their test-split rows, in row order, for the projector (under
        DDP each rank holds its part of the split; the projector showed rank 0's only). Called on every
        rank (a collective), only when a TensorBoard logger will write them. A DataModule whose ranks
        hold different frames (``rank_local``: ``data=parquet_shards``) numbers its rows per rank: the
        projector keeps rank 0's part there."""
        from lightning.pytorch.loggers import TensorBoardLogger

        trainer, dist = self._trainer, torch.distributed
        if trainer is None or trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()) \
                or not any(isinstance(lg, TensorBoardLogger) for lg in (self.loggers or [])) \
                or getattr(getattr(trainer, "datamodule", None), "rank_local", False):
            return mu, rows
        parts: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(parts, (mu.cpu(), None if rows is None else rows.cpu()))
        mu = torch.cat([m for m, _ in parts])
        if any(r is None for _, r in parts):
            return mu, None
        rows = torch.cat([r for _, r in parts])
        rows, first = np.unique(rows.numpy(), return_index=True)  # row order; a row twice (padding) once
        return mu[torch.from_numpy(first)], torch.from_numpy(rows)

    def _add_embedding(self, mu: torch.Tensor, rows: torch.Tensor | None) -> None:
        """TensorBoard projector of the test latents, with churn / true segment as metadata, and the
        customer ids hashed (``projector_ids``: hashed | raw | none; raw ids only when asked for)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers = [lg for lg in (self.loggers or []) if isinstance(lg, TensorBoardLogger)]
        if not loggers or not self.trainer.is_global_zero:
            return
        meta, header = self._embedding_metadata(rows, len(mu))
        for lg in loggers:
            try:
                lg.experiment.add_embedding(mu.float().numpy(), metadata=meta, metadata_header=header,
                                            tag="latent_mean", global_step=self.global_step)
            except Exception as e:  # noqa: BLE001 - a projector must never break a run
                log.warning("could not write the embedding projector: %s", e)

    def _embedding_metadata(self, rows: torch.Tensor | None, n: int) -> tuple[list[list[str]], list[str]]:
        cols: dict[str, list[str]] = {}
        dm = getattr(self.trainer, "datamodule", None)
        frame = getattr(dm, "frames", {}).get("test") if dm is not None else None
        if frame is not None and rows is not None and len(rows) == n:
            sub = frame.iloc[rows.numpy()]
            data = getattr(dm, "data", None)
            try:
                target = getattr(data, "target", None)
                if target and target in data.frame.columns:
                    cols[target] = data.frame.loc[sub.index, target].astype(str).tolist()
                truth = getattr(data, "truth", None)
                id_col = getattr(data, "id_col", None)
                if id_col and id_col in sub.columns:
                    labels = id_labels(sub[id_col].tolist(), self.hparams.get("projector_ids", "hashed"))
                    if labels is not None:
                        cols[f"{id_col} ({self.hparams.get('projector_ids', 'hashed')})"] = labels
                if truth is not None and id_col and "segment" in truth.columns and id_col in sub.columns:
                    seg = truth.drop_duplicates(id_col).set_index(id_col)["segment"]
                    cols["segment"] = seg.reindex(sub[id_col].to_numpy()).astype(str).tolist()
            except (KeyError, ValueError, TypeError) as e:
                log.warning("embedding metadata incomplete: %s", e)
            if self.encoder is not None:
                enc = self.encoder.transform(sub)
                n_miss = (~enc["num_mask"]).sum(1) + (~enc["cat_mask"]).sum(1)
                cols["n_missing"] = [str(int(v)) for v in n_miss]
        if not cols:
            cols["n"] = [str(i) for i in range(n)]
        header = list(cols)
        meta = [list(r) for r in zip(*cols.values())]
        if len(header) == 1:
            return [r[0] for r in meta], header  # type: ignore[return-value]
        return meta, header

    # ------------------------------------------------------------------ encoded-batch inference
    @torch.no_grad()
    def _completed(self, batch: Mapping[str, torch.Tensor]) -> Batch:
        """The rows completed by their own point imputation (at the posterior mean), fully observed."""
        mu, _ = self.posterior(batch)
        out = self.decode(mu)
        num = torch.where(batch["num_mask"], batch["num"].float(), out["num_loc"])
        cat = torch.where(batch["cat_mask"], batch["cat"],
                          category_probs(out, self.decoder, self.n_cat, self.max_card).argmax(-1))
        return {"num": num, "num_mask": torch.ones_like(batch["num_mask"]), "cat": cat, "cat_mask": cat > 0}

    @torch.no_grad()
    def _feature_info_sums(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(F,) float64: summed over the rows, what each feature tells about the profile: the KL
        divergence (nats) of the complete record's posterior from the posterior without that feature,
        ``KL(q(z | x) ‖ q(z | x∖j))``, the record completed by its own point imputation. One forward
        pass over F stacked copies, copy j without feature j."""
        full = self._completed(batch)
        mu0, lv0 = self.posterior(full)
        B, F_ = len(mu0), self.n_num + self.n_cat
        if B == 0:
            return torch.zeros(F_, dtype=torch.float64)
        eye = torch.eye(F_, dtype=torch.bool, device=mu0.device)
        keep_num = full["num_mask"][None] & ~eye[:, None, : self.n_num]  # (F, B, n_num)
        keep_cat = full["cat_mask"][None] & ~eye[:, None, self.n_num:]
        rep = {k: full[k][None].expand(F_, *full[k].shape).reshape(F_ * B, *full[k].shape[1:]) for k in ("num", "cat")}
        mu_j, lv_j = self.posterior({"num": rep["num"], "num_mask": keep_num.reshape(F_ * B, -1),
                                     "cat": rep["cat"], "cat_mask": keep_cat.reshape(F_ * B, -1)})
        kl = gaussian_kl(mu0.repeat(F_, 1), lv0.repeat(F_, 1), mu_j, lv_j).sum(-1)  # (F*B,)
        return kl.view(F_, B).double().sum(1)

    @torch.no_grad()
    def _measure_feature_info(self, tensors: Mapping[str, torch.Tensor], batch_size: int = 8192) -> torch.Tensor:
        """(F,) float64: the completeness weights of encoded rows, the mean of :meth:`_feature_info_sums`
        over the first ``_FEATURE_INFO_ROWS`` (NaN without rows)."""
        was = self._eval_mode()
        n = min(len(tensors["num"]), _FEATURE_INFO_ROWS)
        sums = torch.zeros(self.n_num + self.n_cat, dtype=torch.float64)
        for i in range(0, n, batch_size):
            sums += self._feature_info_sums({k: tensors[k][i: min(i + batch_size, n)].to(self.device)
                                             for k in _FEATURE_KEYS}).cpu()
        self.train(was)
        return sums / n if n else torch.full_like(sums, float("nan"))

    def _set_reference(self, tensors: Mapping[str, torch.Tensor], batch_size: int = 8192) -> None:
        """Set the completeness weights ``feature_info`` from encoded rows (:meth:`_measure_feature_info`)."""
        if len(tensors["num"]):
            self.feature_info.copy_(self._measure_feature_info(tensors, batch_size).to(self.feature_info))

    def _raw_numeric(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded numerics (..., n_num) → raw scale (float64)."""
        enc = self.encoder
        x = x.double() * enc.num_std.to(x.device).double() + enc.num_mean.to(x.device).double()
        logc = torch.as_tensor(enc.num_log, device=x.device)
        if logc.any():
            x = torch.where(logc, torch.expm1(x.clamp(max=50.0)), x)
        return x

    def _raw_mean(self, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """E[x | z] on the raw scale (..., n_num): the location, or for log1p columns with a Gaussian
        likelihood the log-normal mean ``expm1(μ + σ²/2)`` (the median ``expm1(μ)`` under Student-t,
        whose log-scale mean does not exist)."""
        enc = self._require_encoder()
        lik, _ = self._lik
        logc = torch.as_tensor(enc.num_log, device=loc.device)
        if lik == "gaussian" and logc.any():
            sd = enc.num_std.to(loc.device).double()
            half_var = 0.5 * (torch.exp(log_scale.double()) * sd) ** 2  # variance on the log1p scale
            shift = torch.where(logc, half_var / sd, torch.zeros_like(half_var))
            return self._raw_numeric(loc.double() + shift)
        return self._raw_numeric(loc)

    def _raw_variance(self, raw_mean: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Var[x | z] on the raw scale (..., n_num) float64, and (n_num,) bool: the columns where it
        exists. ``raw_mean`` is :meth:`_raw_mean` of the same parameters. Normal: (σ·sd)²; log-normal
        (log1p columns, Gaussian likelihood): (E[x] + 1)² (exp(s²) − 1) with s = σ·sd on the log1p scale;
        Student-t: (σ·sd)² df / (df − 2), finite only with df > 2 outside log1p columns."""
        enc = self._require_encoder()
        lik, df = self._lik
        sd = enc.num_std.to(log_scale.device).double()
        logc = torch.as_tensor(enc.num_log, dtype=torch.bool, device=log_scale.device)
        s2 = (torch.exp(log_scale.double()) * sd) ** 2  # variance in the encoder's (log1p) space, unstandardised
        if lik == "gaussian":
            lognormal = (raw_mean + 1.0) ** 2 * torch.expm1(s2.clamp(max=100.0))
            return torch.where(logc, lognormal, s2), torch.ones_like(logc)
        ok = torch.full_like(logc, df > 2) & ~logc
        return s2 * (df / (df - 2) if df > 2 else 1.0), ok

    @torch.no_grad()
    def predictive(self, batch: Mapping[str, torch.Tensor], n_samples: int, generator: torch.Generator | None = None,
                   use_mean: bool = False) -> dict[str, torch.Tensor]:
        """The model's predictive for every cell of an encoded batch.

        Returns:
            ``mu``, ``logvar`` (B, L); ``num_loc``, ``num_log_scale`` (S, B, n_num) per latent
            sample; ``cat_probs`` (S, B, n_cat, max_card). With ``use_mean`` the single "sample"
            is the posterior mean.
        """
        mu, logvar = self.posterior(batch)
        z = mu[None] if use_mean else self._sample_z(mu, logvar, n_samples, generator, slots=row_slots(batch))
        out = self.decode(z)
        return {"mu": mu, "logvar": logvar, "num_loc": out["num_loc"], "num_log_scale": out["num_log_scale"],
                "cat_probs": category_probs(out, self.decoder, self.n_cat, self.max_card), "out": out}

    @torch.no_grad()
    def impute_batch(self, batch: Mapping[str, torch.Tensor], n_samples: int | None = None,
                     generator: torch.Generator | None = None, importance: bool | None = None
                     ) -> dict[str, torch.Tensor]:
        """Point imputations and uncertainty for every cell of an encoded batch.

        Numeric point = the (weighted) mean over latent samples z_s ~ q(z | x_obs) of E[x | z_s]
        on the raw scale; std = the std of the (weighted) mixture of the p(x | z_s), raw scale, from
        the moments of each p(x | z_s) (exact: normal, log-normal for log1p columns, Student-t with
        ``student_df`` > 2 outside log1p columns); only where those do not exist (Student-t on a log1p
        column, or ``student_df`` <= 2) is it the std of one draw from p(x | z_s) per sample. (When the
        draws were shared by every row, their Monte Carlo error was the same for a whole column: with 16
        samples one column's std came out 0.65 times, another's 1.33 times the true value. The latent
        draws are now keyed by row, so that error is independent from row to row.)
        Categorical probabilities = (weighted) mean over the samples; point = argmax.
        With ``importance`` (default ``hparams.importance_impute``) the samples are weighted by
        ``p(x_obs | z) p(z) / q(z | x_obs)`` (self-normalised importance sampling, as in MIWAE),
        which targets the model's exact conditional p(x_mis | x_obs) instead of the encoder's
        approximation of it; otherwise the weights are uniform.

        Returns:
            ``num`` (B, n_num) raw float64, ``num_std`` (B, n_num) raw, ``cat_probs`` (B, n_cat,
            max_card), ``cat`` (B, n_cat) vocabulary index (≥ 1 where the column has a head).
        """
        s = int(n_samples or self.hparams.n_samples)
        use_iw = bool(self.hparams.get("importance_impute", False)) if importance is None else bool(importance)
        mu, logvar = self.posterior(batch)
        slots = row_slots(batch)
        z = self._sample_z(mu, logvar, s, generator, slots=slots)  # (S, B, L)
        out = self.decode(z)
        lik, df = self._lik
        if use_iw and s > 1:
            nll_num, nll_cat = cell_nll(out, batch["num"].float()[None].expand(s, -1, -1),
                                        batch["cat"][None].expand(s, -1, -1), self.decoder, lik, df)
            log_px = -(nll_num * batch["num_mask"]).sum(-1) - (nll_cat * batch["cat_mask"]).sum(-1)
            log_pz = self.log_prior(z)
            log_qz = -0.5 * (((z - mu) ** 2) * torch.exp(-logvar)).sum(-1) - 0.5 * logvar.sum(-1)
            w = torch.softmax((log_px + log_pz - log_qz).double(), dim=0)  # (S, B)
        else:
            w = torch.full(z.shape[:2], 1.0 / s, dtype=torch.float64, device=z.device)
        wn = w[..., None]
        mean_s = self._raw_mean(out["num_loc"], out["num_log_scale"])  # (S, B, n_num)
        num_point = (mean_s * wn).sum(0)
        var_s, exact = self._raw_variance(mean_s, out["num_log_scale"])
        # the mixture's variance: within the components plus the spread of their means
        num_std = torch.sqrt(((var_s + (mean_s - num_point) ** 2) * wn).sum(0).clamp_min(0))
        if not bool(exact.all()):  # no finite moments: the spread of one draw per sample
            draws = self._raw_numeric(numeric_sample(out["num_loc"], out["num_log_scale"], lik, df, generator,
                                                     slots=slots))
            if s > 1:
                m = (draws * wn).sum(0)
                drawn = torch.sqrt(((draws - m) ** 2 * wn).sum(0).clamp_min(0))
            else:
                hi = self._raw_numeric(out["num_loc"] + torch.sqrt(numeric_variance(out["num_log_scale"], lik, df)))
                drawn = (hi - num_point).abs()[0]
            num_std = torch.where(exact, num_std, drawn)
        cp = category_probs(out, self.decoder, self.n_cat, self.max_card)
        probs = (cp.double() * w[..., None, None]).sum(0).float()
        return {"num": num_point, "num_std": num_std, "cat_probs": probs, "cat": probs.argmax(-1),
                "mu": mu, "logvar": logvar}

    def _stacked_rows(self) -> int:
        """Rows per forward pass of :meth:`gap_batch`'s stack (rows × F copies × S samples): ~1M on a
        GPU; 16,384 on a CPU, whose activations (16 MB per 256-wide layer) are then reused from pass to
        pass instead of being freshly allocated gigabytes: :meth:`information_gap` of a pipeline's 1,279 customers
        × 38 features × 8 samples took 3.3-4.3 s at 16k rows per pass against 5.0-5.2 s at the former
        1M cap (one thread, 4 interleaved calls each; the same values up to float rounding)."""
        return 1_000_000 if self.device.type != "cpu" else 16_384

    @torch.no_grad()
    def gap_batch(self, batch: Mapping[str, torch.Tensor], n_samples: int = 8,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-cell surprise and the gap summaries of an encoded batch.

        One forward pass over F stacked copies of the batch, copy j having feature j hidden:
        ``surprise[b, j] = −log E_{q(z | x_obs∖j)} p(x_j | z)`` (S latent samples), NaN where
        x_j is not observed. Numerics are scored in encoded (standardised) units.

        Returns:
            ``surprise`` (B, F), ``missing_entropy`` (B,) = Σ over unobserved cells of the entropy
            of their predictive (categoricals exact, numerics a Gaussian upper bound), ``mu``,
            ``logvar`` (B, L).
        """
        num_mask, cat_mask = batch["num_mask"], batch["cat_mask"]
        B, F_ = len(num_mask), self.n_num + self.n_cat
        dev = num_mask.device
        eye = torch.eye(F_, dtype=torch.bool, device=dev)  # copy j hides feature j
        keep_num = num_mask[None] & ~eye[:, None, : self.n_num]  # (F, B, n_num)
        keep_cat = cat_mask[None] & ~eye[:, None, self.n_num:]
        rep = {k: batch[k][None].expand(F_, *batch[k].shape).reshape(F_ * B, *batch[k].shape[1:])
               for k in ("num", "cat")}
        mu_j, lv_j = self.posterior({"num": rep["num"], "num_mask": keep_num.reshape(F_ * B, -1),
                                     "cat": rep["cat"], "cat_mask": keep_cat.reshape(F_ * B, -1)})
        # every copy of row b draws as row b does (common random numbers across its features)
        z = self._sample_z(mu_j, lv_j, n_samples, generator, slots=row_slots(batch).repeat(F_))  # (S, F*B, L)
        lik, df = self._lik
        diag = own_cell_nll(self.decode(z), batch["num"].float(), batch["cat"], self.decoder, lik, df)  # (S, B, F)
        surprise = -_logmeanexp(-diag, 0)  # copy j, feature j
        observed = torch.cat([num_mask, cat_mask], 1)
        surprise = torch.where(observed, surprise, torch.full_like(surprise, float("nan")))
        # uncertainty about the unobserved cells given everything observed
        p = self.predictive(batch, n_samples, generator)
        loc, ls = p["num_loc"], p["num_log_scale"]
        # (no numeric column: torch's var() of an empty tensor warns about its degrees of freedom)
        spread = loc.var(0, unbiased=False) if loc.shape[-1] else torch.zeros_like(loc[0])
        var_num = numeric_variance(ls, lik, df).mean(0) + spread
        h_num = 0.5 * (1 + math.log(2 * math.pi)) + 0.5 * torch.log(var_num) if lik == "gaussian" else \
            numeric_entropy(0.5 * torch.log(var_num), lik, df)
        probs = p["cat_probs"].mean(0)
        h_cat = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
        has_head = torch.zeros(self.n_cat, dtype=torch.bool, device=dev)
        has_head[self.decoder.soft_cols + self.decoder.bin_cols] = True
        miss_h = (h_num * ~num_mask).sum(1) + (h_cat * (~cat_mask & has_head)).sum(1)
        return {"surprise": surprise, "missing_entropy": miss_h, "mu": p["mu"], "logvar": p["logvar"]}

    @torch.no_grad()
    def question_gains(self, batch: Mapping[str, torch.Tensor], n_samples: int = 16,
                       target: Callable[[Batch], torch.Tensor] | None = None,
                       generator: torch.Generator | None = None,
                       answered: torch.Tensor | None = None) -> torch.Tensor:
        """EDDI expected information gain of acquiring each unobserved feature. (B, F), NaN where observed.

        For every unobserved (row, feature) pair, the possible answers x_j are added as observed and
        the row re-encoded. The gain is the expectation over the answers, under the model's predictive
        p(x_j | x_obs), of KL(q(z | x_obs, x_j) ‖ q(z | x_obs)) — or, with ``target`` (a callable
        from an encoded batch to probabilities (B,) or (B, C)), of the KL between the target's
        prediction with and without x_j (the mutual information of x_j and the prediction).
        The answers (:meth:`_answers`): a categorical or binary feature with at most
        ``2 * n_samples`` classes is not sampled but enumerated, each class weighted by its predictive
        probability (the mean over the S latent draws): exact in the answer, no sampling noise; a
        numeric feature (or a categorical with more classes) gets S draws, stratified
        (:meth:`_draw_values`). On a 3,000-customer pipeline run the top question agrees across
        inference seeds for 81 % (8 draws) and 88 % (16) of the customers with two or more candidates,
        63 % and 73 % when every answer was sampled (``experiments/results/nbq_stability.md``).
        ``answered`` (B, F): cells that hold a value the encoding cannot read (a category unseen in
        training); they are unobserved for the model but not questions to ask (NaN too).
        """
        cand = self._question_candidates(batch, answered)
        B, F_ = cand.shape
        dev = cand.device
        gains = torch.full((B, F_), float("nan"), device=dev)
        rows, feats = cand.nonzero(as_tuple=True)
        if len(rows) == 0:
            return gains
        a = self._answers(batch, rows, feats, n_samples, generator)
        exp = self._with_answers(batch, a)
        if target is None:
            mu1, lv1 = self.posterior(exp)
            kl = gaussian_kl(mu1, lv1, a["mu"][a["row"]], a["logvar"][a["row"]]).sum(-1)
        else:
            p0 = _as_probs(target(dict(batch)))[a["row"]]
            p1 = _as_probs(target(exp))
            kl = _categorical_kl(p1, p0)
        g = torch.zeros(len(rows), dtype=torch.float64, device=dev).index_add_(
            0, a["pair"], a["weight"] * kl.double().to(dev))
        gains[rows, feats] = g.float()
        return gains

    def _n_classes(self) -> torch.Tensor:
        """(n_cat,) int64: the classes each categorical column's decoder head predicts (vocabulary
        indices 1..K; 2 for a binary head, 0 for a column without a head)."""
        k = torch.zeros(self.n_cat, dtype=torch.long)
        for j, size in zip(self.decoder.soft_cols, self.decoder.soft_sizes):
            k[j] = int(size)
        k[self.decoder.bin_cols] = 2
        return k

    def _answers(self, batch: Mapping[str, torch.Tensor], rows: torch.Tensor, feats: torch.Tensor, S: int,
                 generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The answers to try for each candidate (row, feature) pair and their weights (summing to 1 per pair).

        A categorical/binary feature with K <= 2 S classes: every class c = 1..K, weighted by its
        predictive probability p(x_j = c | x_obs) (mean over the S latent draws), so the class is
        integrated exactly (Rao-Blackwellised) at the cost of K re-encodings. Otherwise S draws from
        the predictive (:meth:`_draw_values`), weight 1/S each. Returns ``pair`` (N,) index into
        ``rows``, ``row``, ``feat``, ``draw`` (the draw s, -1 for an enumerated class), ``cat`` (the
        class, for categorical features), ``weight`` (N,) float64; ``num`` (S, B, n_num) the numeric
        draws (encoded) and the posterior ``mu``, ``logvar`` of the batch.
        """
        dev = rows.device
        draws_num, draws_cat, probs, mu0, lv0 = self._draw_values(batch, S, generator)
        P = len(rows)
        pair = torch.arange(P, device=dev)
        jc = (feats - self.n_num).clamp_min(0)
        # a model without categorical columns has no classes to look up (every question is numeric)
        k = self._n_classes().to(dev)[jc] if self.n_cat else torch.zeros_like(feats)
        enum = (feats >= self.n_num) & (k <= 2 * S)
        # sampled answers: S per pair
        sp = pair[~enum]
        s_idx = torch.arange(S, device=dev).repeat_interleave(len(sp))
        sp = sp.repeat(S)
        sampled_cat = draws_cat[s_idx, rows[sp], jc[sp]] if self.n_cat else torch.zeros_like(sp)
        # enumerated answers: one per class
        ep = pair[enum]
        ke = k[enum]
        ep = ep.repeat_interleave(ke)
        start = torch.cumsum(ke, 0) - ke
        cls = torch.arange(len(ep), device=dev) - start.repeat_interleave(ke) + 1
        w_enum = probs[rows[ep], jc[ep], cls].double()
        total = torch.zeros(P, dtype=torch.float64, device=dev).index_add_(0, ep, w_enum)
        w_enum = w_enum / total[ep].clamp_min(1e-300)
        out_pair = torch.cat([sp, ep])
        return {"pair": out_pair, "row": rows[out_pair], "feat": feats[out_pair],
                "draw": torch.cat([s_idx, torch.full_like(ep, -1)]),
                "cat": torch.cat([sampled_cat, cls]),
                "weight": torch.cat([torch.full((len(sp),), 1.0 / S, dtype=torch.float64, device=dev), w_enum]),
                "num": draws_num, "mu": mu0, "logvar": lv0}

    def _draw_values(self, batch: Mapping[str, torch.Tensor], S: int, generator: torch.Generator | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """S draws of every cell from the predictive: numerics (S, B, n_num) encoded, categories (S, B, n_cat);
        the mean class probabilities (B, n_cat, K) and the posterior ``mu``, ``logvar`` (B, L).

        The S latent draws z_s ~ q(z | x_obs) and the numeric draws x ~ p(x | z_s) are stratified
        (:func:`_stratified`, keyed by the row as :meth:`_sample_z`): for each row and latent dimension
        or column the uniforms behind the S draws fall one in each S-quantile, so the answers cover the
        predictive evenly (on a 3,000-customer pipeline run the top question then agrees across seeds for
        81 % of the customers with two or more candidates at 8 draws, 79 % without stratifying)."""
        lik, df = self._lik
        slots = row_slots(batch)
        mu, logvar = self.posterior(batch)
        z = mu + torch.exp(0.5 * logvar) * _stratified(tuple((S, *mu.shape)), generator, slots).to(mu.dtype)
        out = self.decode(z)
        loc = out["num_loc"]
        eps = _stratified(tuple(loc.shape), generator, slots, df if lik == "student_t" else None)
        num = loc + torch.exp(out["num_log_scale"]) * eps.to(loc.dtype)
        probs = category_probs(out, self.decoder, self.n_cat, self.max_card)  # (S, B, n_cat, K)
        # inverse CDF with one uniform per (sample, row, column), keyed by the row (see _sample_z)
        u = pooled(torch.rand(pool_shape(tuple(probs.shape[:3])), generator=generator, device=probs.device,
                              dtype=torch.float64), slots)[..., None]
        cdf = probs.double().cumsum(-1)
        total = cdf[..., -1:]
        idx = (cdf <= u * total).sum(-1).clamp_max(probs.shape[-1] - 1)  # zero-probability classes never drawn
        idx = torch.where(total[..., 0] > 0, idx, torch.zeros_like(idx))
        return num, idx, probs.mean(0), mu, logvar

    def _with_answers(self, batch: Mapping[str, torch.Tensor], a: Mapping[str, torch.Tensor]) -> Batch:
        """Copies of the candidate rows, one per answer of :meth:`_answers`, each with its feature set to the answer."""
        r, f = a["row"], a["feat"]
        out = {k: batch[k].index_select(0, r).clone() for k in _FEATURE_KEYS}
        is_num = f < self.n_num
        if is_num.any():
            i = is_num.nonzero(as_tuple=True)[0]
            j = f[i]
            out["num"][i, j] = a["num"][a["draw"][i], r[i], j].to(out["num"].dtype)
            out["num_mask"][i, j] = True
        if (~is_num).any():
            i = (~is_num).nonzero(as_tuple=True)[0]
            j = f[i] - self.n_num
            v = a["cat"][i]
            out["cat"][i, j] = v.to(out["cat"].dtype)
            out["cat_mask"][i, j] = v > 0
        return out

    # ------------------------------------------------------------------ raw DataFrames
    def _require_encoder(self) -> FeatureEncoder:
        if self.encoder is None:
            raise RuntimeError("this model has no fitted preprocessing; load it from a clm_torch checkpoint "
                               "or call set_preprocessing")
        return self.encoder

    def transform(self, df: pd.DataFrame, *, source: str = "<dataframe>") -> dict[str, torch.Tensor]:
        """The fitted preprocessing of a raw frame: the feature tensors (``num``, ``num_mask``, ``cat``,
        ``cat_mask``; one row per row of ``df``, on the CPU) that the methods below read.

        Several methods on the same frame can share one encoding: pass the result as ``encoded=``
        (as :func:`~clm_torch.models.infogap_features.infogap_frame` does)."""
        enc = self._require_frame(df, source)
        t = enc.transform(df, source=source)
        return {k: t[k] for k in _FEATURE_KEYS}

    def _require_frame(self, df: pd.DataFrame, source: str) -> FeatureEncoder:
        """The fitted encoder, once ``df`` is known to be a DataFrame (else a SchemaError naming ``source``)."""
        enc = self._require_encoder()
        if not isinstance(df, pd.DataFrame):
            raise SchemaError(f"expected a pandas DataFrame, got {type(df).__name__}", source=source)
        return enc

    def _chunks(self, df: pd.DataFrame, batch_size: int, source: str,  # noqa: ANN202
                encoded: Mapping[str, torch.Tensor] | None = None):
        """(start, rows of ``df``, feature tensors on the model's device) per batch; the tensors are
        sliced from ``encoded`` (:meth:`transform` of ``df``) when given, else encoded batch by batch."""
        enc = self._require_frame(df, source)
        if encoded is not None and any(len(encoded[k]) != len(df) for k in _FEATURE_KEYS):
            raise ValueError(f"encoded has {len(encoded['num'])} rows but the frame {len(df)}: pass "
                             "model.transform(df) of this very frame")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(df) == 0:  # no rows to encode, but the columns are still checked (as predict_proba does)
            enc.transform(df, source=source)
        with enc.one_warning_each():
            enc.check_frame(df, source=source)
            for start, stop in chunks(len(df), int(batch_size), f"{source}: {len(df):,} rows"):
                part = df.iloc[start: stop]
                t = enc.transform(part, source=source) if encoded is None else \
                    {k: encoded[k][start: stop] for k in _FEATURE_KEYS}
                yield start, part, {k: t[k].to(self.device) for k in _FEATURE_KEYS}

    def _generator(self, seed: int | None) -> torch.Generator | None:
        return None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))

    def _eval_mode(self) -> bool:
        was = self.training
        self.eval()
        return was

    def _finish_numeric(self, vals: np.ndarray, j: int) -> np.ndarray:
        """Raw imputations of numeric column j clipped to the training range (rounded if integral)."""
        enc = self._require_encoder()
        vals = np.clip(vals, enc.num_min[j], enc.num_max[j])
        return np.round(vals) if enc.num_integer[j] else vals

    @torch.no_grad()
    def encode(self, df: pd.DataFrame, return_std: bool = False, *, batch_size: int = 65536,
               source: str = "<dataframe>", encoded: Mapping[str, torch.Tensor] | None = None
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Posterior mean (n, latent_dim) of each customer; with ``return_std`` also the posterior std.
        ``encoded``: :meth:`transform` of ``df``, when the caller has it already."""
        was = self._eval_mode()
        mus, sds = [], []
        for _, _, b in self._chunks(df, batch_size, source, encoded):
            mu, lv = self.posterior(b)
            mus.append(mu.float().cpu())
            sds.append(torch.exp(0.5 * lv).float().cpu())
        self.train(was)
        L = int(self.hparams.latent_dim)
        mu = torch.cat(mus).numpy() if mus else np.zeros((0, L), np.float32)
        sd = torch.cat(sds).numpy() if sds else np.zeros((0, L), np.float32)
        return (mu, sd) if return_std else mu

    @torch.no_grad()
    def segments(self, df: pd.DataFrame, *, batch_size: int = 65536, source: str = "<dataframe>") -> pd.DataFrame:
        """Each customer's mixture component (needs ``prior_components >= 2``): one row per row of
        ``df`` (same index) with ``segment`` (argmax) and ``p_segment_<k>`` = q(k | x), the
        component posterior under q(z | x)."""
        if not self.mixture_prior:
            if self.n_components > 0:  # a mixture asked for, but training stopped before it was initialised
                raise ValueError(f"segments(): this model was set up with prior_components={self.n_components}, but "
                                 "its training stopped before the mixture prior was initialised (at the end of the "
                                 "KL warm-up, model.kl_warmup_epochs): train it for more epochs")
            raise ValueError("segments() needs a model trained with model.prior_components >= 2 "
                             "(this one has the standard normal prior)")
        was = self._eval_mode()
        probs = [torch.softmax(self._component_scores(*self.posterior(b)), -1).float().cpu()
                 for _, _, b in self._chunks(df, batch_size, source)]
        self.train(was)
        p = torch.cat(probs).numpy() if probs else np.zeros((0, self.n_components), np.float32)
        out = pd.DataFrame(p, index=df.index, columns=[f"p_segment_{k}" for k in range(self.n_components)])
        out.insert(0, "segment", p.argmax(1) if len(p) else np.zeros(0, np.int64))
        return out

    @torch.no_grad()
    def impute(self, df: pd.DataFrame, n_samples: int | None = None, return_uncertainty: bool = False, *,
               batch_size: int = 8192, seed: int | None = 0, source: str = "<dataframe>",
               encoded: Mapping[str, torch.Tensor] | None = None) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, Any]]:
        """Fill only the missing cells of ``df``: NaN, and in text columns the tokens that cleaning
        reads as missing (``''``, ``'n/a'``, ``'NA'``, ``'?'``, ...).

        Observed cells — unseen categories included — are returned untouched. Columns keep their
        dtype where the imputed values fit it (integers of an integral training column are rounded;
        an integer column that receives fractions becomes float: ``int64`` → ``float64``, ``Int64`` →
        ``Float64``, Arrow ints → Arrow doubles; pandas categoricals gain the imputed category if it is
        new), and an imputed category is written the way this frame spells it (``'1'`` in a text
        column, ``True`` in a boolean one) when the frame has it. Numerics are clipped to the training
        range.

        Args:
            n_samples: latent samples averaged per row (default ``hparams.n_samples``).
            return_uncertainty: also return ``{"std": DataFrame (n, numeric cols) raw-scale std of
                each imputed numeric cell (NaN where observed), "probs": {col: DataFrame (n, classes)
                of class probabilities for imputed cells (NaN rows where observed)}}``.
            seed: seed of the latent samples (None = not seeded).
            encoded: :meth:`transform` of ``df``, when the caller has it already.
        """
        enc = self._require_encoder()
        _check_n_samples(n_samples, allow_none=True)
        was = self._eval_mode()
        n = len(df)
        num_vals = np.full((n, enc.n_num), np.nan)
        num_std = np.full((n, enc.n_num), np.nan)
        cat_idx = np.zeros((n, enc.n_cat), dtype=np.int64)
        probs = np.zeros((n, enc.n_cat, self.max_card), dtype=np.float32)
        for start, part, b in self._chunks(df, batch_size, source, encoded):
            r = self.impute_batch(b, n_samples, self._generator(seed))  # the same draws for every chunk
            sl = slice(start, start + len(part))
            num_vals[sl] = r["num"].cpu().numpy()
            num_std[sl] = r["num_std"].cpu().numpy()
            cat_idx[sl] = r["cat"].cpu().numpy()
            probs[sl] = r["cat_probs"].float().cpu().numpy()
        self.train(was)
        out = df.copy()
        std_df = pd.DataFrame(index=df.index, columns=enc.num_columns, dtype="float64")
        prob_dfs: dict[str, pd.DataFrame] = {}
        for j, col in enumerate(enc.num_columns):
            x = to_numeric_strict(df[col], source=source, column=col)  # "n/a", "" are missing too
            miss = x.isna().to_numpy()
            filled = self._finish_numeric(num_vals[:, j], j)
            if pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
                out[col] = _fill(df[col], miss, filled)
            else:  # a numeric column that arrived as text: numbers out
                out[col] = x.where(~miss, pd.Series(filled, index=df.index))
            std_df[col] = np.where(miss, num_std[:, j], np.nan)
        decoded = enc.decode_categories(cat_idx)
        for j, col in enumerate(enc.cat_columns):
            miss = missing_cells(df[col])
            miss_fill = miss & (cat_idx[:, j] > 0)
            out[col] = _fill(df[col], miss_fill, self._frame_spelling(col, df[col], cat_idx[:, j], decoded[col]))
            classes = list(enc.vocab[col][1:])
            pj = probs[:, j, 1: 1 + len(classes)].astype(np.float64)
            pj[~miss] = np.nan
            prob_dfs[col] = pd.DataFrame(pj, index=df.index, columns=classes)
        if return_uncertainty:
            return out, {"std": std_df, "probs": prob_dfs}
        return out

    def _frame_spelling(self, col: str, s: pd.Series, idx: np.ndarray, decoded: np.ndarray) -> np.ndarray:
        """The categories ``decoded`` (vocabulary indices ``idx``) of column ``col`` as the frame ``s``
        writes them: the first value of ``s`` with the same vocabulary index, else the training
        spelling made to fit ``s``'s dtype (True/False in a boolean column, ``'1'`` for 1.0 in a text one)."""
        enc = self._require_encoder()
        out = decoded.copy()
        wanted = np.unique(idx[idx > 0])
        if not len(wanted):
            return out
        known = enc._category_index(col, s)
        hit = np.flatnonzero(np.isin(known, wanted))
        first = dict(zip(*(a.tolist() for a in np.unique(known[hit], return_index=True)))) if len(hit) else {}
        raw = s.to_numpy(dtype=object)
        for v in wanted.tolist():
            at = idx == v
            if v in first:
                out[at] = raw[hit[first[v]]]
            else:
                out[at] = _level_for_dtype(enc.vocab[col][v], s.dtype)
        return out

    @torch.no_grad()
    def information_gap(self, df: pd.DataFrame, n_samples: int = 8, *, batch_size: int = 1024,
                        seed: int | None = 0, source: str = "<dataframe>",
                        encoded: Mapping[str, torch.Tensor] | None = None) -> pd.DataFrame:
        """One row per customer (index of ``df``): where the information gap is and how large.

        Columns:
            ``surprise_<col>``: NLL (nats) of each observed value given all the other observed
                features, i.e. with that feature hidden (numerics in standardised units); NaN
                where the cell is missing. High = contradictory or implausible. (A value below 0 in a
                column read on a log1p scale — counts, money — is read as 0, with a warning: its
                surprise is that of 0.)
            ``total_surprise`` / ``max_surprise`` / ``max_surprise_feature``: over observed cells.
            ``missing_entropy``: Σ over missing cells of the entropy of their predictive.
            ``gap_score``: ``total_surprise + missing_entropy`` — the code length (nats) of the
                complete record when every cell is predicted from the others: what the model
                still lacks, whether the cell is missing or contradicts the rest.
            ``n_observed``, ``n_missing``: the cells the model reads, and the missing ones. A value
                it cannot read (a category unseen in training) is in neither: it is not missing, but
                the model predicts it like a missing one (its entropy is in ``missing_entropy``).
            ``completeness``: the share of what a complete record tells about the profile z that
                this record holds: ``Σ_{j observed} w_j / Σ_j w_j`` with ``w_j`` (``feature_info``,
                measured on the validation split) the mean KL divergence of a complete record's
                posterior from its posterior without feature j. 0 = nothing observed, 1 = every
                feature; each further cell raises it by that feature's weight. (It was the
                posterior's width relative to a complete record's, which the encoder does not
                narrow as cells are added: records with most cells missing scored near 1.)

        ``encoded``: :meth:`transform` of ``df``, when the caller has it already.
        """
        enc = self._require_encoder()
        _check_n_samples(n_samples)
        was = self._eval_mode()
        F_ = enc.n_num + enc.n_cat
        # bound the stacked batch (F copies × S samples) per forward (see _stacked_rows)
        step = max(1, min(int(batch_size), self._stacked_rows() // max(F_ * n_samples, 1)))
        parts: list[dict[str, np.ndarray]] = []
        weights = self.feature_info.double().cpu()
        own = torch.zeros(F_, dtype=torch.float64) if not torch.isfinite(weights).all() else None
        n_own = 0
        for _, part, b in self._chunks(df, step, source, encoded):
            r = self.gap_batch(b, n_samples, self._generator(seed))  # the same draws for every chunk
            parts.append({k: r[k].float().cpu().numpy() for k in ("surprise", "missing_entropy")})
            parts[-1]["observed"] = torch.cat([b["num_mask"], b["cat_mask"]], 1).cpu().numpy()
            parts[-1]["n_unread"] = self._unreadable(part, b).sum(1).numpy()
            if own is not None and n_own < _FEATURE_INFO_ROWS:
                rows = {k: v[: _FEATURE_INFO_ROWS - n_own] for k, v in b.items() if k in _FEATURE_KEYS}
                own += self._feature_info_sums(rows).cpu()
                n_own += len(rows["num"])
        self.train(was)
        if own is not None:  # no validation run yet: this frame's rows measure the weights
            weights = own / n_own if n_own else weights
        cols = enc.feature_columns
        if not parts:
            return pd.DataFrame(columns=[f"surprise_{c}" for c in cols] + [
                "total_surprise", "max_surprise", "max_surprise_feature", "missing_entropy", "gap_score",
                "n_observed", "n_missing", "completeness"])
        sur = np.concatenate([p["surprise"] for p in parts])
        res = pd.DataFrame(sur, index=df.index, columns=[f"surprise_{c}" for c in cols])
        obs = ~np.isnan(sur)
        total = np.where(obs, sur, 0.0).sum(1)
        res["total_surprise"] = total
        any_obs = obs.any(1)
        safe = np.where(obs, sur, -np.inf)
        res["max_surprise"] = np.where(any_obs, safe.max(1), np.nan)
        arg = safe.argmax(1)
        res["max_surprise_feature"] = pd.Series(np.where(any_obs, np.array(cols, dtype=object)[arg], None),
                                                index=df.index, dtype=object)
        res["missing_entropy"] = np.concatenate([p["missing_entropy"] for p in parts])
        res["gap_score"] = res["total_surprise"] + res["missing_entropy"]
        observed = np.concatenate([p["observed"] for p in parts])
        n_obs = observed.sum(1)
        res["n_observed"] = n_obs.astype(np.int64)
        res["n_missing"] = (F_ - n_obs - np.concatenate([p["n_unread"] for p in parts])).astype(np.int64)
        res["completeness"] = _completeness(observed, weights.numpy(), enc=enc, source=source)
        return res

    @torch.no_grad()
    def next_best_question(self, df: pd.DataFrame, target: Any = None, k: int = 3, n_samples: int = 16, *,
                           batch_size: int = 256, seed: int | None = 0, return_gains: bool = False,
                           askable: Sequence[str] | None = None,
                           source: str = "<dataframe>") -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
        """For each customer, the ``k`` missing features whose answer would tell us the most (EDDI).

        Args:
            target: None — gain about the latent customer profile z; an object with
                ``predict_proba(df)`` (e.g. a :class:`~clm_torch.models.churn.ChurnClassifier`) —
                gain about its prediction, scored on raw rows with the drawn answer filled in; or
                a callable from an encoded batch (this model's encoding) to probabilities (B,) or
                (B, C).
            k: questions per customer.
            n_samples: latent draws per customer, and stratified draws of each numeric answer from the
                model's predictive (a categorical answer's classes are enumerated up to 2 n_samples).
            return_gains: also return the full gain table (n, features), NaN where observed.
            askable: the features one can ask a customer about (e.g. the CRM table's columns, not
                features computed from the event log); None = every feature. The others get no
                gain (NaN) and are never proposed.

        Returns:
            DataFrame indexed like ``df`` with ``question_1 .. question_k`` (feature names, None when
            fewer features are missing) and ``gain_1 .. gain_k`` (expected KL, nats), best first.
            A field answered with a value the model cannot read (a category unseen in training) is
            not missing: it is never proposed.
        """
        enc = self._require_encoder()
        _check_n_samples(n_samples)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer (questions per customer), got {k!r}")
        if askable is not None:
            askable = [askable] if isinstance(askable, str) else list(askable)
            unknown = [c for c in askable if c not in enc.feature_columns]
            if unknown:
                raise ValueError(f"askable names {unknown}, which are not features of this model "
                                 f"({enc.feature_columns})")
        was = self._eval_mode()
        if target is not None and not callable(target) and not hasattr(target, "predict_proba"):
            raise TypeError("target must have predict_proba(df) or be a callable on encoded batches")
        use_df = target is not None and hasattr(target, "predict_proba")
        gains_l = []
        for _, part, b in self._chunks(df, batch_size, source):
            g = self._generator(seed)  # the same draws for every chunk
            answered = self._unreadable(part, b)
            if use_df:
                gains_l.append(self._question_gains_df(b, part, n_samples, target, g, answered).cpu())
            else:
                gains_l.append(self.question_gains(b, n_samples, target, g, answered).cpu())
        self.train(was)
        cols = enc.feature_columns
        gains = torch.cat(gains_l).numpy() if gains_l else np.zeros((0, len(cols)), np.float32)
        if askable is not None:
            gains[:, ~np.isin(np.asarray(cols, dtype=object), askable)] = np.nan
        all_g = pd.DataFrame(gains, index=df.index, columns=cols)
        order = np.argsort(-np.nan_to_num(gains, nan=-np.inf), axis=1, kind="stable")
        res = pd.DataFrame(index=df.index)
        names = np.array(cols, dtype=object)
        for i in range(k):
            if i < gains.shape[1]:
                idx = order[:, i]
                gi = gains[np.arange(len(gains)), idx]
                ok = ~np.isnan(gi)
                res[f"question_{i + 1}"] = pd.Series(np.where(ok, names[idx], None), index=df.index, dtype=object)
                res[f"gain_{i + 1}"] = np.where(ok, gi, np.nan)
            else:
                res[f"question_{i + 1}"] = pd.Series([None] * len(df), index=df.index, dtype=object)
                res[f"gain_{i + 1}"] = np.nan
        return (res, all_g) if return_gains else res

    def _question_candidates(self, batch: Mapping[str, torch.Tensor], answered: torch.Tensor | None) -> torch.Tensor:
        """(B, F) bool: the cells one can ask about: unobserved, not ``answered``, and with a predictive
        (numerics, and the categorical/binary columns the decoder models)."""
        num_mask, cat_mask = batch["num_mask"], batch["cat_mask"]
        F_ = self.n_num + self.n_cat
        has_head = torch.ones(F_, dtype=torch.bool, device=num_mask.device)
        has_head[self.n_num:] = False
        has_head[[self.n_num + j for j in self.decoder.soft_cols + self.decoder.bin_cols]] = True
        cand = ~torch.cat([num_mask, cat_mask], 1) & has_head[None]
        return cand if answered is None else cand & ~answered.to(cand.device)

    def _unreadable(self, part: pd.DataFrame, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, F) bool: cells of the raw rows ``part`` that hold a value the encoding reads as
        unobserved: a category unseen in training (a plan launched since). The model cannot use
        them, but they are not missing: never asked for, never counted as missing."""
        enc = self._require_encoder()
        held = torch.zeros(len(part), enc.n_num + enc.n_cat, dtype=torch.bool)
        for j, col in enumerate(enc.cat_columns):
            held[:, enc.n_num + j] = torch.from_numpy(~missing_cells(part[col]))
        observed = torch.cat([batch["num_mask"], batch["cat_mask"]], 1).cpu()
        return held & ~observed

    def _question_gains_df(self, batch: Batch, part: pd.DataFrame, n_samples: int, target: Any,
                           generator: torch.Generator | None, answered: torch.Tensor | None = None) -> torch.Tensor:
        """Like :meth:`question_gains` with a ``predict_proba(df)`` target: the answers
        (:meth:`_answers`) are decoded to raw values and written into copies of the raw rows."""
        enc = self._require_encoder()
        cand = self._question_candidates(batch, answered)
        B, F_ = cand.shape
        gains = torch.full((B, F_), float("nan"))
        rows, feats = cand.nonzero(as_tuple=True)
        if len(rows) == 0:
            return gains
        a = self._answers(batch, rows, feats, n_samples, generator)
        p0 = _as_probs(torch.as_tensor(np.asarray(target.predict_proba(part)), dtype=torch.float64))
        r = a["row"].cpu().numpy()
        f = a["feat"].cpu().numpy()
        s = a["draw"].cpu().numpy()
        raw_num = self._raw_numeric(a["num"]).cpu().numpy()  # (S, B, n_num)
        dcat = a["cat"].cpu().numpy()
        exp = part.iloc[r].reset_index(drop=True).copy()
        cols = enc.feature_columns
        for j, col in enumerate(cols):
            sel = np.flatnonzero(f == j)
            if len(sel) == 0:
                continue
            if j < self.n_num:
                vals = raw_num[s[sel], r[sel], j]
                if not pd.api.types.is_numeric_dtype(exp[col]):  # numbers given as text
                    exp[col] = to_numeric_strict(exp[col], source="<next_best_question>", column=col)
                if pd.api.types.is_integer_dtype(exp[col]) and not enc.num_integer[j]:
                    exp[col] = exp[col].astype("float64")
                exp.loc[sel, col] = np.round(vals) if enc.num_integer[j] else vals
            else:
                jc = j - self.n_num
                vocab = np.array([np.nan, *enc.vocab[col][1:]], dtype=object)
                vals = vocab[dcat[sel]]
                colv = exp[col].astype(object).to_numpy().copy()
                colv[sel] = vals
                exp[col] = _restore(exp[col], colv)
        p1 = _as_probs(torch.as_tensor(np.asarray(target.predict_proba(exp)), dtype=torch.float64))
        kl = _categorical_kl(p1, p0[torch.as_tensor(r)])
        g = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, a["pair"].cpu(), a["weight"].cpu() * kl)
        gains[rows.cpu(), feats.cpu()] = g.float()
        return gains

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def export_predictions(self, datamodule: Any, split: str = "test") -> pd.DataFrame:
        """Per customer of a split: id, ``n_observed``, ``total_surprise``, ``missing_entropy``,
        ``gap_score``, ``completeness`` (see :meth:`information_gap`) and the latent mean ``z_0..``."""
        t = datamodule.tensors[split]
        was = self._eval_mode()
        F_ = self.n_num + self.n_cat
        step = max(1, self._stacked_rows() // (F_ * 8))
        rows, observed = [], []
        weights = self.feature_info.double().cpu()
        if not torch.isfinite(weights).all():  # no validation run: this split's rows measure the weights
            weights = self._measure_feature_info(t)
        for i in range(0, len(t["num"]), step):
            b = {k: t[k][i: i + step].to(self.device) for k in _FEATURE_KEYS}
            r = self.gap_batch(b, 8, torch.Generator(device=self.device).manual_seed(0))  # same draws per chunk
            sur = r["surprise"]
            observed.append(torch.cat([b["num_mask"], b["cat_mask"]], 1).cpu())
            rows.append(torch.cat([
                observed[-1].sum(1).double()[:, None],
                torch.nan_to_num(sur, nan=0.0).sum(1, keepdim=True).double().cpu(),
                r["missing_entropy"][:, None].double().cpu(), r["mu"].double().cpu()], 1))
        self.train(was)
        a = torch.cat(rows).numpy()
        id_name = datamodule.schema.id_col or "row"
        out = pd.DataFrame({id_name: datamodule.ids(split), "n_observed": a[:, 0].astype(np.int64),
                            "total_surprise": a[:, 1], "missing_entropy": a[:, 2]})
        out["gap_score"] = out["total_surprise"] + out["missing_entropy"]
        out["completeness"] = _completeness(torch.cat(observed).numpy() if observed else np.zeros((0, F_), bool),
                                            weights.numpy())
        for d in range(a.shape[1] - 3):
            out[f"z_{d}"] = a[:, 3 + d]
        return out


# ----------------------------------------------------------------------------- helpers


def _stratified(shape: tuple[int, ...], generator: torch.Generator | None, slots: torch.Tensor,
                df: float | None = None) -> torch.Tensor:
    """Stratified standard draws (S, B, D), float64, keyed by row (``components/keyed.py``): for each row
    and column the S uniforms behind them fall one in each of [0, 1/S), ..., [(S-1)/S, 1), in a random
    order (a Latin hypercube over the columns), each uniform within its stratum; then the standard
    normal's (or, with ``df``, the Student-t's) inverse CDF. Each draw is still N(0, 1) (t(df))."""
    S = shape[0]
    pool = pool_shape(shape)
    dev = slots.device
    order = torch.rand(pool, generator=generator, device=dev).argsort(0).argsort(0)
    jitter = torch.rand(pool, generator=generator, device=dev, dtype=torch.float64)
    u = pooled(((order + jitter) / S).clamp(1e-12, 1 - 1e-12), slots)
    if df is not None:
        from scipy.special import stdtrit
        return torch.as_tensor(stdtrit(df, u.cpu().numpy()), device=dev)
    return math.sqrt(2.0) * torch.special.erfinv(2 * u - 1)


def _as_probs(p: torch.Tensor) -> torch.Tensor:
    """(B,) probabilities of a positive class or (B, C) class probabilities → (B, C), clamped."""
    p = torch.as_tensor(p).double()
    if p.ndim == 1:
        p = torch.stack([1 - p, p], -1)
    return p.clamp(1e-7, 1.0)


def _categorical_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) row by row for (N, C) probabilities."""
    p = p / p.sum(-1, keepdim=True)
    q = q.to(p.device) / q.to(p.device).sum(-1, keepdim=True)
    return (p * (torch.log(p) - torch.log(q))).sum(-1).clamp_min(0.0)


_MIN_FEATURE_INFO = 1e-6  # nats: below this in all, no feature moves the posterior (a collapsed one)


def _completeness(observed: np.ndarray, weights: np.ndarray, *, enc: FeatureEncoder | None = None,
                  source: str = "<dataframe>") -> np.ndarray:
    """(B,) the weighted share of the features observed, ``observed (B, F) @ w / Σ w`` in [0, 1]; NaN,
    with a warning, when the weights are unknown or sum to about 0: no feature changes the latent
    profile (a collapsed posterior), so there is nothing to be complete about. With ``enc`` the warning
    is counted in its open tally (:meth:`FeatureEncoder.one_warning_each`: once for all the frames of a
    call), else said now."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = float(w.sum()) if np.isfinite(w).all() else float("nan")
    if total > _MIN_FEATURE_INFO:
        return np.clip(observed.astype(np.float64) @ (w / total), 0.0, 1.0)

    def say(src: str, rows: float = 0) -> None:
        log.warning("%s: completeness is NaN (%d rows): no feature changes the latent profile (feature information "
                    "%.3g nats in all: the posterior has collapsed onto the prior); train longer, or with a lower "
                    "model.beta or more model.free_bits", src, rows, total)

    if enc is None:
        say(source, len(observed))
    else:
        enc.note(("completeness",), source, say, rows=len(observed))
    return np.full(len(observed), np.nan)


def _check_n_samples(n_samples: int | None, allow_none: bool = False) -> None:
    if n_samples is None and allow_none:
        return
    if n_samples is None or isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a whole number >= 1, got {n_samples!r}")


def _level_for_dtype(value: Any, dtype: Any) -> Any:
    """A training category ``value`` in the form a column of ``dtype`` holds: a bool in a boolean
    column (by :func:`~clm_torch.data.schema.yes_no_side`, the words the encoder reads True and False
    as), text (whole numbers without '.0') in a text column; otherwise unchanged."""
    if pd.api.types.is_bool_dtype(dtype):
        side = yes_no_side(value)
        return value if side is None else side
    if pd.api.types.is_string_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        return value if isinstance(value, str) else str(value)
    return value


def _float_dtype_like(dt: Any) -> Any:
    """The float dtype for an integer column that receives fractions: numpy → float64, pandas' nullable
    ints → Float64, Arrow ints → Arrow double."""
    if isinstance(dt, pd.ArrowDtype):
        import pyarrow as pa

        return pd.ArrowDtype(pa.float64())
    return "Float64" if isinstance(dt, pd.api.extensions.ExtensionDtype) else "float64"


def _restore(orig: pd.Series, values: np.ndarray) -> pd.Series:
    """``values`` (object array) as a Series with ``orig``'s index and, where possible, its dtype."""
    s = pd.Series(values, index=orig.index, name=orig.name)
    dt = orig.dtype
    if isinstance(dt, pd.CategoricalDtype):
        new = [v for v in pd.unique(s.dropna()) if v not in dt.categories]
        cats = list(dt.categories) + new
        return s.astype(pd.CategoricalDtype(cats, ordered=dt.ordered))
    try:
        if pd.api.types.is_integer_dtype(dt) and not pd.api.types.is_bool_dtype(dt):
            num = pd.to_numeric(s, errors="coerce").astype("float64")
            fractions = bool((np.mod(num.dropna().to_numpy(), 1) != 0).any())
            if fractions or (num.isna().any() and not isinstance(dt, pd.api.extensions.ExtensionDtype)):
                return num.astype(_float_dtype_like(dt))  # never truncated to an int
            return num.astype(dt)
        if pd.api.types.is_string_dtype(dt) and not pd.api.types.is_object_dtype(dt):
            return s.map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).astype(dt)
        return s.astype(dt)
    except (TypeError, ValueError):
        return s


def _fill(orig: pd.Series, miss: np.ndarray, values: np.ndarray) -> pd.Series:
    """``orig`` with the cells in ``miss`` replaced by ``values`` (same length), dtype kept where possible."""
    if not miss.any():
        return orig
    v = orig.astype(object).to_numpy().copy()
    v[miss] = values[miss]
    return _restore(orig, v)


# ----------------------------------------------------------------------------- fit on a frame


def _validation_cells(enc_t: Mapping[str, torch.Tensor], fraction: float, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(int(seed) + 7777)
    v_num = enc_t["num_mask"] & (torch.rand(enc_t["num_mask"].shape, generator=g) < fraction)
    v_cat = enc_t["cat_mask"] & (torch.rand(enc_t["cat_mask"].shape, generator=g) < fraction)
    return v_num, v_cat


@torch.no_grad()
def score_cells(model: InfoGapVAE, tensors: Mapping[str, torch.Tensor], hid_num: torch.Tensor,
                hid_cat: torch.Tensor, truth_num_raw: np.ndarray, truth_cat: torch.Tensor, num_scale: np.ndarray,
                n_samples: int | None = None,
                batch_size: int = 8192, seed: int = 0) -> tuple[float, float]:
    """Impute the cells in ``hid_*`` (unobserved in ``tensors``) and score them the way the Telco
    benchmark does: NRMSE (raw-scale RMSE / ``num_scale``) averaged over numeric columns, accuracy
    averaged over categorical columns (columns without such cells are skipped)."""
    was = model._eval_mode()
    rows = (hid_num.any(1) | hid_cat.any(1)).nonzero(as_tuple=True)[0]
    nums, cats = [], []
    for i in range(0, len(rows), batch_size):
        idx = rows[i: i + batch_size]
        b = {k: tensors[k].index_select(0, idx).to(model.device) for k in _FEATURE_KEYS}
        r = model.impute_batch(b, n_samples, torch.Generator(device=model.device).manual_seed(seed))
        nums.append(r["num"].cpu().numpy())
        cats.append(r["cat"].cpu())
    model.train(was)
    if not nums:
        return float("nan"), float("nan")
    num = np.concatenate(nums)
    cat = torch.cat(cats)
    hn, hc = hid_num[rows].numpy(), hid_cat[rows]
    tn = truth_num_raw[rows.numpy()]
    nr = []
    for j in range(num.shape[1]):
        if hn[:, j].any():
            p = model._finish_numeric(num[:, j], j)
            nr.append(np.sqrt(np.mean((p[hn[:, j]] - tn[hn[:, j], j]) ** 2)) / num_scale[j])
    true_cat = truth_cat[rows]
    ac = [float((cat[hc[:, j], j] == true_cat[hc[:, j], j]).double().mean()) for j in range(cat.shape[1])
          if hc[:, j].any()]
    return (float(np.mean(nr)) if nr else float("nan")), (float(np.mean(ac)) if ac else float("nan"))


def fit_imputer(
    df: pd.DataFrame,
    *,
    roles: Mapping[str, Sequence[str]] | None = None,
    id_col: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    max_epochs: int = 200,
    eval_every: int = 5,
    patience: int = 6,
    batch_size: int = 256,
    refit: bool = False,
    log_transform: str | Sequence[str] = "auto",
    eval_samples: int | None = None,
    average_snapshots: int = 0,
    **model_kwargs: Any,
) -> tuple[InfoGapVAE, dict[str, Any]]:
    """Fit an :class:`InfoGapVAE` on a raw table with missing cells, choosing the number of epochs
    on a validation mask carved from its *observed* cells.

    A ``val_fraction`` of the observed cells (seeded) is hidden from training; every ``eval_every``
    epochs they are imputed and scored (NRMSE over numeric columns + categorical error; lower is
    better), and the best weights are kept; training stops after ``patience`` evaluations without
    improvement. With ``refit`` a fresh model is then trained on all observed cells for the chosen
    number of epochs. The returned model carries its preprocessing (``impute(df)`` etc. work).

    Args:
        df: the table (NaN = missing); no target needed.
        roles: role overrides for :func:`~clm_torch.data.schema.infer_schema`, e.g.
            ``{"numeric": ["tenure"]}``.
        id_col: optional id column (kept out of the features).
        log_transform: passed to the :class:`FeatureEncoder`.
        eval_samples: latent samples for the validation imputations (default: the model's).
        average_snapshots: if > 1, also try the average of the weights of that many consecutive
            evaluation snapshots around the best one (stochastic weight averaging, Izmailov et al.
            2018); the averaged model is kept only if it scores better on the validation cells.
            One model either way: every API method works on it.
        model_kwargs: :class:`InfoGapVAE` hyperparameters (``latent_dim``, ``beta``, ``lr``, ...).

    Returns:
        ``(model, info)``; ``info`` holds ``best_epoch``, ``val_nrmse``, ``val_cat_acc``,
        ``val_history``, ``averaged`` (the snapshot epochs averaged, empty if none), ``params`` and
        ``seconds``.
    """
    import time

    import lightning as L

    from clm_torch.data.cleaning import clean_table
    from clm_torch.data.datamodules import batch_loader
    from clm_torch.data.schema import infer_schema

    t0 = time.time()
    L.seed_everything(seed, workers=True, verbose=False)
    schema = infer_schema(df, id_col=id_col, overrides=roles, source="<fit_imputer>")
    clean, _ = clean_table(df, schema, source="<fit_imputer>")
    enc = FeatureEncoder.from_schema(schema, log_transform=log_transform).fit(clean, source="<fit_imputer>")
    full = enc.transform(clean, source="<fit_imputer>")
    full.pop("y", None)
    v_num, v_cat = _validation_cells(full, val_fraction, seed)
    train_t = dict(_observed_only(full, full["num_mask"] & ~v_num, full["cat_mask"] & ~v_cat))
    truth_raw = enc.inverse_numeric(full["num"])
    raw_std = np.array([float(pd.to_numeric(clean[c]).std()) for c in enc.num_columns])
    raw_std = np.where(raw_std > 0, raw_std, 1.0)
    prep = {"encoder": enc.state_dict(), "schema": schema.to_dict(), "cleaning": {}}

    def build() -> InfoGapVAE:
        m = InfoGapVAE(**enc.dims(), **model_kwargs)
        m.set_preprocessing(prep)
        return m

    history: list[tuple[int, float, float]] = []
    state: dict[str, Any] = {"best": math.inf, "epoch": 0, "weights": None, "bad": 0}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}  # epoch -> weights (only with average_snapshots)
    n_avg = int(average_snapshots)

    def cell_score(nr: float, ac: float) -> float:
        return (0.0 if math.isnan(nr) else nr) + (0.0 if math.isnan(ac) else 1.0 - ac)

    class _SelectOnValidationCells(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: InfoGapVAE) -> None:
            ep = trainer.current_epoch + 1
            if ep % eval_every and ep != trainer.max_epochs:
                return
            nr, ac = score_cells(pl_module, train_t, v_num, v_cat, truth_raw, full["cat"], raw_std, eval_samples,
                                 seed=seed)
            history.append((ep, nr, ac))
            log.info("fit_imputer epoch %d: validation cells NRMSE %.4f, accuracy %.4f", ep, nr, ac)
            sc = cell_score(nr, ac)
            if n_avg > 1:
                snapshots[ep] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
                while len(snapshots) > 2 * n_avg:  # keep a window: enough to centre it on a best one
                    old = min(snapshots)
                    if old == state["epoch"]:
                        break
                    del snapshots[old]
            if sc < state["best"] - 1e-4:
                state.update(best=sc, epoch=ep, bad=0,
                             weights={k: v.detach().clone() for k, v in pl_module.state_dict().items()})
            else:
                state["bad"] += 1
                if state["bad"] >= patience:
                    trainer.should_stop = True

    def trainer(epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
        return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         gradient_clip_val=1.0, num_sanity_val_steps=0, limit_val_batches=0,
                         use_distributed_sampler=False)

    model = build()
    loader = batch_loader(train_t, batch_size, shuffle=True, seed=seed)
    trainer(max_epochs, [_SelectOnValidationCells()]).fit(model, train_dataloaders=loader)
    if state["weights"] is not None:
        model.load_state_dict(state["weights"])
    best_epoch = int(state["epoch"])
    val = next(((nr, ac) for ep, nr, ac in history if ep == best_epoch), (float("nan"), float("nan")))
    averaged: list[int] = []
    if n_avg > 1 and best_epoch in snapshots:
        epochs = sorted(snapshots)
        i = epochs.index(best_epoch)
        lo = max(0, min(i - n_avg // 2, len(epochs) - n_avg))
        window = epochs[lo:lo + n_avg]
        if len(window) > 1:
            avg = {k: (torch.stack([snapshots[e][k].float() for e in window]).mean(0).to(v.dtype)
                       if v.is_floating_point() else v)
                   for k, v in snapshots[best_epoch].items()}
            model.load_state_dict(avg)
            nr, ac = score_cells(model, train_t, v_num, v_cat, truth_raw, full["cat"], raw_std, eval_samples,
                                 seed=seed)
            log.info("fit_imputer: average of epochs %s: validation cells NRMSE %.4f, accuracy %.4f", window, nr, ac)
            if cell_score(nr, ac) < state["best"] - 1e-4:
                averaged, val = window, (nr, ac)
            else:
                model.load_state_dict(state["weights"])
    snapshots.clear()
    if refit and best_epoch > 0:
        L.seed_everything(seed, workers=True, verbose=False)
        model = build()
        trainer(best_epoch, []).fit(model, train_dataloaders=batch_loader(
            {k: full[k] for k in _FEATURE_KEYS}, batch_size, shuffle=True, seed=seed))
    model._set_reference(full)
    model.eval()
    info = {"best_epoch": best_epoch, "epochs_run": history[-1][0] if history else 0, "val_nrmse": val[0],
            "val_cat_acc": val[1], "val_history": history, "averaged": averaged, "refit": refit,
            "params": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t0, 1)}
    return model, info
