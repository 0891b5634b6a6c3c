"""TensorBoard callbacks: plots of a binary classifier's test predictions.

Listed in ``configs/callbacks/default.yaml``; they do nothing when the run has no TensorBoard
logger (``logger=csv``, ``debug=fdr``) or the model does not fit (e.g. a recommender).
The run's hparams (with ``hp/`` metrics) and its config as text are logged by ``train()``
(:func:`clm_torch.train.log_hparams`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The ``SummaryWriter`` of the trainer's first TensorBoard logger, or None."""
    if getattr(trainer, "fast_dev_run", False):
        return None
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None


def reliability_bins(prob: np.ndarray, y: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width probability bins: ``count``, ``mean_pred``, ``frac_pos`` per non-empty bin.

    Args:
        prob: predicted probabilities (n,).
        y: 0/1 labels (n,).
    """
    prob = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(y, dtype=np.float64)
    idx = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=prob, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame({"bin": np.arange(n_bins)[keep], "count": count[keep],
                         "mean_pred": sum_p[keep] / count[keep], "frac_pos": sum_y[keep] / count[keep]})


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE: count-weighted mean of ``|frac_pos - mean_pred|`` over equal-width bins."""
    b = reliability_bins(prob, y, n_bins)
    return float((b["count"] * (b["frac_pos"] - b["mean_pred"]).abs()).sum() / max(int(b["count"].sum()), 1))


def roc_pr_figure(prob: np.ndarray, y: np.ndarray) -> Any:
    """A matplotlib figure: ROC curve (left) and precision-recall curve (right)."""
    from matplotlib.figure import Figure
    from torchmetrics.functional.classification import (binary_auroc, binary_average_precision,
                                                        binary_precision_recall_curve, binary_roc)

    p, t = torch.as_tensor(prob, dtype=torch.float32), torch.as_tensor(y).long()
    fpr, tpr, _ = binary_roc(p, t)
    precision, recall, _ = binary_precision_recall_curve(p, t)
    auroc, ap = float(binary_auroc(p, t)), float(binary_average_precision(p, t))
    fig = Figure(figsize=(9, 4), dpi=80)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(fpr.numpy(), tpr.numpy(), lw=2, label=f"AUROC = {auroc:.3f}")
    ax1.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)", xlim=(0, 1), ylim=(0, 1))
    ax1.legend(loc="lower right")
    ax2.plot(recall.numpy(), precision.numpy(), lw=2, label=f"AP = {ap:.3f}")
    ax2.axhline(float(np.mean(y)), ls="--", c="grey", lw=1, label=f"base rate = {np.mean(y):.3f}")
    ax2.set(xlabel="recall", ylabel="precision", title="precision-recall (test)", xlim=(0, 1), ylim=(0, 1.02))
    ax2.legend(loc="upper right")
    fig.tight_layout()
    return fig


def calibration_figure(prob: np.ndarray, y: np.ndarray, n_bins: int = 10) -> Any:
    """A matplotlib figure: reliability diagram (observed vs predicted rate per bin) over a histogram."""
    from matplotlib.figure import Figure

    b = reliability_bins(prob, y, n_bins)
    ece = expected_calibration_error(prob, y, n_bins)
    fig = Figure(figsize=(5, 5.5), dpi=80)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax1.plot(b["mean_pred"], b["frac_pos"], marker="o", lw=2, label=f"model (ECE = {ece:.3f})")
    ax1.set(ylabel="observed churn rate", title="calibration (test)", xlim=(0, 1), ylim=(0, 1))
    ax1.legend(loc="upper left")
    ax2.hist(np.clip(prob, 0, 1), bins=n_bins, range=(0, 1), color="tab:blue", alpha=0.7)
    ax2.set(xlabel="predicted churn probability", ylabel="customers")
    fig.tight_layout()
    return fig


def binary_test_predictions(pl_module: L.LightningModule, trainer: L.Trainer) -> tuple[np.ndarray, np.ndarray] | None:
    """``(prob, y)`` from ``pl_module.export_predictions(datamodule, "test")`` when it returns a
    ``label`` column of 0/1 with both classes and a ``prediction`` column of probabilities; else None."""
    dm = getattr(trainer, "datamodule", None)
    export = getattr(pl_module, "export_predictions", None)
    if dm is None or export is None:
        return None
    try:
        preds = export(dm, "test")
    except (NotImplementedError, AttributeError, KeyError, TypeError) as e:
        log.debug("no binary test predictions from %s: %s", type(pl_module).__name__, e)
        return None
    if not isinstance(preds, pd.DataFrame) or not {"label", "prediction"} <= set(preds.columns):
        return None
    try:
        y = preds["label"].to_numpy(dtype=np.float64)
        prob = preds["prediction"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if (not np.isin(y, (0.0, 1.0)).all() or len(np.unique(y)) < 2 or not np.isfinite(prob).all()
            or prob.min() < 0 or prob.max() > 1):
        return None
    return prob, y


class BinaryCurvesCallback(L.Callback):
    """At the end of testing, log the test split's ROC + PR curves and a calibration plot as
    figures (``test/roc_pr``, ``test/calibration``) and a TensorBoard PR curve (``test/pr_curve``);
    the ChurnClassifier logs ``test/ece`` itself (10 bins), so that it reaches every logger. Runs only for models whose ``export_predictions`` gives binary labels
    and probabilities (the ChurnClassifier); a no-op otherwise.

    Args:
        n_bins: equal-width bins of the calibration plot and the ECE.
    """

    def __init__(self, n_bins: int = 10) -> None:
        self.n_bins = int(n_bins)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        got = binary_test_predictions(pl_module, trainer)
        if got is None:
            return
        prob, y = got
        step = trainer.global_step
        writer.add_figure("test/roc_pr", roc_pr_figure(prob, y), step)
        writer.add_figure("test/calibration", calibration_figure(prob, y, self.n_bins), step)
        writer.add_pr_curve("test/pr_curve", y.astype(bool), prob, step)  # test/ece: the model logs it (10 bins)
        writer.flush()



class OverfitBatches(L.Callback):
    """``debug=overfit``: train on the same first ``n_batches`` training batches every epoch and
    validate on the first ``n_batches`` validation batches, so the training loss should go to ~0.

    Lightning's own ``trainer.overfit_batches`` swaps every non-sequential sampler for a per-row
    ``SequentialSampler``, which breaks the whole-batch samplers of clm_torch's DataModules; this
    callback caches whole batches from the DataModule's own loaders instead and works with any
    DataModule (tables, interactions).

    Args:
        n_batches: batches kept for training (and for validation).
    """

    def __init__(self, n_batches: int = 3) -> None:
        if int(n_batches) < 1:
            raise ValueError(f"n_batches must be >= 1, not {n_batches}")
        self.n_batches = int(n_batches)

    def _replay(self, factory: Any) -> Any:
        cache: list[Any] = []

        def loader() -> _Replay:
            if not cache:
                it = iter(factory())
                for _ in range(self.n_batches):
                    try:
                        cache.append(next(it))
                    except StopIteration:
                        break
            return _Replay(cache)

        return loader

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage != "fit" or dm is None or getattr(dm, "_clm_overfit", False):
            return
        dm.train_dataloader = self._replay(dm.train_dataloader)
        dm.val_dataloader = self._replay(dm.val_dataloader)
        dm._clm_overfit = True
        log.info("overfitting %d training batch(es), validating on %d validation batch(es)", self.n_batches,
                 self.n_batches)


class _Replay:
    """An iterable over cached batches (one loader; a plain list would read as several loaders)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
