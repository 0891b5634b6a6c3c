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
    or any weight is non-finite. ``last.ckpt`` is still written (it is what ``ckpt_path=last``
    resumes from), atomically through :class:`clm_torch.utils.io.AtomicCheckpointIO`.
    """

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
