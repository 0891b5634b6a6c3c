"""ChurnClassifier: calibrated churn probability on mixed-type customer tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics import CatMetric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.schema import SchemaError
from clm_torch.models.base import CLMModule
from clm_torch.models.components.calibration import fit_platt, fit_temperature
from clm_torch.models.components.tabular import EnsembleMLP, FeatureTokenizer
from clm_torch.utils.progress import chunks


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


class ChurnClassifier(CLMModule):
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
    """

    monitor = "val/auroc"
    monitor_mode = "max"

    def __init__(
        self,
        n_num: int,
        cat_cardinalities: Sequence[int],
        n_binary: int = 0,
        pos_rate: float = 0.5,
        d_embed: int = 16,
        hidden: Sequence[int] = (256, 256),
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if calibration not in ("platt", "temperature", "none"):
            raise ValueError(f"model.calibration must be platt, temperature or none, not {calibration!r}")
        self.tokenizer = FeatureTokenizer(n_num, list(cat_cardinalities), d_embed, n_frequencies, sigma, plr_lite)
        self.head = EnsembleMLP(self.tokenizer.out_dim, list(hidden), 1, k=k_ensemble, dropout=dropout)
        self.additive_tokenizer: FeatureTokenizer | None = None
        self.additive_head: EnsembleMLP | None = None
        if additive_members > 0:  # no hidden layer: a linear read-out of per-feature embeddings = an additive model
            self.additive_tokenizer = FeatureTokenizer(n_num, list(cat_cardinalities), d_embed, n_frequencies,
                                                       additive_sigma, plr_lite)
            self.additive_head = EnsembleMLP(self.additive_tokenizer.out_dim, [], 1, k=additive_members)
        if pos_weight == "balanced":
            pw = (1 - pos_rate) / max(pos_rate, 1e-6)
        else:
            pw = float(pos_weight) if pos_weight is not None else 1.0
        self.register_buffer("pos_weight", torch.tensor(pw))
        self.register_buffer("calib", torch.tensor([1.0, 0.0]))  # logit → a · logit + b
        self.stage_logits = torch.nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self.stage_labels = torch.nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self.encoder: FeatureEncoder | None = None
        self.infogap = None
        if infogap is not None:  # the frozen VAE; its weights come from attach_infogap or the checkpoint
            from clm_torch.models.infogap_vae import InfoGapVAE

            self.infogap = InfoGapVAE(**infogap)
            self.infogap.requires_grad_(False)
            self.infogap.eval()

    def _on_preprocessing(self) -> None:
        self.encoder = FeatureEncoder.from_state_dict(self.preprocessing["encoder"])
        if self.infogap is not None and "infogap" in self.preprocessing:
            self.infogap.set_preprocessing(self.preprocessing["infogap"])

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

    def with_infogap(self, df: pd.DataFrame, source: str = "<dataframe>") -> pd.DataFrame:
        """``df`` with the VAE's features and imputations (unchanged without a VAE)."""
        if self.infogap is None:
            return df
        from clm_torch.models.infogap_features import infogap_frame

        return infogap_frame(self.infogap, df, impute=bool(self.hparams.infogap_impute),
                             n_samples=int(self.hparams.infogap_samples), source=source)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Member logits (k_ensemble + additive_members, batch)."""
        h = self.tokenizer(batch["num"], batch["num_mask"], batch["cat"])
        logits = self.head(h).squeeze(-1)
        if self.additive_head is not None:
            g = self.additive_tokenizer(batch["num"], batch["num_mask"], batch["cat"])
            logits = torch.cat([logits, self.additive_head(g).squeeze(-1)], dim=0)
        return logits

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

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        loss, _ = self.model_step(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["y"]))
        return self.guard_loss(loss, batch_idx)

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        loss, logits = self.model_step(batch)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["y"]), sync_dist=True)
        self.stage_logits[stage].update(self.ensemble_logit(logits))
        self.stage_labels[stage].update(batch["y"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        logits = self.stage_logits[stage].compute().float()
        y = self.stage_labels[stage].compute().float()
        self.stage_logits[stage].reset()
        self.stage_labels[stage].reset()
        if stage == "val" and not self.trainer.sanity_checking:
            self.fit_calibration(logits, y)
        metrics = binary_metrics(self.calibrated_prob(logits), y)
        for k, v in metrics.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "auroc")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def fit_calibration(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Fit the calibration on validation logits (batch,) and labels (batch,)."""
        method = self.hparams.calibration
        if method == "platt":
            a, b = fit_platt(logits, y)
        elif method == "temperature":
            a, b = 1.0 / fit_temperature(logits, y), 0.0
        else:
            a, b = 1.0, 0.0
        self.calib.copy_(torch.tensor([a, b], device=self.calib.device))

    # ------------------------------------------------------------------ inference on raw data
    @torch.no_grad()
    def predict_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Calibrated churn probability (batch,) for an encoded batch."""
        return self.calibrated_prob(self.ensemble_logit(self(batch)))

    @torch.no_grad()
    def predict_proba(self, df: pd.DataFrame, *, batch_size: int = 65536, source: str = "<dataframe>") -> np.ndarray:
        """Churn probabilities (n,) for a raw DataFrame with the training columns.

        Extra columns are ignored and the target is not needed; NaN and unseen categories are
        handled as missing. Rows are encoded and scored in chunks, so memory stays bounded.

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
        for start, _ in chunks(len(df), chunk, f"scoring {len(df):,} customers"):
            part = self.with_infogap(df.iloc[start: start + chunk], source=source)
            enc = self.encoder.transform(part, source=source)
            enc = {k: v.to(self.device) for k, v in enc.items() if k != "y"}
            out[start: start + len(part)] = self.predict_batch(enc).float().cpu().numpy()
        self.train(was_training)
        return out

    def export_predictions(self, datamodule: Any, split: str = "test") -> pd.DataFrame:
        t = datamodule.tensors[split]
        self.eval()
        probs = []
        with torch.no_grad():
            for i in range(0, len(t["row"]), 65536):
                b = {k: v[i: i + 65536].to(self.device) for k, v in t.items()}
                probs.append(self.predict_batch(b).float().cpu())
        id_name = datamodule.schema.id_col or "row"
        return pd.DataFrame({id_name: datamodule.ids(split), "label": t["y"].numpy().astype(int),
                             "prediction": torch.cat(probs).numpy()})
