"""Checkpoint callback that never records a non-finite model as the best one."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that skips the top-k ("best") save when the monitored metric is NaN/inf
    or any weight is non-finite, and writes ``last.ckpt`` (with ``save_last``) at the end of every
    epoch, atomically through :class:`clm_torch.utils.io.AtomicCheckpointIO`: it is what
    ``ckpt_path=last`` resumes from.

    Lightning 2.6 writes ``last.ckpt`` only at a step where a top-k checkpoint was saved; with
    ``save_top_k=1`` it would hold the best epoch, and a resume would repeat the epochs after it.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` now, unless this step already saved a checkpoint (or saving is off: sanity
        check, ``fast_dev_run``, not fitting)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.monitor is not None and self.monitor in monitor_candidates:
            value = monitor_candidates[self.monitor]
            v = float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)
            if not math.isfinite(v):
                log.warning("not saving a best checkpoint at epoch %d: %s is %s", trainer.current_epoch,
                            self.monitor, v)
                return
        model = trainer.lightning_module
        if model is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
            log.warning("not saving a best checkpoint at epoch %d: the weights contain NaN/inf",
                        trainer.current_epoch)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)
