"""ChurnClassifier: calibrated churn probability on mixed-type customer tables."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics import CatMetric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.events import add_time_features, parse_sequence_column
from clm_torch.data.schema import SchemaError
from clm_torch.models.base import TableTargetModule, UnreadableRows
from clm_torch.models.components.calibration import fit_platt, fit_temperature
from clm_torch.models.components.sequence import SEQUENCE_ENCODERS, PurchaseSequenceEncoder
from clm_torch.models.components.tabular import EnsembleMLP, FeatureTokenizer, FusedFirstLayer
from clm_torch.utils.io import SettingError
from clm_torch.utils.progress import chunks

log = logging.getLogger(__name__)


def binary_metrics(prob: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """AUROC, average precision, log loss and Brier score of probabilities ``prob`` (n,) for labels ``y`` (n,)."""
    prob = prob.float().clamp(1e-7, 1 - 1e-7)
    y = y.float()
    yi = y.long()
    return {
        "auroc": binary_auroc(prob, yi),
        "ap": binary_average_precision(prob, yi),
        "log_loss": F.binary_cross_entropy(prob, y),
        "brier": ((prob - y) ** 2).mean(),
    }


def sequence_layout(encoder: FeatureEncoder) -> dict[str, Any]:
    """Where the purchase-sequence columns (``seq{k}_days|amount|item``) sit among the encoded inputs.

    Returns primitives (a model hyperparameter): ``num_tab`` / ``cat_tab``, the indices of the
    other (tabular) numeric and categorical columns; ``days``, ``amount`` (numeric indices) and
    ``item`` (categorical indices), one per step k = 0 … K − 1 (−1 where the column is absent);
    ``n_items``, the size of the item vocabulary shared by the steps (the union of the per-column
    vocabularies, index 0 = unknown).

    Raises:
        ValueError: there is no ``seq{k}_days`` column.
    """
    num_seq = {parse_sequence_column(c): j for j, c in enumerate(encoder.num_columns)}
    num_seq = {key: j for key, j in num_seq.items() if key is not None and key[1] in ("days", "amount")}
    cat_seq = {parse_sequence_column(c): j for j, c in enumerate(encoder.cat_columns)}
    cat_seq = {key: j for key, j in cat_seq.items() if key is not None and key[1] == "item"}
    steps = [k for k, kind in num_seq if kind == "days"]
    if not steps:
        raise SettingError("model.sequence_encoder needs purchase-sequence columns seq{k}_days in the data; "
                           "use data=events with data.sequence_length > 0")
    n_steps = max(steps) + 1
    return {
        "num_tab": [j for j in range(encoder.n_num) if j not in num_seq.values()],
        "cat_tab": [j for j in range(encoder.n_cat) if j not in cat_seq.values()],
        "days": [num_seq.get((k, "days"), -1) for k in range(n_steps)],
        "amount": [num_seq.get((k, "amount"), -1) for k in range(n_steps)],
        "item": [cat_seq.get((k, "item"), -1) for k in range(n_steps)],
        "n_items": 1 + len(_item_union(encoder, [j for (k, _), j in cat_seq.items() if k < n_steps])),
    }


def _item_union(encoder: FeatureEncoder, cat_idx: Sequence[int]) -> list[str]:
    """Sorted union of the item keys of the given categorical columns (``<unk>`` left out)."""
    return sorted({key for j in cat_idx for key in encoder.keys[encoder.cat_columns[j]][1:]})


class ChurnClassifier(TableTargetModule):
    """Binary churn classifier: PLR numeric embeddings + categorical embeddings → a batched
    ensemble of ``k_ensemble`` MLPs → one logit each. Optionally ``additive_members`` more
    members are additive models (a linear read-out of their own embeddings, with PLR scale
    ``additive_sigma``: one learned shape function per feature, no interactions). All members are
    averaged in probability space and calibrated (Platt or temperature) on the validation split at
    the end of every validation epoch. The calibration lives in buffers, hence in every checkpoint.

    Args:
        n_num, cat_cardinalities, n_binary: input sizes (from the DataModule).
        pos_rate: share of positives in the training split (for ``pos_weight="balanced"``).
        d_embed: embedding size per feature.
        hidden: hidden layer sizes of each MLP member.
        k_ensemble: number of MLP members trained together (1 = a single MLP).
        dropout, lr, weight_decay: regularisation and optimiser.
        pos_weight: ``"balanced"`` (neg/pos), a float, or None: weight of positives in the loss.
            Weighing positives by w multiplies the learned odds by w; the calibration undoes it
            (Platt's bias absorbs it; temperature scaling and ``"none"`` subtract log w from the
            ensemble logit), so the probabilities are not inflated towards churn.
        calibration: ``"platt"``, ``"temperature"`` or ``"none"``.
        n_frequencies, sigma, plr_lite: numeric embedding settings.
        additive_members: number of additive members (0 = none); they are averaged with the MLP
            members with equal weight per member.
        additive_sigma: PLR frequency scale of the additive members' own numeric embeddings.
        scheduler: ``"none"`` or ``"cosine"`` (over ``trainer.max_epochs``).
        nan_policy: ``"raise"`` or ``"skip"`` on a non-finite loss.
        infogap_ckpt: path of a trained InfoGapVAE checkpoint. ``train()`` loads it, freezes it,
            adds its latent mean, posterior std and gap scores to the inputs and routes missing
            cells through its imputation (:mod:`clm_torch.models.infogap_features`). Its weights
            and preprocessing are then stored in this model's checkpoint: the file is needed only
            for training.
        infogap: the frozen VAE's hyperparameters (set by ``train()``, not by hand); rebuilds the
            VAE when the checkpoint is loaded.
        infogap_impute: fill missing inputs with the VAE's imputation (else only add its features).
        infogap_samples: latent samples for the VAE's imputation and gap scores.
        infogap_features: ``"all"`` (latent means and stds and the gap summaries) or ``"summary"``
            (only ``vae_gap_score``, ``vae_completeness``, ``vae_n_missing``) as extra inputs.
        sequence_encoder: ``"none"``, ``"gru"`` or ``"attention"``: encode the last purchases
            (columns ``seq{k}_days``, ``seq{k}_amount``, ``seq{k}_item`` from ``data=events`` with
            ``data.sequence_length`` > 0) with a :class:`PurchaseSequenceEncoder`. Per step it
            sees the days before the cutoff, the gap to the next newer purchase, the amount, an
            amount-observed flag (days, gaps and amounts all on the scale the encoder fitted for
            the most recent step) and an item embedding shared by all steps. Its output is
            concatenated to the tabular embeddings of every MLP member and of every additive
            member (for those a linear read-out: the sequence acts as one more additive term).
            The sequence columns are then *not* also tabular inputs; with ``"none"`` they are
            (plain wide columns, the baseline to compare against).
        sequence_hidden: size of the sequence encoding (the GRU state).
        sequence_d_item: item embedding size of the sequence encoder (0 = ignore items).
        sequence_layout: where the sequence columns are among the inputs (:func:`sequence_layout`);
            filled in from the fitted encoder by :meth:`set_preprocessing`, not by hand. The
            modules are built once it is known (at once when it is given, e.g. from a checkpoint).
    """

    monitor = "val/auroc"
    monitor_mode = "max"
    target_type = "binary"

    def __init__(
        self,
        n_num: int,
        cat_cardinalities: Sequence[int],
        n_binary: int = 0,
        pos_rate: float = 0.5,
        d_embed: int = 16,
        hidden: Sequence[int] = (64, 64),
        k_ensemble: int = 8,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        pos_weight: str | float | None = None,
        calibration: str = "platt",
        n_frequencies: int = 16,
        sigma: float = 0.1,
        plr_lite: bool = False,
        additive_members: int = 0,
        additive_sigma: float = 1.0,
        scheduler: str = "none",
        nan_policy: str = "raise",
        infogap_ckpt: str | None = None,
        infogap: dict[str, Any] | None = None,
        infogap_impute: bool = True,
        infogap_samples: int = 8,
        infogap_features: str = "all",
        sequence_encoder: str = "none",
        sequence_hidden: int = 32,
        sequence_d_item: int = 16,
        sequence_layout: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if calibration not in ("platt", "temperature", "none"):
            raise ValueError(f"model.calibration must be platt, temperature or none, not {calibration!r}")
        if sequence_encoder not in SEQUENCE_ENCODERS:
            raise ValueError(f"model.sequence_encoder must be one of {SEQUENCE_ENCODERS}, not {sequence_encoder!r}")
        if infogap_features not in ("all", "summary"):
            raise ValueError(f"model.infogap_features must be all or summary, not {infogap_features!r}")
        self.tokenizer: FeatureTokenizer | None = None
        self.head: EnsembleMLP | None = None
        self.additive_tokenizer: FeatureTokenizer | None = None
        self.additive_head: EnsembleMLP | None = None
        self.sequence: PurchaseSequenceEncoder | None = None
        self._fused: tuple[FusedFirstLayer, FusedFirstLayer | None] | None = None  # see fused_inference
        if sequence_encoder == "none":
            self._build_members(n_num, list(cat_cardinalities), 0)
        elif sequence_layout is not None:
            self._build_sequence_model(sequence_layout)
        # else: built by set_preprocessing, once the fitted encoder tells where the sequence columns are
        if pos_weight == "balanced":
            pw = (1 - pos_rate) / max(pos_rate, 1e-6)
        else:
            pw = float(pos_weight) if pos_weight is not None else 1.0
        self.register_buffer("pos_weight", torch.tensor(pw))
        # logit → a · logit + b; until a validation epoch fits it, only the pos_weight shift is undone
        self.register_buffer("calib", torch.tensor([1.0, 0.0 - float(np.log(pw))]))
        self.stage_logits = torch.nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self.stage_labels = torch.nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self.encoder: FeatureEncoder | None = None
        self.infogap = None
        if infogap is not None:  # the frozen VAE; its weights come from attach_infogap or the checkpoint
            from clm_torch.models.infogap_vae import InfoGapVAE

            self.infogap = InfoGapVAE(**infogap)
            self.infogap.requires_grad_(False)
            self.infogap.eval()

    def _build_members(self, n_num: int, cat_cardinalities: list[int], d_extra: int) -> None:
        """The tokenizers and the member heads; ``d_extra`` more inputs (the sequence encoding) per member."""
        hp = self.hparams
        self.tokenizer = FeatureTokenizer(n_num, cat_cardinalities, hp.d_embed, hp.n_frequencies, hp.sigma,
                                          hp.plr_lite)
        self.head = EnsembleMLP(self.tokenizer.out_dim + d_extra, list(hp.hidden), 1, k=hp.k_ensemble,
                                dropout=hp.dropout)
        if hp.additive_members > 0:  # no hidden layer: a linear read-out of per-feature embeddings = an additive model
            self.additive_tokenizer = FeatureTokenizer(n_num, cat_cardinalities, hp.d_embed, hp.n_frequencies,
                                                       hp.additive_sigma, hp.plr_lite)
            self.additive_head = EnsembleMLP(self.additive_tokenizer.out_dim + d_extra, [], 1,
                                             k=hp.additive_members)

    def _build_sequence_model(self, layout: dict[str, Any]) -> None:
        """Members on the tabular columns only, plus the sequence encoder (see :func:`sequence_layout`)."""
        hp = self.hparams
        cards = list(hp.cat_cardinalities)
        self.sequence = PurchaseSequenceEncoder(hp.sequence_encoder, 4, int(layout["n_items"]),
                                                d_item=hp.sequence_d_item, hidden=hp.sequence_hidden,
                                                n_heads=4 if hp.sequence_hidden % 4 == 0 else 1)
        self._build_members(len(layout["num_tab"]), [cards[j] for j in layout["cat_tab"]], self.sequence.out_dim)
        for name in ("num_tab", "cat_tab", "days", "amount", "item"):
            self.register_buffer(f"seq_{name}", torch.tensor(list(layout[name]), dtype=torch.long), persistent=False)

    def _on_preprocessing(self) -> None:
        self.encoder = FeatureEncoder.from_state_dict(self.preprocessing["encoder"])
        if self.infogap is not None and "infogap" in self.preprocessing:
            self.infogap.set_preprocessing(self.preprocessing["infogap"])
        if self.hparams.get("sequence_encoder", "none") != "none":
            self._attach_sequence_preprocessing()

    def _attach_sequence_preprocessing(self) -> None:
        """Check (or, the first time, record and build) the sequence layout of the fitted encoder,
        and derive from the encoder what the sequence encoder needs: the map of each step's item
        vocabulary into the shared one, and the scales of the day and amount columns."""
        enc = self.encoder
        layout = sequence_layout(enc)
        if self.hparams.get("sequence_layout") is None:
            self.hparams.sequence_layout = layout
            self._build_sequence_model(layout)
            self.to(self.calib.device)  # the new modules join the existing ones (a no-op before training)
        elif dict(self.hparams.sequence_layout) != layout:
            raise ValueError("the fitted encoder's sequence columns do not match this model's sequence_layout; "
                             "the preprocessing belongs to another model")
        device = self.calib.device
        union = {key: i + 1 for i, key in enumerate(_item_union(enc, [j for j in layout["item"] if j >= 0]))}
        item_map, offsets = [0], []  # flat map: offset of step k + local index → shared index
        for j in layout["item"]:
            if j < 0:
                offsets.append(0)  # absent column: local index 0 → item_map[0] = unknown
                continue
            offsets.append(len(item_map))
            item_map += [0, *(union[key] for key in enc.keys[enc.cat_columns[j]][1:])]
        self.register_buffer("seq_item_map", torch.tensor(item_map, dtype=torch.long, device=device),
                             persistent=False)
        self.register_buffer("seq_item_offset", torch.tensor(offsets, dtype=torch.long, device=device),
                             persistent=False)
        for kind in ("days", "amount"):
            cols = list(layout[kind])
            present = [j for j in cols if j >= 0]
            ref = present[0] if present else -1  # the most recent step's column sets the shared scale
            stats = [[float(enc.num_mean[j]), float(enc.num_std[j]), float(enc.num_log[j])] if j >= 0
                     else [0.0, 1.0, 0.0] for j in [*cols, ref]]
            self.register_buffer(f"seq_{kind}_stats", torch.tensor(stats, dtype=torch.float32, device=device),
                                 persistent=False)

    def attach_infogap(self, vae: Any) -> None:
        """Copy a trained InfoGapVAE (weights and preprocessing) into this model's frozen VAE."""
        if self.infogap is None:
            raise RuntimeError("this ChurnClassifier was built without `infogap` hyperparameters")
        self.infogap.load_state_dict(vae.state_dict())
        self.set_preprocessing({**(self.preprocessing or {}), "infogap": vae.preprocessing})

    def train(self, mode: bool = True) -> "ChurnClassifier":
        super().train(mode)
        if self.infogap is not None:
            self.infogap.eval()  # frozen: never in training mode
        return self

    def on_fit_start(self) -> None:
        # Lightning warns about modules in eval mode when training starts (just before on_train_start);
        # the frozen VAE is in eval mode on purpose. Exactly that count is silenced until then, so that
        # any other eval module, and any later fit, still warns.
        self._drop_eval_filter()
        if self.infogap is not None:
            n = sum(1 for _ in self.infogap.modules())
            warnings.filterwarnings("ignore", message=rf"Found {n} module\(s\) in eval mode at the start of training")
            self._eval_filter = warnings.filters[0]

    def on_train_start(self) -> None:
        super().on_train_start()
        self._drop_eval_filter()

    def on_fit_end(self) -> None:
        self._drop_eval_filter()

    def _drop_eval_filter(self) -> None:
        entry = getattr(self, "_eval_filter", None)
        self._eval_filter = None
        if entry is not None and entry in warnings.filters:
            warnings.filters.remove(entry)
            getattr(warnings, "_filters_mutated", lambda: None)()  # drop the cached decisions (CPython)

    def with_infogap(self, df: pd.DataFrame, source: str = "<dataframe>") -> pd.DataFrame:
        """``df`` with the VAE's features and imputations (unchanged without a VAE)."""
        if self.infogap is None:
            return df
        from clm_torch.models.infogap_features import infogap_frame

        return infogap_frame(self.infogap, df, impute=bool(self.hparams.infogap_impute),
                             n_samples=int(self.hparams.infogap_samples),
                             features=str(self.hparams.get("infogap_features", "all")), source=source)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Member logits (k_ensemble + additive_members, batch)."""
        if self.sequence is not None:
            return self._forward_with_sequence(batch)
        if self.tokenizer is None:
            raise RuntimeError("model.sequence_encoder is set but the model has no preprocessing yet; "
                               "call set_preprocessing(datamodule.preprocessing_state()) first")
        if self._fused is not None:
            return self._forward_fused(batch["num"], batch["num_mask"], batch["cat"])
        h = self.tokenizer(batch["num"], batch["num_mask"], batch["cat"])
        logits = self.head(h).squeeze(-1)
        if self.additive_head is not None:
            g = self.additive_tokenizer(batch["num"], batch["num_mask"], batch["cat"])
            logits = torch.cat([logits, self.additive_head(g).squeeze(-1)], dim=0)
        return logits

    def _forward_fused(self, num: torch.Tensor, num_mask: torch.Tensor, cat: torch.Tensor,
                       extra: torch.Tensor | None = None) -> torch.Tensor:
        """The forward with the categorical embeddings folded into the first layers (inference only)."""
        main, additive = self._fused
        logits = main(num, num_mask, cat, extra).squeeze(-1)
        if additive is not None:
            logits = torch.cat([logits, additive(num, num_mask, cat, extra).squeeze(-1)], dim=0)
        return logits

    #: largest fused table (floats) built for inference; above it the plain forward is used
    fuse_limit: int = 1 << 24
    #: rows per forward pass in ``predict_proba`` on CPU (its activations then fit in cache;
    #: 2,048 was fastest of 512-8,192 in ``experiments/bench_load.py``'s setting)
    forward_rows: int = 2048

    @contextmanager
    def fused_inference(self):
        """Within this context (eval mode, no gradients) the forward uses :class:`FusedFirstLayer`:
        each categorical value's contribution to every member's first layer is looked up instead of
        multiplied out. Same probabilities up to float rounding; several times fewer multiply-adds
        per row. A snapshot of the current weights, released on exit."""
        pairs = [(self.tokenizer, self.head), (self.additive_tokenizer, self.additive_head)]
        ok = (self.tokenizer is not None and not self.training and not torch.is_grad_enabled()
              and sum(FusedFirstLayer.table_size(t, h) for t, h in pairs if h is not None) <= self.fuse_limit)
        if ok:
            self._fused = tuple(FusedFirstLayer(t, h) if h is not None else None for t, h in pairs)
        try:
            yield
        finally:
            self._fused = None

    def _forward_with_sequence(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        num, num_mask, cat = batch["num"], batch["num_mask"], batch["cat"]
        s = self.sequence(*self.sequence_inputs(batch))
        tab = (num.index_select(1, self.seq_num_tab), num_mask.index_select(1, self.seq_num_tab),
               cat.index_select(1, self.seq_cat_tab))
        if self._fused is not None:
            return self._forward_fused(*tab, s.to(num.dtype))
        h = torch.cat([self.tokenizer(*tab), s.to(num.dtype)], dim=1)
        logits = self.head(h).squeeze(-1)
        if self.additive_head is not None:
            g = torch.cat([self.additive_tokenizer(*tab), s.to(num.dtype)], dim=1)
            logits = torch.cat([logits, self.additive_head(g).squeeze(-1)], dim=0)
        return logits

    def sequence_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoded batch → the sequence encoder's inputs: ``steps`` (batch, K, 4) = days
        before the cutoff, gap to the next newer purchase (for step 0: the recency), amount, amount
        observed; ``items`` (batch, K) shared item indices; ``valid`` (batch, K) bool.

        Every step column was standardised by the encoder on its own; here each is mapped back to
        raw values and put on the scale of the most recent step's column, so that the encoder's
        weights mean the same thing at every step.
        """
        if not hasattr(self, "seq_item_map"):
            raise RuntimeError("the sequence encoder has no preprocessing; load the model from a checkpoint")
        num, num_mask, cat = batch["num"].float(), batch["num_mask"], batch["cat"]

        def column(kind: str) -> tuple[torch.Tensor, torch.Tensor]:  # raw values (B, K), observed (B, K)
            idx = getattr(self, f"seq_{kind}")
            st = getattr(self, f"seq_{kind}_stats")[:-1]
            z = num.index_select(1, idx.clamp(min=0))
            x = z * st[:, 1] + st[:, 0]
            x = torch.where(st[:, 2] > 0, torch.expm1(x.clamp(max=50.0)), x)
            return x, num_mask.index_select(1, idx.clamp(min=0)) & (idx >= 0)

        def rescale(x: torch.Tensor, kind: str) -> torch.Tensor:  # raw → the most recent step's encoded scale
            mean, std, log = getattr(self, f"seq_{kind}_stats")[-1]
            t = torch.log1p(x.clamp(min=0.0)) if log > 0 else x
            return (t - mean) / std

        days, valid = column("days")
        days = torch.where(valid, days.clamp(min=0.0), torch.zeros_like(days))
        newer = torch.cat([days.new_zeros(days.shape[0], 1), days[:, :-1]], dim=1)
        gap = (days - newer).clamp(min=0.0)
        amount, a_obs = column("amount")
        a_obs = a_obs & valid
        amount_z = torch.where(a_obs, rescale(amount, "amount"), torch.zeros_like(amount))
        steps = torch.stack([rescale(days, "days"), rescale(gap, "days"), amount_z, a_obs.float()], dim=-1)
        steps = steps * valid.unsqueeze(-1)
        if cat.shape[1]:
            local = torch.where(self.seq_item >= 0, cat.index_select(1, self.seq_item.clamp(min=0)),
                                torch.zeros_like(cat[:, :1]))
        else:  # no categorical column at all (a log without data.item_col): every step's item is unknown
            local = cat.new_zeros(cat.shape[0], len(self.seq_item))
        items = self.seq_item_map[local + self.seq_item_offset]
        return steps, items, valid

    def ensemble_logit(self, member_logits: torch.Tensor) -> torch.Tensor:
        """Average the members in probability space and return the logit (batch,)."""
        p = torch.sigmoid(member_logits.float()).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.logit(p)

    def calibrated_prob(self, logit: torch.Tensor) -> torch.Tensor:
        a, b = self.calib[0], self.calib[1]
        return torch.sigmoid(a * logit.float() + b)

    # ------------------------------------------------------------------ steps
    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        y = batch["y"].unsqueeze(0).expand_as(logits)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=self.pos_weight)
        return loss, logits

    # training_step, validation_step and test_step: TableTargetModule's
    def update_stage(self, stage: str, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        self.stage_logits[stage].update(self.ensemble_logit(logits))
        self.stage_labels[stage].update(batch["y"])

    def _eval_epoch_end(self, stage: str) -> None:
        logits = self.stage_logits[stage].compute().float().reshape(-1)  # (a split of one row: 0-d)
        y = self.stage_labels[stage].compute().float().reshape(-1)
        self.stage_logits[stage].reset()
        self.stage_labels[stage].reset()
        # only while fitting: trainer.validate(model, other_data) must measure the model, not refit it
        if stage == "val" and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.fit_calibration(logits, y)
        prob = self.calibrated_prob(logits)
        metrics = binary_metrics(prob, y)
        if stage == "test":  # in metrics.json and every logger, as clm-evaluate's eval/ece
            from clm_torch.callbacks import expected_calibration_error

            metrics["ece"] = torch.tensor(expected_calibration_error(prob.detach().cpu().numpy(), y.cpu().numpy()))
        for k, v in metrics.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "auroc")

    def fit_calibration(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Fit the calibration on validation logits (batch,) and labels (batch,).

        A ``pos_weight`` w ≠ 1 shifts the learned logits by log w; Platt's bias absorbs that, while
        temperature scaling is fitted to, and ``none`` returns, the logits less log w."""
        method = self.hparams.calibration
        shift = float(torch.log(self.pos_weight.detach().double().cpu()))
        if method == "platt":
            a, b = fit_platt(logits, y)
        elif method == "temperature":
            a = 1.0 / fit_temperature(logits - shift, y)
            b = 0.0 - a * shift
        else:
            a, b = 1.0, 0.0 - shift
        self.calib.copy_(torch.tensor([a, b], device=self.calib.device))

    # ------------------------------------------------------------------ inference on raw data
    @torch.no_grad()
    def predict_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Calibrated churn probability (batch,) for an encoded batch."""
        return self.calibrated_prob(self.ensemble_logit(self(batch)))

    @torch.no_grad()
    def predict_proba(self, df: pd.DataFrame, *, batch_size: int = 65536, source: str = "<dataframe>",
                      compile: bool = False) -> np.ndarray:
        """Churn probabilities (n,) for a raw DataFrame with the training columns.

        Extra columns are ignored and the target is not needed; NaN and unseen categories are
        handled as missing. The relative time features of ``data.time_features=relative|both``
        are derived from a plain customer-view frame when it lacks them. Rows are encoded in
        chunks of ``batch_size`` and each chunk goes through the network in forward passes of
        :attr:`forward_rows` rows (on CPU), with the categorical embeddings fused into the first
        layers (:meth:`fused_inference`), so memory stays bounded (a few MB per chunk of encoded
        inputs) and the activations stay in cache.

        ``compile=True`` (CPU only) runs those forward passes through ``torch.compile``, which fuses
        the element-wise steps between the matrix products into generated C++ loops: the network
        runs ~1.4-1.6x faster (``experiments/bench_inference.py``), but the first call of a process
        compiles for ~30 s (~4 s when torch's on-disk cache already holds the graph), so it pays
        for repeated or very large scoring runs. It needs a C++ compiler; without one (or on any
        compile error) scoring goes on uncompiled, with a warning. Same probabilities up to float
        rounding.

        Raises:
            SchemaError: a required column is missing or a numeric column holds text.
        """
        if self.encoder is None:
            raise RuntimeError("this model has no fitted preprocessing; load it from a clm_torch checkpoint")
        if not isinstance(df, pd.DataFrame):
            raise SchemaError(f"predict_proba expects a pandas DataFrame, got {type(df).__name__}", source=source)
        was_training = self.training
        self.eval()
        out = np.empty(len(df), dtype=np.float32)
        chunk = max(batch_size, 1)
        if len(df) == 0:  # nothing to score, but the columns are still checked
            self.encoder.transform(self.with_infogap(add_time_features(df, self.encoder.feature_columns, source),
                                                     source=source), source=source, with_target=False)
        unreadable = UnreadableRows()
        vae_encoder = self.infogap.encoder if self.infogap is not None else None
        forward = self._compiled_predict_batch() if compile else self.predict_batch
        with torch.inference_mode(), self.fused_inference(), self.encoder.one_warning_each(vae_encoder):
            self.encoder.check_frame(df, source=source)  # the whole frame (the VAE's reads of its chunks share it)
            for start, _ in chunks(len(df), chunk, f"scoring {len(df):,} customers"):
                part = add_time_features(df.iloc[start: start + chunk], self.encoder.feature_columns, source)  # time_features
                part = self.with_infogap(part, source=source)
                enc = self.encoder.transform(part, source=source, with_target=False)
                unreadable.add(enc, part.index)
                enc = {k: v.to(self.device) for k, v in enc.items() if k != "y"}
                step = self.forward_rows if self.device.type == "cpu" else chunk
                for i in range(0, len(part), step):  # small forward batches stay in the CPU's cache
                    b = {k: v[i: i + step] for k, v in enc.items()}
                    # one compiled graph, for full passes; a shorter last pass runs uncompiled
                    f = forward if len(b["num"]) == step else self.predict_batch
                    out[start + i: start + i + len(b["num"])] = f(b).float().cpu().numpy()
        self.train(was_training)
        unreadable.warn(source, len(df), "churn probability")
        return out

    def _compiled_predict_batch(self):
        """:meth:`predict_batch` through ``torch.compile`` (see :meth:`predict_proba`'s ``compile``),
        falling back to the uncompiled method, with one warning, when compiling fails."""
        if self.device.type != "cpu":
            warnings.warn(f"predict_proba(compile=True) is for CPU scoring; on {self.device} it scores "
                          "uncompiled", stacklevel=3)
            return self.predict_batch
        def fallback(e: Exception) -> None:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            warnings.warn(f"predict_proba(compile=True): torch.compile failed ({type(e).__name__}: {first}); "
                          "scoring without it", stacklevel=4)

        try:  # torch.compile itself refuses some Python versions and platforms
            compiled = torch.compile(self.predict_batch, dynamic=False)
        except Exception as e:  # noqa: BLE001
            fallback(e)
            return self.predict_batch
        state = {"ok": False}
        log.info("predict_proba(compile=True): the forward passes go through torch.compile; the first call of "
                 "a process compiles them (~30 s, a few s once torch's on-disk cache holds the graph)")

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            if state.get("failed"):
                return self.predict_batch(batch)
            try:
                out = compiled(batch)
            except Exception as e:  # noqa: BLE001 - inductor: no C++ compiler, an unsupported op, ...
                if state["ok"]:
                    raise
                state["failed"] = True
                fallback(e)
                return self.predict_batch(batch)
            state["ok"] = True
            return out

        forward.state = state  # type: ignore[attr-defined]  # for tests: did the compiled graph run?
        return forward

    def export_predictions(self, datamodule: Any, split: str = "test") -> pd.DataFrame:
        t = datamodule.tensors[split]
        self.eval()
        probs = []
        with torch.no_grad():
            for i in range(0, len(t["row"]), 8192):
                b = {k: v[i: i + 8192].to(self.device) for k, v in t.items()}
                probs.append(self.predict_batch(b).float().cpu())
        id_name = datamodule.schema.id_col or "row"
        return pd.DataFrame({id_name: datamodule.ids(split), "label": t["y"].numpy().astype(int),
                             "prediction": torch.cat(probs).numpy()})
