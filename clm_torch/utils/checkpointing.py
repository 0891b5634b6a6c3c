"""Checkpoint callback that never records a non-finite model as the best one, and the checkpoint IO
that lets a resume read its checkpoint once."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint

from clm_torch.utils.io import AtomicCheckpointIO

log = logging.getLogger(__name__)


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that skips the top-k ("best") save when the monitored metric is NaN/inf
    or any weight is non-finite, and writes ``last.ckpt`` (with ``save_last``) at the end of every
    epoch, atomically through :class:`clm_torch.utils.io.AtomicCheckpointIO`: it is what
    ``ckpt_path=last`` resumes from.

    Lightning 2.6 writes ``last.ckpt`` only at a step where a top-k checkpoint was saved; with
    ``save_top_k=1`` it would hold the best epoch, and a resume would repeat the epochs after it.

    ``best_metrics`` holds the ``val/*`` metrics of the best epoch (saved with the callback's state,
    so ``metrics.json`` reports one epoch, also after a resume or under ``ddp_spawn``). A run
    directory that was copied or moved is recognised on resume: its best checkpoint and score are
    kept (Lightning alone would forget the score and let the next epoch replace the best).
    """

    best_metrics: dict[str, float] = {}

    def _update_best_and_save(self, current: torch.Tensor, trainer: L.Trainer,
                              monitor_candidates: dict[str, Any]) -> None:
        best = self.best_model_score
        if best is None or {"min": torch.lt, "max": torch.gt}[self.mode](current, best):
            self.best_metrics = {k: float(v) for k, v in monitor_candidates.items()
                                 if k.startswith("val/") and (not isinstance(v, torch.Tensor) or v.numel() == 1)}
        super()._update_best_and_save(current, trainer, monitor_candidates)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_metrics": dict(self.best_metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath")
        if old_dir and self.dirpath and old_dir != self.dirpath:
            state_dict = _moved(state_dict, str(old_dir), str(self.dirpath))
        super().load_state_dict(state_dict)
        self.best_metrics = dict(state_dict.get("best_metrics") or {}) if state_dict.get("dirpath") == self.dirpath \
            else {}

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


def _moved(state: dict[str, Any], old_dir: str, new_dir: str) -> dict[str, Any]:
    """The callback state of a run directory moved from ``old_dir`` to ``new_dir``, when every file
    it names under ``old_dir`` exists at the same place under ``new_dir``; else unchanged (the run
    resumed elsewhere: Lightning then keeps only ``best_model_path``)."""
    def remap(path: Any) -> Any:
        return os.path.join(new_dir, os.path.relpath(path, old_dir)) if isinstance(path, str) and path else path

    paths = [state.get("best_model_path"), state.get("kth_best_model_path"), *(state.get("best_k_models") or {})]
    named = [p for p in paths if isinstance(p, str) and p]
    if not named or not all(os.path.commonpath([old_dir, p]) == old_dir and os.path.isfile(remap(p)) for p in named):
        return state
    log.info("checkpoint directory moved from %s to %s: keeping its best checkpoint and score", old_dir, new_dir)
    return {**state, "dirpath": new_dir, "best_model_path": remap(state.get("best_model_path")),
            "kth_best_model_path": remap(state.get("kth_best_model_path")),
            "last_model_path": remap(state.get("last_model_path")),
            "best_k_models": {remap(k): v for k, v in (state.get("best_k_models") or {}).items()}}


class CheckedCheckpointIO(AtomicCheckpointIO):
    """:class:`AtomicCheckpointIO` that can be handed the checkpoint ``train()`` has already read (and
    checked) from a file, and gives it to Lightning when ``trainer.fit(ckpt_path=...)`` asks for that
    file: a resume (``ckpt_path=last``) read its checkpoint twice, once for the checks and once in fit.

    The hand-over serves one load of that path, while the file is unchanged since it was read (size
    and modification time) and with Lightning's own device mapping (storages left on the CPU, as
    :func:`~clm_torch.utils.io.load_checkpoint_safely` maps them); anything else reads the file.
    """

    def __init__(self) -> None:
        super().__init__()
        self._handed: tuple[str, tuple[int, int], dict[str, Any]] | None = None

    @contextlib.contextmanager
    def handing_over(self, path: _PATH, checkpoint: dict[str, Any], as_read: tuple[int, int] | None = None
                     ) -> Iterator[None]:
        """Serve ``checkpoint`` (read from ``path``) to the next load of ``path`` inside the block, while
        the file is as it was when read (``as_read``: its :func:`checkpoint_signature` then; default: now)."""
        self._handed = (os.path.realpath(path), as_read or checkpoint_signature(path), checkpoint)
        try:
            yield
        finally:
            self._handed = None

    def load_checkpoint(self, path: _PATH, *args: Any, **kwargs: Any) -> dict[str, Any]:
        handed, self._handed = self._handed, None
        if (handed is not None and not args and "map_location" not in kwargs
                and handed[0] == os.path.realpath(path) and handed[1] == checkpoint_signature(path)):
            return handed[2]
        return super().load_checkpoint(path, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # a spawned process (trainer.strategy=ddp_spawn) reads the file itself, as before
        return {**self.__dict__, "_handed": None}


def checkpoint_signature(path: _PATH) -> tuple[int, int]:
    """(size, modification time in ns) of a checkpoint file: whether it changed since it was read."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def reading_once(trainer: L.Trainer, path: str | None, checkpoint: dict[str, Any] | None,
                 as_read: tuple[int, int] | None = None) -> Iterator[None]:
    """Inside the block, ``trainer`` loads ``path`` as ``checkpoint`` (already read from it) when its
    checkpoint IO is a :class:`CheckedCheckpointIO`; otherwise, or without a path, it reads the file."""
    io = getattr(trainer.strategy, "checkpoint_io", None)
    if path is None or checkpoint is None or not isinstance(io, CheckedCheckpointIO):
        yield
        return
    with io.handing_over(path, checkpoint, as_read):
        yield
