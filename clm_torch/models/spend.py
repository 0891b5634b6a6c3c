"""SpendRegressor: expected future spend over a horizon (CLV, learned), with a Tweedie loss.

Future spend is zero for many customers and heavy-tailed for the rest. A Tweedie distribution with
power 1 < p < 2 (a compound Poisson–gamma) models exactly that with a log link:
``mu = exp(eta)``, negative log-likelihood up to a constant
``-y · mu^(1-p) / (1-p) + mu^(2-p) / (2-p)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics import CatMetric

from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.events import add_time_features
from clm_torch.data.schema import SchemaError
from clm_torch.lifecycle.value import spend_capture
from clm_torch.models.base import TableTargetModule, UnreadableRows
from clm_torch.models.components.tabular import MLP, FeatureTokenizer
from clm_torch.utils.progress import chunks


def tweedie_nll(eta: torch.Tensor, y: torch.Tensor, power: float) -> torch.Tensor:
    """Mean Tweedie negative log-likelihood (up to terms free of eta) for log-mean ``eta`` (n,) and ``y`` (n,)."""
    a, b = 1.0 - power, 2.0 - power
    return (-y * torch.exp(a * eta) / a + torch.exp(b * eta) / b).mean()


def spend_metrics(pred: torch.Tensor, y: torch.Tensor, top: float = 0.2) -> dict[str, torch.Tensor]:
    """RMSE, Spearman rank correlation and top-``top`` spend capture of predictions ``pred`` (n,)
    (the share of the spend above 0 that the top ``top`` of customers by prediction hold:
    :func:`~clm_torch.lifecycle.value.spend_capture`)."""
    pred, y = pred.double(), y.double()
    rmse = torch.sqrt(((pred - y) ** 2).mean())

    def _rank(v: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(pd.Series(v.cpu().numpy()).rank().to_numpy(copy=True))  # pandas returns a read-only view

    rp, ry = _rank(pred), _rank(y)
    rp, ry = rp - rp.mean(), ry - ry.mean()
    spearman = (rp * ry).sum() / torch.sqrt((rp**2).sum() * (ry**2).sum()).clamp_min(1e-12)
    # the same top group as the lifecycle layer's (ceil(top * n) customers, ties in input order)
    capture = torch.tensor(spend_capture(pred.cpu().numpy(), y.cpu().numpy(), top), dtype=torch.float64)
    return {"rmse": rmse.float(), "spearman": spearman.float(), "capture20": capture.float()}


class SpendRegressor(TableTargetModule):
    """Tabular regressor of future spend: PLR + categorical embeddings → MLP → log-mean, Tweedie loss.

    Args:
        n_num, cat_cardinalities, n_binary: input sizes (from the DataModule).
        d_embed, hidden, dropout, lr, weight_decay: architecture and optimiser.
        power: Tweedie power in (1, 2).
        nan_policy: ``"raise"`` or ``"skip"`` on a non-finite loss.
    """

    monitor = "val/loss"
    monitor_mode = "min"
    target_type = "continuous"
    target_min = 0.0  # spend: values below are read as 0 (net refunds); a target never above it is refused

    def __init__(self, n_num: int, cat_cardinalities: Sequence[int], n_binary: int = 0, d_embed: int = 8,
                 hidden: Sequence[int] = (128, 64), dropout: float = 0.1, lr: float = 1e-3,
                 weight_decay: float = 1e-4, power: float = 1.5, scheduler: str = "none",
                 nan_policy: str = "raise") -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 1.0 < power < 2.0:
            raise ValueError(f"model.power must be in (1, 2), got {power}")
        self.tokenizer = FeatureTokenizer(n_num, list(cat_cardinalities), d_embed)
        self.head = MLP(self.tokenizer.out_dim, list(hidden), 1, dropout=dropout)
        self.register_buffer("log_scale", torch.tensor(0.0))  # log of the mean training target
        self.stage_pred = torch.nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self.stage_y = torch.nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self.encoder: FeatureEncoder | None = None

    def _on_preprocessing(self) -> None:
        self.encoder = FeatureEncoder.from_state_dict(self.preprocessing["encoder"])
        if "target_mean" in self.preprocessing:
            self.log_scale.fill_(float(np.log(max(self.preprocessing["target_mean"], 1e-6))))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log expected spend (batch,)."""
        h = self.tokenizer(batch["num"], batch["num_mask"], batch["cat"])
        return self.head(h).squeeze(-1).float() + self.log_scale

    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        eta = self(batch)
        # net refunds (a negative spend in the window) are no spend: the Tweedie loss has no minimum below 0
        return tweedie_nll(eta, batch["y"].float().clamp_min(0.0), self.hparams.power), eta

    # training_step, validation_step and test_step: TableTargetModule's
    def update_stage(self, stage: str, batch: dict[str, torch.Tensor], eta: torch.Tensor) -> None:
        self.stage_pred[stage].update(torch.exp(eta))
        self.stage_y[stage].update(batch["y"].float())

    def _eval_epoch_end(self, stage: str) -> None:
        # a split of one row: CatMetric gives a 0-d tensor
        pred, y = self.stage_pred[stage].compute().reshape(-1), self.stage_y[stage].compute().reshape(-1)
        self.stage_pred[stage].reset()
        self.stage_y[stage].reset()
        for k, v in spend_metrics(pred, y).items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "spearman")

    @torch.no_grad()
    def predict_spend(self, df: pd.DataFrame, *, batch_size: int = 65536, source: str = "<dataframe>") -> np.ndarray:
        """Expected future spend (n,) for a raw DataFrame with the training columns (chunked; the
        relative time features of ``data.time_features`` are derived when the frame lacks them)."""
        if self.encoder is None:
            raise RuntimeError("this model has no fitted preprocessing; load it from a clm_torch checkpoint")
        if not isinstance(df, pd.DataFrame):
            raise SchemaError(f"predict_spend expects a pandas DataFrame, got {type(df).__name__}", source=source)
        was_training = self.training
        self.eval()
        out = np.empty(len(df), dtype=np.float64)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(df) == 0:  # nothing to score, but the columns are still checked
            self.encoder.transform(add_time_features(df, self.encoder.feature_columns, source), source=source,
                                   with_target=False)
        unreadable = UnreadableRows()
        with self.encoder.one_warning_each():
            self.encoder.check_frame(df, source=source)
            for start, stop in chunks(len(df), int(batch_size), f"spend for {len(df):,} customers"):
                part = add_time_features(df.iloc[start: stop], self.encoder.feature_columns, source)  # time_features
                enc = self.encoder.transform(part, source=source, with_target=False)
                unreadable.add(enc, part.index)
                enc = {k: v.to(self.device) for k, v in enc.items()}
                out[start: start + len(part)] = torch.exp(self(enc)).double().cpu().numpy()
        self.train(was_training)
        unreadable.warn(source, len(df), "expected spend")
        return out

    def export_predictions(self, datamodule: Any, split: str = "test") -> pd.DataFrame:
        t = datamodule.tensors[split]
        self.eval()
        with torch.no_grad():
            pred = torch.cat([torch.exp(self({k: v[i:i + 65536].to(self.device) for k, v in t.items()})).cpu()
                              for i in range(0, len(t["row"]), 65536)])
        id_name = datamodule.schema.id_col or "row"
        return pd.DataFrame({id_name: datamodule.ids(split), "label": t["y"].numpy(), "prediction": pred.numpy()})
